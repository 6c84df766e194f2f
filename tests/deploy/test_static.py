"""Static checks of the deployment: Dockerfiles, docker-compose.yml, the Kubernetes manifests, docs.

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

import ast
import copy
import json
import os
import re
import shlex
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version
from typer.main import get_command
from typer.testing import CliRunner

from hyctas_cli.main import app as hyctas_app
from services.settings import Settings
from tools import lockfile

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


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Compose: loading and interpolation
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Dockerfiles
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int

    def argv(self) -> list[str]:
        """Exec form (JSON array) as is; shell form as `/bin/sh -c ARGS`."""
        text = self.args.strip()
        if text.startswith("["):
            value = json.loads(text)
            assert isinstance(value, list) and all(isinstance(w, str) for w in value), self
            return value
        return ["/bin/sh", "-c", text]


@cache
def dockerfile(path: Path) -> tuple[Instruction, ...]:
    """Instructions, continuation lines joined, comments dropped (the default `\\` escape)."""
    instructions = []
    pending, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            start = start or number
            continue
        text = pending + line
        keyword, _, args = text.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start or number))
        pending, start = "", 0
    assert not pending, f"{path}: dangling line continuation"
    return tuple(instructions)


def dockerfile_args(path: Path) -> dict[str, str]:
    """ARG defaults (global and per stage)."""
    args = {}
    for ins in dockerfile(path):
        if ins.keyword == "ARG":
            name, _, default = ins.args.partition("=")
            args[name.strip()] = default.strip().strip('"')
    return args


def dockerfile_base(path: Path) -> str:
    (base,) = [ins.args.split()[0] for ins in dockerfile(path) if ins.keyword == "FROM"]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: dockerfile_args(path)[m[1] or m[2]], base)


def dockerfile_cmd(path: Path) -> list[str]:
    """ENTRYPOINT + CMD (the last of each) as the container runs them."""
    entry = [ins for ins in dockerfile(path) if ins.keyword == "ENTRYPOINT"]
    cmd = [ins for ins in dockerfile(path) if ins.keyword == "CMD"]
    return (entry[-1].argv() if entry else []) + (cmd[-1].argv() if cmd else [])


def dockerfile_healthcheck(path: Path) -> list[str] | None:
    checks = [ins for ins in dockerfile(path) if ins.keyword == "HEALTHCHECK"]
    if not checks or checks[-1].args.strip().upper() == "NONE":
        return None
    m = re.search(r"\bCMD\s+(.*)$", checks[-1].args, flags=re.S)
    assert m, f"{path}: HEALTHCHECK without CMD"
    return Instruction("CMD", m.group(1), checks[-1].line).argv()


def dockerfile_exposed(path: Path) -> set[int]:
    ports = set()
    for ins in dockerfile(path):
        if ins.keyword == "EXPOSE":
            ports.update(int(word.split("/")[0]) for word in ins.args.split())
    return ports


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pyproject_requirement(name: str, extra: str | None = None) -> Requirement:
    project = _pyproject()["project"]
    deps = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    (req,) = [Requirement(dep) for dep in deps if Requirement(dep).name == name]
    return req


def _image_lock() -> dict[str, str]:
    """Package -> version pinned by docker/requirements.lock (the images' dependencies)."""
    return lockfile.read_lock((ROOT / "docker" / "requirements.lock").read_text()).versions


def _pinned(req: Requirement) -> str:
    (spec,) = req.specifier
    assert spec.operator == "==", f"{req} is not pinned"
    return spec.version


# ---------------------------------------------------------------------------------------------
# Kubernetes: a kustomize subset
# ---------------------------------------------------------------------------------------------


def _yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _json_pointer(path: str) -> list[str]:
    assert path.startswith("/"), path
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def apply_json_patch(obj: dict[str, Any], ops: list[dict[str, Any]], where: str) -> None:
    """RFC 6902 add / replace / remove (what the overlays use); a path that does not resolve fails."""
    for op in ops:
        *parents, last = _json_pointer(op["path"])
        node: Any = obj
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        kind = op["op"]
        if isinstance(node, list):
            index = len(node) if last == "-" else int(last)
            if kind == "add":
                node.insert(index, copy.deepcopy(op["value"]))
            elif kind == "replace":
                node[index] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del node[index]
            else:
                raise AssertionError(f"{where}: unsupported op {kind}")
            continue
        if kind in ("replace", "remove"):
            assert last in node, f"{where}: {op['path']} does not exist in {obj['kind']}/{obj['metadata']['name']}"
        if kind in ("add", "replace"):
            node[last] = copy.deepcopy(op["value"])
        elif kind == "remove":
            del node[last]
        else:
            raise AssertionError(f"{where}: unsupported op {kind}")


def _matches_target(obj: dict[str, Any], target: dict[str, Any]) -> bool:
    group, _, version = obj["apiVersion"].rpartition("/")
    return (
        target.get("kind", obj["kind"]) == obj["kind"]
        and target.get("name", obj["metadata"]["name"]) == obj["metadata"]["name"]
        and target.get("group", group) == group
        and target.get("version", version) == version
    )


KNOWN_KUSTOMIZATION_KEYS = {
    "apiVersion",
    "kind",
    "namespace",
    "labels",
    "resources",
    "secretGenerator",
    "generatorOptions",
    "images",
    "patches",
}


def _secret_env_file(directory: Path, name: str) -> Path:
    """A secretGenerator env file, or its committed ``.example`` when the real one is absent."""
    path = directory / name
    return path if path.exists() else directory / f"{name}.example"


def _set_images(node: Any, images: list[dict[str, Any]]) -> None:
    """kustomize's image transformer: every `containers` / `initContainers` entry, at any depth."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                for container in value:
                    name, _, tag = container["image"].partition(":")
                    for image in images:
                        if image["name"] == name:
                            container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
            _set_images(value, images)
    elif isinstance(node, list):
        for item in node:
            _set_images(item, images)


@cache
def kustomization(directory: Path) -> dict[str, Any]:
    data = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert data["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and data["kind"] == "Kustomization", directory
    unknown = set(data) - KNOWN_KUSTOMIZATION_KEYS
    assert not unknown, f"{directory}: kustomize features this test does not render: {unknown}"
    return data


@cache
def render(directory: Path) -> tuple[dict[str, Any], ...]:
    """What `kustomize build DIRECTORY` gives, for the features the manifests use."""
    k = kustomization(directory)
    objects: list[dict[str, Any]] = []
    for entry in k.get("resources", []):
        path = (directory / entry).resolve()
        assert path.exists(), f"{directory}: resource {entry} does not exist"
        objects += copy.deepcopy(list(render(path))) if path.is_dir() else _yaml_docs(path)
    if k.get("secretGenerator"):
        plain = k.get("generatorOptions", {}).get("disableNameSuffixHash", False)
        assert plain, f"{directory}: generated names must stay plain (the Ray resources reference them)"
    for gen in k.get("secretGenerator", []):
        data: dict[str, str] = {}
        for name in gen.get("envs", []):
            path = _secret_env_file(directory, name)
            assert path.exists(), f"{directory}: secretGenerator file {name} (or {name}.example) missing"
            data.update(_read_env_file(path))
        assert set(gen) <= {"name", "envs"}, f"{directory}: unsupported secretGenerator fields"
        objects.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": gen["name"]}, "stringData": data})
    for patch in k.get("patches", []):
        ops = (
            yaml.safe_load((directory / patch["path"]).read_text())
            if "path" in patch
            else yaml.safe_load(patch["patch"])
        )
        assert isinstance(ops, list), f"{directory}: only JSON 6902 patches are rendered here"
        targets = [obj for obj in objects if _matches_target(obj, patch.get("target", {}))]
        assert targets, f"{directory}: patch {patch} matches nothing"
        for obj in targets:
            apply_json_patch(obj, ops, f"{directory}/{patch.get('path', 'inline patch')}")
    for label in k.get("labels", []):
        assert not label.get("includeSelectors") and not label.get("includeTemplates"), directory
        for obj in objects:
            obj["metadata"].setdefault("labels", {}).update(label["pairs"])
    if "namespace" in k:
        for obj in objects:
            if obj["kind"] != "Namespace":
                obj["metadata"]["namespace"] = k["namespace"]
    if "images" in k:
        for obj in objects:
            _set_images(obj, k["images"])
    return tuple(objects)


def find(objects: tuple[dict[str, Any], ...], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def ray_templates(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(group name, group spec, pod template) of a RayCluster or RayService, head first."""
    spec = obj["spec"] if obj["kind"] == "RayCluster" else obj["spec"]["rayClusterConfig"]
    yield "head", spec["headGroupSpec"], spec["headGroupSpec"]["template"]
    for group in spec.get("workerGroupSpecs", []):
        yield group["groupName"], group, group["template"]


def pod_templates(objects: tuple[dict[str, Any], ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod template) of every workload, Ray ones included."""
    for obj in objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
            yield where, obj["spec"]["template"]
        elif obj["kind"] == "CronJob":
            yield where, obj["spec"]["jobTemplate"]["spec"]["template"]
        elif (obj["apiVersion"], obj["kind"]) in RAY_KINDS:
            for group, _, template in ray_templates(obj):
                yield f"{where}[{group}]", template


def container_env(objects: tuple[dict[str, Any], ...], container: dict[str, Any]) -> dict[str, str]:
    """A container's environment as the kubelet builds it (envFrom, then env), values resolved."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            data = one(objects, "ConfigMap", source["configMapRef"]["name"]).get("data", {})
        else:
            data = one(objects, "Secret", source["secretRef"]["name"]).get("stringData", {})
        env.update({prefix + key: str(value) for key, value in data.items()})
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
        elif "secretKeyRef" in var["valueFrom"]:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = one(objects, "Secret", ref["name"])["stringData"][ref["key"]]
        elif "configMapKeyRef" in var["valueFrom"]:
            ref = var["valueFrom"]["configMapKeyRef"]
            env[var["name"]] = one(objects, "ConfigMap", ref["name"])["data"][ref["key"]]
    return env


def container_port(container: dict[str, Any], port: int | str) -> int | None:
    """A container port by number or name (None: not declared)."""
    for declared in container.get("ports", []):
        if port in (declared["containerPort"], declared.get("name")):
            return int(declared["containerPort"])
    return None


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def all_renders() -> list[tuple[str, tuple[dict[str, Any], ...]]]:
    return [(f"overlays/{name}", render(K8S / "overlays" / name)) for name in OVERLAYS]


def command_of(objects: tuple[dict[str, Any], ...], kind: str, name: str) -> list[str]:
    (_, template), *_ = [(w, t) for w, t in pod_templates(find(objects, kind, name))]
    container = template["spec"]["containers"][0]
    return list(container.get("command", [])) + list(container.get("args", []))


# ---------------------------------------------------------------------------------------------
# The `hyctas` commands that the deployment runs
# ---------------------------------------------------------------------------------------------


def _doc_commands() -> Iterator[list[str]]:
    """Commands of the shell blocks of docs/deploy.md, `docker compose exec|run SERVICE` and
    `kubectl -n NS exec ... --` unwrapped."""
    in_block, pending = False, ""
    for line in DOCS.read_text().splitlines():
        if line.startswith("```"):
            in_block, pending = not in_block, ""
            continue
        if not in_block:
            continue
        text = pending + line.strip()
        if text.endswith("\\"):
            pending = text[:-1] + " "
            continue
        pending = ""
        try:
            words = shlex.split(text, comments=True)
        except ValueError:
            continue
        if "--" in words and words[:2] == ["kubectl", "-n"]:
            words = words[words.index("--") + 1 :]
        elif words[:3] in (["docker", "compose", "exec"], ["docker", "compose", "run"]):
            rest = words[3:]
            while rest and rest[0].startswith("-"):
                rest = rest[1:]
            words = rest[1:]
        if words:
            yield words


@dataclass
class Invocation:
    words: list[str]  # after `hyctas`
    origins: list[str]


def _hyctas_invocations() -> dict[str, Invocation]:
    """Every `hyctas ...` argv in the Dockerfiles, compose files, manifests and docs, by origin.

    Collected at import (the test is parametrized by them); a source that cannot be read gives
    an entry whose test fails with the error instead of breaking the collection of the module.
    """
    found: dict[str, Invocation] = {}

    def add(origin: str, argv: list[str]) -> None:
        for words in _argvs(argv):
            if words and Path(words[0]).name == "hyctas":
                key = shlex.join(words[1:])
                found.setdefault(key, Invocation(words[1:], [])).origins.append(origin)

    def sources() -> Iterator[tuple[str, list[str]]]:
        for name, path in DOCKERFILES.items():
            yield f"{name}.Dockerfile CMD", dockerfile_cmd(path)
        for name, svc in services().items():
            yield f"compose {name}", service_argv(svc)
        for overlay, objects in all_renders():
            for where, template in pod_templates(objects):
                spec = template["spec"]
                for container in spec.get("containers", []) + spec.get("initContainers", []):
                    yield f"{overlay} {where}", list(container.get("command", [])) + list(container.get("args", []))
        for argv in _doc_commands():
            yield "docs/deploy.md", argv

    try:
        for origin, argv in sources():
            add(origin, argv)
    except Exception as e:  # reported by the test below
        found[f"<unreadable: {e!r}>"] = Invocation([], [])
    return found


HYCTAS_INVOCATIONS = _hyctas_invocations()


def resolve_hyctas(words: list[str]) -> tuple[list[str], Any]:
    """The sub-command path of an argv (without `hyctas`) and its command object; fails if unknown.

    Typer ships its own copy of click, so groups are recognised by their ``commands`` mapping.
    """
    command: Any = get_command(hyctas_app)
    path: list[str] = []
    rest = list(words)
    while getattr(command, "commands", None) is not None and rest and not rest[0].startswith("-"):
        sub = command.commands.get(rest[0])
        assert sub is not None, f"`hyctas {' '.join([*path, rest[0]])}` is not a command of the project"
        path.append(rest.pop(0))
        command = sub
    assert getattr(command, "commands", None) is None, f"`hyctas {' '.join(path)}` needs a sub-command"
    return path, command


# =============================================================================================
# Tests: docker/
# =============================================================================================


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_caches_dependencies_before_the_source(image: str) -> None:
    path = DOCKERFILES[image]
    ins = dockerfile(path)
    runs = [(i, x) for i, x in enumerate(ins) if x.keyword == "RUN"]
    copies = [(i, x) for i, x in enumerate(ins) if x.keyword in ("COPY", "ADD")]

    def first(items: list[tuple[int, Instruction]], pattern: str) -> int:
        hits = [i for i, x in items if re.search(pattern, x.args)]
        assert hits, f"{path.name}: no instruction matching {pattern!r}"
        return hits[0]

    torch_pin = _pinned(_pyproject_requirement("torch"))

    def sources(x: Instruction) -> list[str]:
        return [word for word in x.args.split()[:-1] if not word.startswith("--")]

    def copies_source(x: Instruction) -> bool:
        return any(re.fullmatch(r"\.|\./|(hyctas_core|services)(/.*)?", word) for word in sources(x))

    torch_at = first(runs, rf"pip install .*--index-url \S+ torch=={re.escape(torch_pin)}(\s|$)")
    (lock_at,) = [i for i, x in copies if "docker/requirements.lock" in sources(x)]
    deps_at = first(
        [r for r in runs if r[0] > lock_at], r"pip install --require-hashes --no-deps -r \S*requirements\.lock"
    )
    source_at = min(i for i, x in copies if copies_source(x))
    install_at = first(
        [r for r in runs if r[0] > source_at], r"pip install --no-deps --no-build-isolation \. && pip check"
    )
    assert torch_at < deps_at < source_at < install_at, f"{path.name}: torch, locked deps, source, package in order"
    for i, x in copies:
        if i < deps_at:
            assert set(sources(x)) <= {"docker/requirements.lock"}, f"{path.name}: {x.args} first (busts the cache)"
    # every torch that pip installs is the pinned one
    for _, x in runs:
        if "pip install" in x.args:
            for spec in re.findall(r"\btorch\S*", x.args):
                assert spec == f"torch=={torch_pin}", f"{path.name}: unpinned {spec}"


def test_torch_builds_match_the_images() -> None:
    controller = [x.args for x in dockerfile(DOCKERFILES["controller"]) if "torch==" in x.args]
    assert controller and all("download.pytorch.org/whl/cpu" in a for a in controller), "controller: CPU torch"
    worker = [x.args for x in dockerfile(DOCKERFILES["worker"]) if "torch==" in x.args]
    assert worker and all("${TORCH_INDEX_URL}" in a for a in worker), worker
    index = dockerfile_args(DOCKERFILES["worker"])["TORCH_INDEX_URL"]
    cuda = re.search(r"/whl/cu(\d+)(\d)$", index)
    assert cuda, f"worker: the default torch index must be a CUDA build, got {index}"
    base = dockerfile_base(DOCKERFILES["worker"])
    assert base.startswith("nvidia/cuda:"), f"worker: CUDA base image, got {base}"
    cuda_major, cuda_minor = re.match(r"nvidia/cuda:(\d+)\.(\d+)", base).groups()
    assert cuda.groups() == (cuda_major, cuda_minor), f"torch build {index} does not match the base image {base}"
    controller_base = dockerfile_base(DOCKERFILES["controller"])
    assert controller_base.startswith("python:3.11-slim") and "cuda" not in controller_base, controller_base


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_base_is_pinned_and_python_311(image: str) -> None:
    base = dockerfile_base(DOCKERFILES[image])
    name, _, tag = base.partition(":")
    assert tag and tag != "latest", f"{image}: pin the base image tag ({base})"
    text = DOCKERFILES[image].read_text()
    assert "python3.11" in text or base.startswith("python:3.11"), f"{image}: pyproject.toml requires Python 3.11"


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_runs_as_a_non_root_user(image: str) -> None:
    ins = dockerfile(DOCKERFILES[image])
    users = [x for x in ins if x.keyword == "USER"]
    assert users, f"{image}: no USER"
    user = users[-1].args.split(":")[0]
    assert user not in ("root", "0"), f"{image}: runs as root"
    cmd_at = max(i for i, x in enumerate(ins) if x.keyword == "CMD")
    assert ins.index(users[-1]) < cmd_at
    created = [x for x in ins if x.keyword == "RUN" and re.search(rf"useradd .*--uid 1000 .*\b{user}\b", x.args)]
    assert created, f"{image}: user {user} is not created with uid 1000 (the uid the images share the volume as)"


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_health_check_and_exposed_ports(image: str) -> None:
    path = DOCKERFILES[image]
    check = dockerfile_healthcheck(path)
    assert check, f"{image}: no HEALTHCHECK"
    port = url_port(check)
    assert port in dockerfile_exposed(path), f"{image}: health check port {port} is not EXPOSEd"
    cmd = dockerfile_cmd(path)
    if image == "controller":
        assert "/health" in " ".join(check)
        assert port == int(_option(cmd, "--port") or 0), "controller: health check and --port differ"
    else:
        assert "/metrics" in " ".join(check)
        assert port == Settings.model_fields["worker_metrics_port"].default, "worker: HYCTAS_WORKER_METRICS_PORT"


def test_image_default_commands_are_the_services() -> None:
    assert dockerfile_cmd(DOCKERFILES["controller"])[:2] == ["hyctas", "controller"]
    assert dockerfile_cmd(DOCKERFILES["worker"]) == ["hyctas", "worker"]


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerignore_keeps_what_the_dockerfile_copies(image: str) -> None:
    ignore = DOCKERFILES[image].with_name(DOCKERFILES[image].name + ".dockerignore")
    lines = [line.strip() for line in ignore.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert lines[0] == "**", f"{ignore.name}: an allow-list (start with **)"
    kept = {line[1:].removesuffix("/**") for line in lines if line.startswith("!")}
    for x in dockerfile(DOCKERFILES[image]):
        if x.keyword == "COPY" and "--from" not in x.args:
            for source in x.args.split()[:-1]:
                assert source in kept, f"{ignore.name} drops {source}, which {image}.Dockerfile copies"
                assert (ROOT / source).exists(), f"{image}.Dockerfile copies {source}, which does not exist"


def test_ray_is_pinned_once_for_images_and_clusters() -> None:
    locked = _image_lock()
    ray_pin = locked["ray"]
    assert Version(ray_pin) in _pyproject_requirement("ray", "services").specifier, "image lock vs pyproject.toml"
    assert "torch" not in locked, "torch is pinned per image (CPU / CUDA), never in the lock"
    for path in (K8S / "base").glob("*.yaml"):
        for obj in _yaml_docs(path):
            if (obj.get("apiVersion"), obj.get("kind")) in RAY_KINDS:
                spec = obj["spec"] if obj["kind"] == "RayCluster" else obj["spec"]["rayClusterConfig"]
                assert spec["rayVersion"] == ray_pin, f"{path.name}: rayVersion {spec['rayVersion']} != {ray_pin}"


# =============================================================================================
# Tests: docker-compose.yml
# =============================================================================================


@pytest.mark.parametrize("case", sorted(ENV_CASES))
def test_compose_file_matches_the_compose_specification(case: str) -> None:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    documents = {"docker-compose.yml": compose(case)}
    env = ENV_CASES[case]() | {"NFS_SERVER": "nfs.local", "NFS_EXPORT": "/srv/hyctas"}
    documents["docker/compose.hostnet.yml"] = interpolate(_raw_compose(HOSTNET_FILE), env)
    for name, document in documents.items():
        errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
        assert not errors, f"{name}:\n" + "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_compose_overrides_name_existing_services() -> None:
    base = services()
    override = _raw_compose(HOSTNET_FILE)
    assert set(override["services"]) <= set(base), "docker/compose.hostnet.yml overrides unknown services"
    assert set(override.get("volumes", {})) <= set(compose()["volumes"])


def test_compose_services_are_well_formed() -> None:
    doc = compose()
    volumes = set(doc.get("volumes", {}))
    for name, svc in doc["services"].items():
        assert "image" in svc or "build" in svc, f"{name}: neither image nor build"
        if "image" in svc:
            assert ":" in svc["image"].rsplit("/", 1)[-1], f"{name}: pin the image tag ({svc['image']})"
            assert not svc["image"].endswith(":latest"), name
        built = own_dockerfile(svc)
        if built is not None:
            assert built.exists(), f"{name}: {built} does not exist"
        for mount in svc.get("volumes", []):
            source = mount.split(":")[0] if isinstance(mount, str) else mount.get("source", "")
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: bind mount {source} does not exist"
            elif source:
                assert source in volumes, f"{name}: volume {source} is not declared"
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in doc["services"], f"{name} depends on unknown {dep}"
            condition = cond.get("condition", "service_started") if isinstance(cond, dict) else "service_started"
            assert condition in ("service_started", "service_healthy", "service_completed_successfully"), condition
            target = doc["services"][dep]
            if condition == "service_healthy":
                has_check = healthcheck_argv(target) is not None or (
                    "healthcheck" not in target
                    and own_dockerfile(target) is not None
                    and dockerfile_healthcheck(own_dockerfile(target)) is not None
                )
                assert has_check, f"{name} waits for {dep} to be healthy, but {dep} has no health check"
            if condition == "service_completed_successfully":
                assert target.get("restart", "no") == "no", f"{dep} is a one-shot step: restart 'no'"
            assert not target.get("profiles") or set(target["profiles"]) <= set(svc.get("profiles", [])), (
                f"{name} depends on {dep}, which only runs under profiles {target['profiles']}"
            )
        if "healthcheck" in svc and not svc["healthcheck"].get("disable"):
            for key in ("interval", "timeout", "start_period"):
                if key in svc["healthcheck"]:
                    assert re.fullmatch(r"(\d+(ms|s|m|h))+", str(svc["healthcheck"][key])), f"{name}: {key}"
        long_running = svc.get("restart", "no") != "no"
        if long_running:
            assert (
                healthcheck_argv(svc) is not None
                or name.endswith("-exporter")
                or (built is not None and "healthcheck" not in svc and dockerfile_healthcheck(built))
            ), f"{name}: long-running service without a health check"


def test_backing_services_still_run_alone() -> None:
    svcs = services("secrets-only")
    for name, data_dir in (("postgres", "/var/lib/postgresql/data"), ("redis", "/data")):
        svc = svcs[name]
        assert not svc.get("depends_on") and not svc.get("profiles"), f"`docker compose up {name}` must work alone"
        assert healthcheck_argv(svc), f"{name}: health check"
        assert any(str(m).endswith(f":{data_dir}") for m in svc["volumes"]), f"{name}: data on a volume"
        assert all(p.host_ip == "127.0.0.1" for p in published_ports(svc)), f"{name}: localhost only"
        assert published_ports(svc), f"{name}: published on 127.0.0.1 for developers"
    redis = service_argv(svcs["redis"])
    assert _option(redis, "--appendonly") == "yes", "Redis persists the job stream (AOF)"
    assert _option(redis, "--maxmemory-policy") == "noeviction", "Redis must never evict queued jobs"


def test_ray_workers_scale_with_gpu_and_cpu_profiles() -> None:
    svcs = services()
    head = service_argv(svcs["ray-head"])
    (ray_start,) = [w for w in _argvs(head) if w[:3] == ["ray", "start", "--head"]]
    gcs = f"ray-head:{_option(ray_start, '--port')}"
    for name, profile in (("ray-worker", "gpu"), ("ray-worker-cpu", "cpu")):
        svc = svcs[name]
        assert svc.get("profiles") == [profile], f"{name}: profile {profile}"
        assert "container_name" not in svc and not svc.get("ports"), f"{name}: must scale (`--scale {name}=N`)"
        argv = service_argv(svc)
        assert argv[:2] == ["ray", "start"] and "--block" in argv, f"{name}: a foreground Ray node"
        assert _option(argv, "--address") == gcs, f"{name}: joins {gcs}"
        devices = svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        if profile == "gpu":
            assert devices, "ray-worker: GPU reservation in deploy.resources.reservations.devices"
            for device in devices:
                assert device.get("driver") == "nvidia" and "gpu" in device["capabilities"], device
                assert "device_ids" not in device, "fixed device ids defeat --scale"
                assert "count" in device and re.fullmatch(r"all|\d+", str(device["count"])), device
        else:
            assert not devices and _option(argv, "--num-gpus") == "0", "ray-worker-cpu: CPU only"
    for name in ("worker",):
        assert "container_name" not in svcs[name] and not svcs[name].get("ports"), f"{name}: must scale"
    # nothing outside a profile needs a profiled service
    for name, svc in svcs.items():
        if not svc.get("profiles"):
            for dep in svc.get("depends_on") or {}:
                assert not svcs[dep].get("profiles"), f"{name} depends on profiled {dep}"


@pytest.mark.parametrize("case", sorted(ENV_CASES))
@pytest.mark.parametrize("name", ["controller", "migrate", "worker", "ray-head", "ray-worker", "ray-worker-cpu"])
def test_compose_sets_every_setting(name: str, case: str) -> None:
    """Every HYCTAS_* variable of services/settings.py, for every process of the service."""
    _check_settings(service_env(services(case)[name]), f"compose {name} ({case})")


def test_compose_environment_is_the_same_for_every_process() -> None:
    svcs = services()
    reference = {k: v for k, v in service_env(svcs["controller"]).items() if k.startswith("HYCTAS_")}
    for name in ("migrate", "worker", "ray-head", "ray-worker", "ray-worker-cpu"):
        env = {k: v for k, v in service_env(svcs[name]).items() if k.startswith("HYCTAS_")}
        assert env == reference, f"{name}: settings differ from the controller's"


def test_compose_ports_agree() -> None:
    svcs = services()
    env = service_env(svcs["controller"])
    settings = _settings_from(env)

    def container_ports(name: str) -> set[int]:
        return {p.container_port for p in published_ports(svcs[name])}

    # controller: --port, published port, health check
    controller = service_argv(svcs["controller"])
    port = int(_option(controller, "--port") or 0)
    assert port in container_ports("controller") and port == url_port(healthcheck_argv(svcs["controller"]) or [])
    assert _option(controller, "--host") == "0.0.0.0", "the controller must listen outside its container"
    # database and Redis URLs point at the compose services, with their credentials
    db = urlsplit(settings.database_url)
    pg_env = service_env(svcs["postgres"])
    assert (db.hostname, db.port) == ("postgres", 5432) and 5432 in container_ports("postgres")
    assert (db.username, db.password, db.path) == (
        pg_env["POSTGRES_USER"],
        pg_env["POSTGRES_PASSWORD"],
        f"/{pg_env['POSTGRES_DB']}",
    )
    redis_url = urlsplit(settings.redis_url)
    assert (redis_url.hostname, redis_url.port) == ("redis", 6379) and 6379 in container_ports("redis")
    assert (redis_url.password or "") == _option(service_argv(svcs["redis"]), "--requirepass")
    # Ray: GCS, client (HYCTAS_RAY_ADDRESS), metrics, dashboard and Serve ports of the head
    head_cmds = list(_argvs(service_argv(svcs["ray-head"])))
    (ray_start,) = [w for w in head_cmds if w[:3] == ["ray", "start", "--head"]]
    (serve_start,) = [w for w in head_cmds if w[:2] == ["serve", "start"]]
    assert _host_port(settings.ray_address or "") == ("ray-head", int(_option(ray_start, "--ray-client-server-port")))
    metrics = int(_option(ray_start, "--metrics-export-port") or 0)
    for name in ("ray-worker", "ray-worker-cpu"):
        assert int(_option(service_argv(svcs[name]), "--metrics-export-port") or 0) == metrics, name
    head_env = service_env(svcs["ray-head"])
    serve_port = int(_shell_expand(_option(serve_start, "--http-port") or "", head_env))
    assert serve_port == settings.serve_port, "the head starts Serve on HYCTAS_SERVE_PORT"
    assert _shell_expand(_option(serve_start, "--http-host") or "", head_env) == settings.serve_host
    head_ports = {p.container_port: p for p in published_ports(svcs["ray-head"])}
    assert head_ports[serve_port].host_port == "8001", "Ray Serve is published on 8001 (the controller has 8000)"
    dashboard = int(_option(ray_start, "--dashboard-port") or 0)
    assert head_ports[dashboard].host_ip == "127.0.0.1", "the Ray dashboard stays on localhost"
    assert set(head_ports) == {serve_port, dashboard}, "only Serve and the dashboard leave the Ray head"
    head_check = healthcheck_argv(svcs["ray-head"]) or []
    assert _option(head_check, "--address") == f"127.0.0.1:{_option(ray_start, '--port')}"
    # worker metrics: settings, health check, image
    assert settings.worker_metrics_port == url_port(healthcheck_argv(svcs["worker"]) or [])
    assert settings.worker_metrics_port in dockerfile_exposed(DOCKERFILES["worker"])
    # exporters point at the backing services
    assert service_env(svcs["postgres-exporter"])["DATA_SOURCE_URI"].startswith("postgres:5432/")
    assert service_env(svcs["redis-exporter"])["REDIS_ADDR"] == "redis://redis:6379"


def _prometheus_targets() -> dict[str, dict[str, set[int]]]:
    """job -> host -> ports, from docker/prometheus/prometheus.yml."""
    config = yaml.safe_load((ROOT / "docker" / "prometheus" / "prometheus.yml").read_text())
    jobs: dict[str, dict[str, set[int]]] = {}
    for job in config["scrape_configs"]:
        hosts = jobs.setdefault(job["job_name"], {})
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                hosts.setdefault(host, set()).add(int(port))
        for dns in job.get("dns_sd_configs", []):
            assert dns.get("type", "SRV") == "A", "A records carry no port: give one"
            for host in dns["names"]:
                hosts.setdefault(host, set()).add(int(dns["port"]))
    return jobs


def test_prometheus_scrapes_every_service() -> None:
    svcs = services()
    jobs = _prometheus_targets()
    scraped = {host: ports for hosts in jobs.values() for host, ports in hosts.items()}
    assert set(scraped) - {"localhost"} <= set(svcs), f"targets that are no service: {set(scraped) - set(svcs)}"
    assert scraped["localhost"] == {9090} and {p.container_port for p in published_ports(svcs["prometheus"])} == {9090}
    for name, svc in svcs.items():
        if svc.get("restart", "no") == "no" or name == "prometheus":
            continue  # one-shot steps
        if name in scraped:
            continue
        exporters = [
            other
            for other in scraped
            if other.endswith("-exporter") and any(f"{name}:" in value for value in service_env(svcs[other]).values())
        ]
        assert exporters, f"service {name} is not scraped (directly or through an exporter)"
    env = service_env(svcs["controller"])
    head = [w for w in _argvs(service_argv(svcs["ray-head"])) if w[:2] == ["ray", "start"]][0]
    expected = {
        "controller": {int(_option(service_argv(svcs["controller"]), "--port") or 0)},
        "worker": {int(env["HYCTAS_WORKER_METRICS_PORT"])},
        "ray-head": {int(_option(head, "--metrics-export-port") or 0)},
        "ray-worker": {int(_option(head, "--metrics-export-port") or 0)},
        "ray-worker-cpu": {int(_option(head, "--metrics-export-port") or 0)},
    }
    for host, ports in expected.items():
        assert scraped[host] == ports, f"{host}: scraped on {scraped[host]}, serves metrics on {ports}"


def _metric_names() -> set[str]:
    """The metrics services/metrics.py defines (first argument of each metric constructor)."""
    source = (ROOT / "services" / "metrics.py").read_text()
    names = set(re.findall(r"(?:Counter|Gauge|Histogram|Summary|\w+MetricFamily)\(\s*\"(hyctas_\w+)\"", source))
    assert names, "no metric found in services/metrics.py"
    return names


def _metric_base(name: str) -> str:
    return re.sub(r"_(total|bucket|sum|count|created)$", "", name)


def test_grafana_is_provisioned_with_a_dashboard_of_the_service_metrics() -> None:
    svcs = services()
    grafana = svcs["grafana"]
    mounts = {m.split(":")[0]: m.split(":")[1] for m in grafana["volumes"]}
    assert mounts["./docker/grafana/provisioning"] == "/etc/grafana/provisioning"
    provisioning = ROOT / "docker" / "grafana" / "provisioning"
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    host, port = _host_port(datasource["url"])
    assert host == "prometheus" and port in {p.container_port for p in published_ports(svcs["prometheus"])}
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "hyctas.yml").read_text())["providers"]
    assert mounts["./docker/grafana/dashboards"] == provider["options"]["path"]
    dashboards = sorted((ROOT / "docker" / "grafana" / "dashboards").glob("*.json"))
    assert dashboards
    defined = {_metric_base(name) for name in _metric_names()}
    used: set[str] = set()
    for path in dashboards:
        board = json.loads(path.read_text())
        assert board["uid"] and board["title"], path.name
        panels = board["panels"]
        ids = [panel["id"] for panel in panels]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for panel in panels:
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == datasource["uid"], f"{path.name}: panel {panel['title']}"
            assert 0 <= panel["gridPos"]["x"] and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == datasource["uid"]
                for metric in re.findall(r"\bhyctas_\w+", target["expr"]):
                    assert _metric_base(metric) in defined, f"{path.name}: {metric} is not in services/metrics.py"
                    used.add(_metric_base(metric))
    assert defined <= used, f"metrics of services/metrics.py on no dashboard: {sorted(defined - used)}"


def test_compose_credentials_stay_on_localhost() -> None:
    raw = _raw_compose()
    # Only the controller's API (API keys) and Ray Serve may follow PUBLISH_ADDRESS; the rest is
    # published on 127.0.0.1 literally (PostgreSQL, Redis, Grafana have default credentials).
    public = {("controller", 8000), ("ray-head", 8000)}
    for name, svc in raw["services"].items():
        for port, entry in zip(
            published_ports(interpolate(svc, ENV_CASES["secrets-only"]())), svc.get("ports", []), strict=True
        ):
            text = str(entry)
            if (name, port.container_port) in public:
                assert text.startswith("${PUBLISH_ADDRESS:-127.0.0.1}:"), f"{name}: {text}"
            else:
                assert text.startswith("127.0.0.1:"), f"{name}: {text} is published beyond localhost"
    # no password literally in the file: every credential comes from .env
    for name, svc in raw["services"].items():
        raw_env = svc.get("environment", {})
        raw_env = raw_env if isinstance(raw_env, dict) else dict(e.split("=", 1) for e in raw_env)
        for key, value in raw_env.items():
            if re.search(r"PASSWORD|PASS$|SECRET|TOKEN|AUTH$", key):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", str(value)), f"{name}: {key} must come from .env"
    secrets = ENV_CASES["secrets-only"]()
    for url_var, secret in (("HYCTAS_DATABASE_URL", "POSTGRES_PASSWORD"), ("HYCTAS_REDIS_URL", "REDIS_PASSWORD")):
        password = urlsplit(interpolate(raw["x-hyctas-env"][url_var], secrets)).password
        assert password == secrets[secret], f"{url_var}: the password comes from .env"
    env = _read_env_file(ENV_EXAMPLE)
    for key in ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "GRAFANA_ADMIN_PASSWORD"):
        assert env[key].startswith("change-me"), f".env.example: {key} is a placeholder to replace"


def test_compose_refuses_to_start_without_its_secrets() -> None:
    """Each secret is required (``${VAR:?...}``): without it interpolation fails naming it, as compose does."""
    raw = _raw_compose()
    for missing in REQUIRED_SECRETS:
        env = {k: v for k, v in ENV_CASES["secrets-only"]().items() if k != missing}
        with pytest.raises(KeyError, match=f"required variable {missing} is missing: set {missing} in .env"):
            interpolate(raw, env)
    text = COMPOSE_FILE.read_text()
    for secret in REQUIRED_SECRETS:  # never a fallback value anywhere
        assert not re.search(r"\$\{" + secret + r"(:?-)", text), f"{secret} has a default"
    redis = interpolate(raw, ENV_CASES["secrets-only"]())["services"]["redis"]["command"]
    assert redis[redis.index("--requirepass") + 1] == "s3cret-redis_password"


def test_env_example_documents_every_compose_variable() -> None:
    documented = set(_read_env_file(ENV_EXAMPLE)) | _commented_keys(ENV_EXAMPLE)
    for path in (COMPOSE_FILE, HOSTNET_FILE):
        text = path.read_text().replace("$$", "")
        used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
        assert used <= documented, f"{path.name}: variables missing from .env.example: {sorted(used - documented)}"
    assert "COMPOSE_PROFILES" in documented


# =============================================================================================
# Tests: the `hyctas` commands
# =============================================================================================


def test_the_deployment_runs_the_service_commands() -> None:
    invoked = [inv.words for inv in HYCTAS_INVOCATIONS.values()]
    assert {"controller", "worker", "db"} <= {words[0] for words in invoked if words}, invoked
    assert any(words[:2] == ["db", "upgrade"] for words in invoked), "the migration step"


@pytest.mark.parametrize("invocation", sorted(HYCTAS_INVOCATIONS))
def test_hyctas_command_is_a_real_command(invocation: str) -> None:
    """`hyctas ...` in an image, compose, a manifest or the docs: the sub-command and its options exist."""
    words = HYCTAS_INVOCATIONS[invocation].words
    assert words, invocation
    path, command = resolve_hyctas(words)
    options = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    for word in words[len(path) :]:
        if word.startswith("--"):
            option = word.split("=", 1)[0]
            where = ", ".join(sorted(set(HYCTAS_INVOCATIONS[invocation].origins)))
            assert option in options, f"`hyctas {' '.join(path)}` has no option {option} (used in {where})"
    result = CliRunner().invoke(hyctas_app, [*path, "--help"])
    assert result.exit_code == 0, result.output


# =============================================================================================
# Tests: deploy/ (Kubernetes)
# =============================================================================================


def test_kustomizations_resolve() -> None:
    dirs = sorted({p.parent for p in K8S.rglob("kustomization.yaml")})
    assert {K8S / "base", K8S / "datastores", K8S / "monitoring"} <= set(dirs)
    ignored = (ROOT / "deploy" / ".gitignore").read_text().split()
    for directory in dirs:
        k = kustomization(directory)
        for patch in k.get("patches", []):
            if "path" in patch:
                assert (directory / patch["path"]).exists(), f"{directory}: {patch['path']}"
        for gen in k.get("secretGenerator", []):
            for name in gen.get("envs", []):
                assert name in ignored, f"deploy/.gitignore must ignore {name} (real secrets)"
                assert (directory / f"{name}.example").exists(), f"{directory}: commit {name}.example"
        objects = render(directory)
        for image in k.get("images", []):
            assert re.search(rf"\b{re.escape(image['newName'])}:", json.dumps(objects)), f"{directory}: {image}"
    for overlay in OVERLAYS:
        objects = render(K8S / "overlays" / overlay)
        keys = [(o["apiVersion"], o["kind"], o["metadata"]["name"]) for o in objects]
        assert len(keys) == len(set(keys)), f"{overlay}: duplicate objects"
        for obj in objects:
            if obj["kind"] != "Namespace":
                assert obj["metadata"].get("namespace") == NAMESPACE, f"{overlay}: {obj['kind']} namespace"


def _core_objects() -> Iterator[tuple[str, dict[str, Any]]]:
    seen = set()
    for overlay, objects in all_renders():
        for obj in objects:
            if (obj["apiVersion"], obj["kind"]) in RAY_KINDS | MONITOR_KINDS:
                continue
            key = json.dumps(obj, sort_keys=True)
            if key not in seen:
                seen.add(key)
                yield f"{overlay}: {obj['kind']}/{obj['metadata']['name']}", obj


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_core_kinds_match_the_kubernetes_schemas(version: str) -> None:
    failures = []
    for where, obj in _core_objects():
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            failures.append(f"{where}: {'.'.join(map(str, e.path))}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            failures.append(f"{where}: {e.message}")
    for overlay, objects in all_renders():
        for obj in objects:
            if (obj["apiVersion"], obj["kind"]) in RAY_KINDS:
                for group, _, template in ray_templates(obj):
                    pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": group}}
                    try:
                        kubernetes_validate.validate(pod_template | {"template": template}, version, strict=True)
                    except kubernetes_validate.ValidationError as e:
                        path = ".".join(map(str, e.path))
                        failures.append(
                            f"{overlay}: {obj['kind']}/{obj['metadata']['name']}[{group}] {path}: {e.message}"
                        )
    assert not failures, "\n".join(failures)


# Fields of the ray.io/v1 API (KubeRay) used or allowed here: a typo is an unknown field.
RAY_CLUSTER_FIELDS = {
    "rayVersion",
    "enableInTreeAutoscaling",
    "autoscalerOptions",
    "headGroupSpec",
    "workerGroupSpecs",
    "headServiceAnnotations",
    "suspend",
    "gcsFaultToleranceOptions",
}
AUTOSCALER_FIELDS = {"upscalingMode", "idleTimeoutSeconds", "resources", "image", "imagePullPolicy", "env", "envFrom"}
HEAD_GROUP_FIELDS = {"serviceType", "headService", "enableIngress", "rayStartParams", "template"}
WORKER_GROUP_FIELDS = {
    "groupName",
    "replicas",
    "minReplicas",
    "maxReplicas",
    "idleTimeoutSeconds",
    "rayStartParams",
    "template",
    "scaleStrategy",
    "numOfHosts",
    "suspend",
}
RAY_SERVICE_FIELDS = {"serveConfigV2", "rayClusterConfig", "upgradeStrategy", "excludeHeadPodFromServeSvc"}


def check_ray_cluster_spec(spec: dict[str, Any], where: str, *, gpu: bool) -> None:
    assert set(spec) <= RAY_CLUSTER_FIELDS, f"{where}: unknown fields {set(spec) - RAY_CLUSTER_FIELDS}"
    assert isinstance(spec["rayVersion"], str), f"{where}: rayVersion is a string"
    assert spec.get("enableInTreeAutoscaling") is True, f"{where}: autoscaler on"
    autoscaler = spec.get("autoscalerOptions", {})
    assert set(autoscaler) <= AUTOSCALER_FIELDS, f"{where}: autoscalerOptions {set(autoscaler) - AUTOSCALER_FIELDS}"
    assert autoscaler.get("upscalingMode", "Default") in ("Default", "Aggressive", "Conservative")
    head = spec["headGroupSpec"]
    assert set(head) <= HEAD_GROUP_FIELDS, f"{where}: headGroupSpec {set(head) - HEAD_GROUP_FIELDS}"
    assert head.get("serviceType", "ClusterIP") == "ClusterIP", f"{where}: keep the Ray head (dashboard) internal"
    groups = spec["workerGroupSpecs"]
    assert groups, f"{where}: no worker group"
    names = [group["groupName"] for group in groups]
    assert len(names) == len(set(names)), f"{where}: duplicate groupName"
    for group in [head, *groups]:
        label = group.get("groupName", "head")
        params = group.get("rayStartParams", {})
        assert all(isinstance(v, str) for v in params.values()), f"{where}[{label}]: rayStartParams are strings"
        containers = group["template"]["spec"]["containers"]
        ray_container = containers[0]  # KubeRay runs Ray in the first container
        metrics = container_port(ray_container, "metrics")
        assert metrics is not None and str(metrics) == params.get("metrics-export-port"), (
            f"{where}[{label}]: container port `metrics` must be the metrics-export-port"
        )
        assert "command" not in ray_container and "args" not in ray_container, "KubeRay writes the ray start command"
    head_container = head["template"]["spec"]["containers"][0]
    for name, port in (("gcs-server", 6379), ("dashboard", 8265), ("client", 10001)):
        assert container_port(head_container, name) == port, f"{where}: head port {name} = {port}"
    gpu_groups = []
    for group in groups:
        label = f"{where}[{group['groupName']}]"
        assert set(group) <= WORKER_GROUP_FIELDS, f"{label}: unknown fields {set(group) - WORKER_GROUP_FIELDS}"
        lo, n, hi = group["minReplicas"], group.get("replicas", group["minReplicas"]), group["maxReplicas"]
        assert all(isinstance(v, int) and v >= 0 for v in (lo, n, hi)), label
        assert lo <= n <= hi and lo < hi, f"{label}: minReplicas <= replicas <= maxReplicas, and room to scale"
        resources = group["template"]["spec"]["containers"][0].get("resources", {})
        limits, requests = resources.get("limits", {}), resources.get("requests", {})
        if "nvidia.com/gpu" in limits:
            assert int(limits["nvidia.com/gpu"]) >= 1, label
            assert int(requests.get("nvidia.com/gpu", limits["nvidia.com/gpu"])) == int(limits["nvidia.com/gpu"]), (
                f"{label}: extended resources need requests == limits"
            )
            gpu_groups.append(group["groupName"])
        assert "nvidia.com/gpu" in limits or "nvidia.com/gpu" not in requests, label
    if gpu:
        assert gpu_groups, f"{where}: a GPU worker group (nvidia.com/gpu limits)"


def _base_objects() -> tuple[dict[str, Any], ...]:
    return render(K8S / "base")


def test_raycluster_has_an_autoscaled_gpu_worker_group() -> None:
    cluster = one(_base_objects(), "RayCluster", "hyctas-ray")
    assert cluster["apiVersion"] == "ray.io/v1"
    check_ray_cluster_spec(cluster["spec"], "RayCluster/hyctas-ray", gpu=True)


def test_rayservice_serves_the_applications() -> None:
    service = one(_base_objects(), "RayService", "hyctas-serve")
    assert service["apiVersion"] == "ray.io/v1"
    spec = service["spec"]
    assert set(spec) <= RAY_SERVICE_FIELDS, f"RayService: unknown fields {set(spec) - RAY_SERVICE_FIELDS}"
    check_ray_cluster_spec(spec["rayClusterConfig"], "RayService/hyctas-serve", gpu=True)
    assert isinstance(spec["serveConfigV2"], str), "serveConfigV2 is a YAML string"
    config = yaml.safe_load(spec["serveConfigV2"])
    head = spec["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert config["http_options"]["host"] == "0.0.0.0"
    assert config["http_options"]["port"] == container_port(head, "serve"), "Serve port = head container port `serve`"
    apps = config["applications"]
    assert apps and len({a["name"] for a in apps}) == len(apps)
    assert len({a["route_prefix"] for a in apps}) == len(apps)
    for application in apps:
        assert re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", application["import_path"]), application
        assert application["route_prefix"].startswith("/")


def test_rayservice_import_paths_exist() -> None:
    service = one(_base_objects(), "RayService", "hyctas-serve")
    for application in yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]:
        module, attr = application["import_path"].split(":")
        path = ROOT / Path(*module.split("."))
        source = path.with_suffix(".py") if path.with_suffix(".py").exists() else path / "__init__.py"
        assert source.exists(), f"RayService imports {application['import_path']}: no module {module}"
        names = set()
        for node in ast.parse(source.read_text()).body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef):
                names.add(node.name)
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names.update(t.id for t in targets if isinstance(t, ast.Name))
        assert attr in names, f"RayService imports {application['import_path']}: {module} defines no {attr}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workloads_selectors_probes_and_volumes(overlay: str) -> None:
    objects = render(K8S / "overlays" / overlay)
    pvcs = {o["metadata"]["name"] for o in find(objects, "PersistentVolumeClaim")}
    for obj in objects:
        where = f"{overlay}: {obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] in ("Deployment", "StatefulSet"):
            labels = obj["spec"]["template"]["metadata"]["labels"]
            assert selects(obj["spec"]["selector"]["matchLabels"], labels), f"{where}: selector vs template labels"
        if obj["kind"] == "StatefulSet":
            governing = one(objects, "Service", obj["spec"]["serviceName"])
            assert governing["spec"].get("clusterIP") == "None", f"{where}: governing Service must be headless"
    for where, template in pod_templates(objects):
        spec = template["spec"]
        allowed = ("Never", "OnFailure") if where.startswith(("Job/", "CronJob/")) else (None, "Always")
        assert spec.get("restartPolicy") in allowed, f"{overlay}: {where}: restartPolicy {spec.get('restartPolicy')}"
        claim_templates = set()
        for obj in objects:
            if obj["kind"] == "StatefulSet" and f"StatefulSet/{obj['metadata']['name']}" == where:
                claim_templates = {t["metadata"]["name"] for t in obj["spec"].get("volumeClaimTemplates", [])}
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in pvcs, f"{where}: PVC of {volume['name']}"
        for container in spec["containers"]:
            label = f"{overlay}: {where}/{container['name']}"
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes or mount["name"] in claim_templates, f"{label}: volume {mount['name']}"
            for probe_name in ("livenessProbe", "readinessProbe", "startupProbe"):
                probe = container.get(probe_name)
                if not probe:
                    continue
                action = probe.get("httpGet") or probe.get("tcpSocket") or probe.get("grpc")
                if action:
                    assert container_port(container, action["port"]) is not None, f"{label}: {probe_name} port"
                if "httpGet" in probe:
                    assert probe["httpGet"]["path"].startswith("/"), label
            resources = container.get("resources", {})
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), f"{label}: requests cpu and memory"
            assert "memory" in resources.get("limits", {}), f"{label}: a memory limit"
            image = container["image"]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"{label}: pin {image}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_and_monitors_reach_declared_ports(overlay: str) -> None:
    objects = render(K8S / "overlays" / overlay)
    pods = list(pod_templates(objects))
    for svc in find(objects, "Service"):
        where = f"{overlay}: Service/{svc['metadata']['name']}"
        matched = [t for _, t in pods if selects(svc["spec"]["selector"], t["metadata"].get("labels", {}))]
        assert matched, f"{where}: selects no pod"
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for template in matched:
                assert any(container_port(c, target) for c in template["spec"]["containers"]), f"{where}: {target}"
    for monitor in find(objects, "ServiceMonitor"):
        where = f"{overlay}: ServiceMonitor/{monitor['metadata']['name']}"
        targets = [
            s
            for s in find(objects, "Service")
            if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
        ]
        assert targets, f"{where}: selects no Service"
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["path"].startswith("/")
            for svc in targets:
                assert endpoint["port"] in {p.get("name") for p in svc["spec"]["ports"]}, f"{where}: {endpoint['port']}"
    for monitor in find(objects, "PodMonitor"):
        where = f"{overlay}: PodMonitor/{monitor['metadata']['name']}"
        assert monitor["spec"]["selector"]["matchLabels"] == {"ray.io/is-ray-node": "yes"}, "KubeRay's pod label"
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            for obj in objects:
                if (obj["apiVersion"], obj["kind"]) in RAY_KINDS:
                    for group, _, template in ray_templates(obj):
                        ray_container = template["spec"]["containers"][0]
                        assert container_port(ray_container, endpoint["port"]), f"{where}: {obj['kind']}[{group}]"
    if "monitoring" in json.dumps(kustomization(K8S / "overlays" / overlay)["resources"]):
        monitored = {m["metadata"]["name"] for m in objects if (m["apiVersion"], m["kind"]) in MONITOR_KINDS}
        assert {"hyctas-controller", "hyctas-worker", "hyctas-ray"} <= monitored, overlay


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_manifests_set_every_setting(overlay: str) -> None:
    """Controller, migration Job, `hyctas worker` and every Ray pod get every HYCTAS_* variable."""
    objects = render(K8S / "overlays" / overlay)
    checked = 0
    for where, template in pod_templates(objects):
        container = template["spec"]["containers"][0]
        component = template["metadata"].get("labels", {}).get("app.kubernetes.io/component", "")
        if component in ("controller", "worker", "migrate") or where.startswith(("RayCluster", "RayService")):
            _check_settings(container_env(objects, container), f"{overlay}: {where}")
            checked += 1
    assert checked >= 5, f"{overlay}: controller, migrate, worker and Ray pods not all found"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_manifest_references_and_ports_agree(overlay: str) -> None:
    objects = render(K8S / "overlays" / overlay)
    for where, template in pod_templates(objects):
        for container in template["spec"]["containers"]:
            env = container_env(objects, container)  # resolves every ConfigMap / Secret reference or fails
            argv = list(container.get("command", [])) + list(container.get("args", []))
            for ref in re.findall(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_]*)\)", " ".join(argv)):
                assert ref in env, f"{overlay}: {where}: $({ref}) is not in the container's environment"
    # controller: --port = container port `http` = Service port
    controller = command_of(objects, "Deployment", "hyctas-controller")
    (template,) = [t for w, t in pod_templates(objects) if w == "Deployment/hyctas-controller"]
    http = container_port(template["spec"]["containers"][0], "http")
    assert int(_option(controller, "--port") or 0) == http
    assert _option(controller, "--host") == "0.0.0.0"
    probes = template["spec"]["containers"][0]
    assert (
        probes["livenessProbe"]["httpGet"]["path"] == "/health"
        and probes["readinessProbe"]["httpGet"]["path"] == "/ready"
    )
    # worker: HYCTAS_WORKER_METRICS_PORT = container port `metrics`
    (worker,) = [t for w, t in pod_templates(objects) if w == "Deployment/hyctas-worker"]
    worker_container = worker["spec"]["containers"][0]
    settings = _settings_from(container_env(objects, worker_container))
    assert container_port(worker_container, "metrics") == settings.worker_metrics_port
    # HYCTAS_RAY_ADDRESS: KubeRay's head Service of the RayCluster, client port
    (cluster,) = find(objects, "RayCluster")
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    # Ray Serve of the search cluster (models of `deploy` jobs): head port 8000, Service port 8001
    serve_svc = one(objects, "Service", "hyctas-serve")
    assert selects(serve_svc["spec"]["selector"], cluster["spec"]["headGroupSpec"]["template"]["metadata"]["labels"])
    ((serve_port,),) = [[(p["port"], container_port(head, p["targetPort"]))] for p in serve_svc["spec"]["ports"]]
    assert serve_port == (8001, settings.serve_port), "Serve: HYCTAS_SERVE_PORT in the head, 8001 on the Service"
    post_start = " ".join(head["lifecycle"]["postStart"]["exec"]["command"])
    assert "--http-port=$HYCTAS_SERVE_PORT" in post_start and "--http-host=$HYCTAS_SERVE_HOST" in post_start
    (service,) = find(objects, "RayService")
    serve_head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert serve_config["http_options"]["port"] == container_port(serve_head, "serve") == settings.serve_port
    assert _host_port(settings.ray_address or "") == (
        f"{cluster['metadata']['name']}-head-svc",
        container_port(head, "client"),
    )
    # migration Job: `hyctas db upgrade --db $(HYCTAS_DATABASE_URL)`
    migrate = command_of(objects, "Job", "hyctas-migrate")
    assert migrate[:3] == ["hyctas", "db", "upgrade"] and _option(migrate, "--db") == "$(HYCTAS_DATABASE_URL)"
    # in-cluster datastores: URLs point at their Services, with their passwords
    if find(objects, "StatefulSet", "hyctas-postgres"):
        datastores = one(objects, "Secret", "hyctas-datastores")["stringData"]
        db = urlsplit(settings.database_url)
        postgres = one(objects, "Service", "hyctas-postgres")
        assert db.hostname == "hyctas-postgres" and db.port in {p["port"] for p in postgres["spec"]["ports"]}
        assert db.password == datastores["POSTGRES_PASSWORD"], f"{overlay}: secrets.env and datastores.env disagree"
        redis = urlsplit(settings.redis_url)
        redis_svc = one(objects, "Service", "hyctas-redis")
        assert redis.hostname == "hyctas-redis" and redis.port in {p["port"] for p in redis_svc["spec"]["ports"]}
        assert redis.password == datastores["REDIS_PASSWORD"], f"{overlay}: secrets.env and datastores.env disagree"
        redis_args = command_of(objects, "StatefulSet", "hyctas-redis")
        assert (
            _option(redis_args, "--appendonly") == "yes" and _option(redis_args, "--maxmemory-policy") == "noeviction"
        )


def test_no_secret_values_in_the_manifests() -> None:
    for path in K8S.rglob("*.yaml"):
        for obj in _yaml_docs(path):
            if not isinstance(obj, dict):
                continue
            assert obj.get("kind") != "Secret", f"{path}: Secrets come from the overlay's secretGenerator"
            text = json.dumps(obj)
            assert not re.search(r"(postgres(ql)?(\+\w+)?|rediss?)://[^\s\"']*:[^\s\"'@$]+@", text), (
                f"{path}: a URL with a password"
            )
            for var in re.findall(r"\{\"name\": \"([A-Z_]*(?:PASSWORD|SECRET|TOKEN)[A-Z_]*)\", \"value\"", text):
                raise AssertionError(f"{path}: {var} has a literal value (use secretKeyRef)")
    config = one(_base_objects(), "ConfigMap", "hyctas-config")["data"]
    assert not {"HYCTAS_DATABASE_URL", "HYCTAS_REDIS_URL"} & set(config), "credentials belong in the Secret"
    for example in K8S.rglob("*.env.example"):
        for key, value in _read_env_file(example).items():
            assert "CHANGE_ME" in value, f"{example}: {key} must be a placeholder"


# =============================================================================================
# Tests: docs/deploy.md
# =============================================================================================


def test_deploy_docs_cover_the_procedures() -> None:
    text = DOCS.read_text()
    for needle in (
        "cp .env.example .env",
        "docker compose up -d",
        "--scale ray-worker=",
        "ray start --address=",
        "workerGroupSpecs",
        "kubectl apply -k deploy/k8s/overlays/",
        "hyctas apikey create --user",
        "pg_dump",
        "pg_restore",
        "HYCTAS_LEASE_S",
    ):
        assert needle in text, f"docs/deploy.md does not cover {needle!r}"
    for section in ("Bring the stack up", "Add GPU workers", "Watch", "Upgrade", "Back up PostgreSQL"):
        assert re.search(rf"^#+ .*{section}", text, flags=re.M | re.I), f"docs/deploy.md: no section {section!r}"
    for path in re.findall(r"`((?:docker|deploy|docs|tests)/[\w./-]+|\.env\.example|docker-compose\.yml)`", text):
        assert (ROOT / path).exists(), f"docs/deploy.md names {path}, which does not exist"


# -- network policies ---------------------------------------------------------------------------
def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels, matchExpressions In / NotIn / Exists / DoesNotExist)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def _ingress_allowed(objects: tuple[dict[str, Any], ...], src: dict[str, str], dst: dict[str, str], port: int) -> bool:
    """NetworkPolicy ingress semantics within one namespace: open unless a policy selects the pod;
    then allowed when some rule admits the source (no ``from``: anyone) on the port (no ``ports``: all)."""
    policies = [p for p in find(objects, "NetworkPolicy") if _selects(p["spec"]["podSelector"], dst)]
    if not policies:
        return True
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            peers = rule.get("from")
            from_ok = not peers or any("podSelector" in p and _selects(p["podSelector"], src) for p in peers)
            ports = rule.get("ports")
            port_ok = not ports or any(int(p["port"]) == port for p in ports)
            if from_ok and port_ok:
                return True
    return False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_fence_ray_and_the_datastores(overlay: str) -> None:
    """The Ray dashboard / client reach only the controller, the workers and Ray itself; PostgreSQL
    and Redis only the service's pods; the service still reaches everything it needs."""
    objects = render(K8S / "overlays" / overlay)
    pods = {where: t["metadata"]["labels"] for where, t in pod_templates(objects)}
    component = {where: labels.get("app.kubernetes.io/component") for where, labels in pods.items()}
    heads = [w for w, c in component.items() if c in ("ray-head", "serve-head")]
    assert heads, f"{overlay}: no Ray head pods"
    stranger = {"app": "something-else"}  # any other pod of the cluster
    trusted = {"controller", "worker", "ray-head", "ray-worker", "serve-head", "serve-worker"}
    for head in heads:
        for port in (8265, 10001, 6379):  # dashboard (Jobs API), client, GCS
            assert not _ingress_allowed(objects, stranger, pods[head], port), f"{overlay}: {head}:{port} is open"
            for src, labels in pods.items():
                allowed = _ingress_allowed(objects, labels, pods[head], port)
                if port in (8265, 10001):
                    assert allowed == (component[src] in trusted), f"{overlay}: {src} -> {head}:{port}"
        assert _ingress_allowed(objects, stranger, pods[head], 8000), f"{overlay}: Serve HTTP must stay reachable"
    stores = [w for w, c in component.items() if c in ("postgres", "redis")]
    for store in stores:
        port = 5432 if component[store] == "postgres" else 6379
        assert not _ingress_allowed(objects, stranger, pods[store], port), f"{overlay}: {store} is open"
        for src in ("Deployment/hyctas-controller", "Deployment/hyctas-worker"):
            if src in pods:
                assert _ingress_allowed(objects, pods[src], pods[store], port), f"{overlay}: {src} -> {store}"
        for src, labels in pods.items():
            assert _ingress_allowed(objects, labels, pods[store], port), f"{overlay}: {src} -> {store} blocked"
