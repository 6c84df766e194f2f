"""The Dockerfiles and the image lock, parsed: instructions, base images, commands, health checks, ports."""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

from tests.deploy.common import ROOT
from tools import lockfile


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
