"""docker-compose.yml as Compose reads it: YAML tags, variable interpolation, services, ports, health checks."""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.common import COMPOSE_FILE, ENV_EXAMPLE, ROOT, _read_env_file
from tests.deploy.dockerfiles import dockerfile_cmd


class _ComposeLoader(yaml.SafeLoader):
    """YAML as Compose reads it: anchors and merge keys, plus its ``!reset`` / ``!override`` tags."""


def _construct_tagged(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    return loader.construct_scalar(node)


_ComposeLoader.add_constructor("!reset", _construct_tagged)


_ComposeLoader.add_constructor("!override", _construct_tagged)


_INTERPOLATION = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable interpolation (``$$``, ``$VAR``, ``${VAR}``, ``:-``, ``-``, ``:?``, ``?``, ``:+``, ``+``)."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(m: re.Match[str]) -> str:
        if m["escaped"]:
            return "$"
        if m["named"]:
            return env.get(m["named"], "")
        expr = m["braced"]
        parsed = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:-|-|:\?|\?|:\+|\+)(.*))?", expr, flags=re.S)
        assert parsed, f"invalid interpolation ${{{expr}}}"
        name, op, arg = parsed.groups()
        current = env.get(name)
        if op is None:
            return current or ""
        if op == ":-":
            return current if current else arg
        if op == "-":
            return current if current is not None else arg
        if op in (":?", "?"):
            if (not current) if op == ":?" else current is None:
                raise KeyError(f"required variable {name} is missing: {arg}")
            return current or ""
        if op == ":+":
            return arg if current else ""
        return arg if current is not None else ""

    return _INTERPOLATION.sub(substitute, value)


def _raw_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    data = yaml.load(path.read_text(), Loader=_ComposeLoader)  # a SafeLoader subclass
    assert isinstance(data, dict)
    return data


REQUIRED_SECRETS = ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "GRAFANA_ADMIN_PASSWORD")


ENV_CASES = {
    "env-example": lambda: _read_env_file(ENV_EXAMPLE),
    "secrets-only": lambda: {key: f"s3cret-{key.lower()}" for key in REQUIRED_SECRETS},  # every other default
}


@cache
def compose(case: str = "env-example") -> dict[str, Any]:
    """docker-compose.yml as Compose sees it with that .env (interpolated, anchors merged)."""
    return interpolate(_raw_compose(), ENV_CASES[case]())


def services(case: str = "env-example") -> dict[str, dict[str, Any]]:
    return compose(case)["services"]


def service_env(svc: dict[str, Any]) -> dict[str, str]:
    """A service's environment: its env_file(s), then `environment` (list or mapping)."""
    env: dict[str, str] = {}
    files = svc.get("env_file", [])
    for entry in [files] if isinstance(files, str | dict) else files:
        path = entry if isinstance(entry, str) else entry["path"]
        env.update(_read_env_file(ROOT / path))
    environment = svc.get("environment", {})
    if isinstance(environment, list):
        environment = dict(
            item.split("=", 1) if "=" in item else (item, os.environ.get(item, "")) for item in environment
        )
    env.update({key: "" if value is None else str(value) for key, value in environment.items()})
    return env


def service_argv(svc: dict[str, Any]) -> list[str]:
    """What a service runs: its command (or its image's CMD when built here), after its entrypoint."""
    built = own_dockerfile(svc)
    command = svc.get("command", dockerfile_cmd(built) if built else [])
    argv = shlex.split(command) if isinstance(command, str) else [str(word) for word in command]
    entrypoint = svc.get("entrypoint")
    if entrypoint:
        argv = (shlex.split(entrypoint) if isinstance(entrypoint, str) else list(entrypoint)) + argv
    return argv


@dataclass(frozen=True)
class Published:
    host_ip: str
    host_port: str
    container_port: int


def published_ports(svc: dict[str, Any]) -> list[Published]:
    """Short (``[IP:]HOST:CONTAINER[/proto]``) and long port syntax."""
    result = []
    for entry in svc.get("ports", []):
        if isinstance(entry, dict):
            result.append(Published(entry.get("host_ip", ""), str(entry.get("published", "")), int(entry["target"])))
            continue
        spec = str(entry).split("/")[0]
        parts = spec.split(":")
        assert 1 <= len(parts) <= 3, f"port {entry!r}"
        ip = parts[0] if len(parts) == 3 else ""
        host = parts[-2] if len(parts) >= 2 else ""
        result.append(Published(ip, host, int(parts[-1])))
    return result


def healthcheck_argv(svc: dict[str, Any]) -> list[str] | None:
    check = svc.get("healthcheck")
    if not check or check.get("disable"):
        return None
    test = check["test"]
    if isinstance(test, str):
        return ["sh", "-c", test]
    if test[0] == "CMD-SHELL":
        return ["sh", "-c", test[1]]
    assert test[0] == "CMD", f"healthcheck test must start with CMD or CMD-SHELL: {test}"
    return list(test[1:])


def url_port(argv: list[str]) -> int | None:
    """The port of the first http://host:port URL in an argv (health checks)."""
    m = re.search(r"https?://[^/:'\"\s]+:(\d+)", " ".join(argv))
    return int(m.group(1)) if m else None


def own_dockerfile(svc: dict[str, Any]) -> Path | None:
    build = svc.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        return (ROOT / build / "Dockerfile").resolve()
    return (ROOT / build.get("context", ".") / build.get("dockerfile", "Dockerfile")).resolve()
