"""Paths and small helpers shared by the static deployment checks: env files, settings, shell commands.

Static checks of the deployment: Dockerfiles, docker-compose.yml, the Kubernetes manifests, docs.

There is no Docker engine and no Kubernetes cluster here, and nothing is downloaded: the files
are parsed and checked against

- the Compose Specification's JSON schema (vendored in ``schemas/``, with its licence), after
  the same variable interpolation Compose does, with ``.env.example`` and with no ``.env``;
- the Kubernetes JSON schemas of the ``kubernetes-validate`` package (strict: unknown fields
  fail) for every core kind, and for the pod templates inside the KubeRay resources;
- field checks for what no schema here covers (KubeRay ``RayCluster`` / ``RayService``,
  Prometheus Operator monitors) and for what no schema can see: every ``hyctas`` command is a
  real sub-command with real options, every setting of :class:`services.settings.Settings` is
  set for the controller and the worker, references (Secrets, ConfigMaps, volumes, selectors,
  probe ports, scrape targets) resolve, and the ports agree across files.

The overlays are rendered by a small subset of kustomize (resources, namespace, labels,
secretGenerator, images, JSON 6902 patches): exactly the features ``deploy/k8s`` uses, and
any other feature fails the test rather than being ignored.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from services.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


SCHEMAS = Path(__file__).resolve().parent / "schemas"


COMPOSE_FILE = ROOT / "docker-compose.yml"


HOSTNET_FILE = ROOT / "docker" / "compose.hostnet.yml"


ENV_EXAMPLE = ROOT / ".env.example"


DOCKERFILES = {"controller": ROOT / "docker" / "controller.Dockerfile", "worker": ROOT / "docker" / "worker.Dockerfile"}


K8S = ROOT / "deploy" / "k8s"


OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))


DOCS = ROOT / "docs" / "deploy.md"


# Oldest and newest Kubernetes minor versions the manifests are validated against.
K8S_VERSIONS = ("1.30.0", "1.37.0")


RAY_KINDS = {("ray.io/v1", "RayCluster"), ("ray.io/v1", "RayService")}


MONITOR_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PodMonitor")}


NAMESPACE = "hyctas"


# What every process of the service reads: one variable per Settings field.
SETTINGS_VARS = sorted(f"HYCTAS_{name.upper()}" for name in Settings.model_fields)


def _read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (comments and blank lines skipped), as Compose and kustomize read them."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path}: not KEY=VALUE: {line!r}"
        env[key.strip()] = value.strip()
    return env


def _commented_keys(path: Path) -> set[str]:
    """Keys shown commented out (``# KEY=value``), documented but not set by default."""
    return set(re.findall(r"^#\s*([A-Z][A-Z0-9_]*)=", path.read_text(), flags=re.M))


def _settings_from(env: dict[str, Any]) -> Settings:
    """A Settings built from exactly these variables (no other HYCTAS_* of this process)."""
    with pytest.MonkeyPatch.context() as mp:
        for key in list(os.environ):
            if key.startswith("HYCTAS_"):
                mp.delenv(key)
        for key, value in env.items():
            mp.setenv(key, str(value))
        return Settings()


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname and parts.port, f"no host:port in {url!r}"
    return parts.hostname, parts.port


def _check_settings(env: dict[str, Any], where: str) -> Settings:
    missing = [var for var in SETTINGS_VARS if var not in env]
    assert not missing, f"{where}: settings not set: {missing}"
    settings = _settings_from(env)
    assert settings.database_url.startswith("postgresql+psycopg://"), f"{where}: database is not PostgreSQL"
    assert settings.redis_url.startswith(("redis://", "rediss://")), where
    assert settings.ray_address and settings.ray_address.startswith("ray://"), f"{where}: workers need a Ray address"
    assert settings.artifact_dir.is_absolute() and settings.data_dir.is_absolute(), where
    assert settings.heartbeat_s < settings.lease_s, f"{where}: heartbeat must come well within the lease"
    assert settings.worker_metrics_port > 0, f"{where}: worker metrics are scraped"
    assert settings.serve_host == "0.0.0.0", f"{where}: Ray Serve must listen outside its container"
    return settings


def _shell_commands(script: str) -> Iterator[list[str]]:
    """The simple commands of a small shell script (lines, then `&&`, `||`, `;`), `exec` dropped."""
    script = script.replace("\\\n", " ")
    for line in script.splitlines():
        for part in re.split(r"&&|\|\||;", line):
            try:
                words = shlex.split(part, comments=True)
            except ValueError:
                continue
            while words and words[0] in ("exec", "do", "then", "while", "until", "if"):
                words = words[1:]
            if words:
                yield words


def _argvs(argv: list[str]) -> Iterator[list[str]]:
    """The programs an argv runs: itself, or the commands of its `sh -c` / `bash -c` script."""
    if len(argv) >= 3 and Path(argv[0]).name in ("sh", "bash") and argv[1].startswith("-") and "c" in argv[1]:
        yield from _shell_commands(argv[2])
    else:
        yield argv


def _option(argv: list[str], name: str) -> str | None:
    """The value of ``--name=value`` or ``--name value`` in an argv."""
    for i, word in enumerate(argv):
        if word.startswith(f"{name}="):
            return word.split("=", 1)[1]
        if word == name and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _shell_expand(value: str, env: dict[str, str]) -> str:
    """``$VAR``, ``${VAR}``, ``${VAR:-default}`` as the container's shell expands them."""

    def substitute(m: re.Match[str]) -> str:
        name = m["braced"] or m["named"]
        return env.get(name) or (m["default"] or "")

    pattern = r"\$(?:\{(?P<braced>\w+)(?::-(?P<default>[^}]*))?\}|(?P<named>\w+))"
    return re.sub(pattern, substitute, value)
