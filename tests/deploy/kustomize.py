"""What `kustomize build` gives for the overlays in deploy/k8s, for exactly the features they use
(resources, namespace, labels, secretGenerator, images, JSON 6902 patches): the real tool does not
install from the package index, and any other feature fails the render rather than being ignored."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.common import K8S, OVERLAYS, RAY_KINDS, _read_env_file


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
