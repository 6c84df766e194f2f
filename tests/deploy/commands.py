"""Every `hyctas` command the deployment and its docs run, resolved against the real CLI."""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from typer.main import get_command

from hyctas_cli.main import app as hyctas_app
from tests.deploy.common import DOCKERFILES, DOCS, _argvs
from tests.deploy.compose import service_argv, services
from tests.deploy.dockerfiles import dockerfile_cmd
from tests.deploy.kustomize import all_renders, pod_templates


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
