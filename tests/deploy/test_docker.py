"""The Dockerfiles: cached dependency layers, pinned bases, non-root users, health checks, ignores."""

from __future__ import annotations

import re

import pytest
from packaging.version import Version

from services.settings import Settings
from tests.deploy.common import DOCKERFILES, K8S, RAY_KINDS, ROOT, _option
from tests.deploy.compose import url_port
from tests.deploy.dockerfiles import (
    Instruction,
    _image_lock,
    _pinned,
    _pyproject_requirement,
    dockerfile,
    dockerfile_args,
    dockerfile_base,
    dockerfile_cmd,
    dockerfile_exposed,
    dockerfile_healthcheck,
)
from tests.deploy.kustomize import _yaml_docs


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
