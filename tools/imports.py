"""The project's import graph: every import, at module level or inside a function, between the
project's own modules.

`python tools/imports.py` prints JSON: the modules, the import cycles (strongly connected
components of more than one module, or a module importing itself) and the imports that break the
layering (the core imports no service library and nothing above it; the services never import the
CLI). `tests/test_layers.py` asserts both lists are empty.
"""

from __future__ import annotations

import ast
import json
import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("hyctas_core", "services", "hyctas_cli")
# What each floor may not import: a top-level name (a package of ours or a library).
FORBIDDEN = {
    "hyctas_core": (
        "services",
        "hyctas_cli",
        "fastapi",
        "starlette",
        "sqlalchemy",
        "alembic",
        "redis",
        "ray",
        "uvicorn",
        "prometheus_client",
        "psycopg",
    ),
    "services": ("hyctas_cli",),
    "hyctas_cli": (),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_files() -> dict[str, Path]:
    files: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            files[module_name(path)] = path
    return files


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, known: Iterable[str]) -> set[str]:
    """Every module (ours, or a library's top-level name) that `module` imports anywhere."""
    known = set(known)
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, path.name == "__init__.py", node)
            # `from pkg import mod` imports pkg.mod when it is a module of ours.
            names = [f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names]
        else:
            continue
        for name in names:
            # The longest module of ours the name starts with; else the library's top-level name.
            parts = name.split(".")
            for cut in range(len(parts), 0, -1):
                candidate = ".".join(parts[:cut])
                if candidate in known:
                    found.add(candidate)
                    break
            else:
                found.add(parts[0])
    found.discard(module)
    return found


def graph() -> dict[str, set[str]]:
    files = project_files()
    return {module: imports_of(module, path, files) for module, path in files.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root] & edges.keys())))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child] & edges.keys()))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return sorted(found)


def violations(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in sorted(edges.items()):
        floor = module.split(".")[0]
        for target in sorted(targets):
            if target.split(".")[0] in FORBIDDEN[floor]:
                bad.append(f"{module} imports {target}")
    return bad


def main() -> int:
    edges = graph()
    report = {"modules": len(edges), "cycles": cycles(edges), "layer_violations": violations(edges)}
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
