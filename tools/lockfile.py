"""The dependency locks: compile them (``make lock``) and check them against pyproject.toml.

Two locks, both produced by pip-tools' ``pip-compile`` with sha256 hashes, resolved for Python
3.11 on Linux x86_64 against the CPU build of torch:

- ``requirements.lock``: the project with its ``dev``, ``services`` and ``export`` extras. ``make
  test``, ``make demo`` and ``.ci/run`` install exactly this.
- ``docker/requirements.lock``: ``services`` and ``export`` only, for the images. It is compiled
  after the first one and seeded with its pins, so every package they share has one version.

torch itself is in neither (``--unsafe-package torch``): each install pins it apart, the CPU
wheel here, the CUDA build in the GPU image. Its own dependencies (filelock, sympy, ...) are
locked.

Each lock starts with ``# pyproject-sha256: <hex>``, a fingerprint of the dependency tables of
pyproject.toml. ``check`` fails when that fingerprint is stale or when any requirement of
pyproject.toml is missing from a lock or not satisfied by its pin.

    python tools/lockfile.py compile [--upgrade | --upgrade-package NAME ...]   # needs pip-tools
    python tools/lockfile.py check
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "hyctas"
UNLOCKED = ("torch",)  # pinned apart from the locks, per install (CPU here, CUDA in the GPU image)
FINGERPRINT = "# pyproject-sha256: "
# Where the CPU build of torch comes from while resolving: this machine's wheel folder when it
# has one, else PyTorch's CPU index (the Linux torch on PyPI is the CUDA build, whose extra
# nvidia-* dependencies must not enter the lock).
LOCAL_WHEELS = Path("/opt/wheels")
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


@dataclass(frozen=True)
class Lock:
    path: Path
    extras: tuple[str, ...]


LOCKS = (
    Lock(ROOT / "requirements.lock", ("dev", "export", "services")),
    Lock(ROOT / "docker" / "requirements.lock", ("export", "services")),
)


class LockError(Exception):
    """The locks and pyproject.toml disagree (the message says how to fix it)."""


def fingerprint(pyproject: dict[str, object]) -> str:
    """sha256 of what a lock is made from: requires-python, dependencies, optional-dependencies."""
    project = pyproject["project"]
    assert isinstance(project, dict)
    keys = ("requires-python", "dependencies", "optional-dependencies")
    payload = json.dumps({key: project.get(key) for key in keys}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class Pins:
    fingerprint: str | None = None
    versions: dict[str, str] = field(default_factory=dict)  # canonical name -> version
    unhashed: list[str] = field(default_factory=list)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(text: str) -> Pins:
    """The pins of a pip-compile output (``name==version \\`` lines followed by ``--hash=`` lines)."""
    pins = Pins()
    current: str | None = None
    for raw in text.splitlines():
        if raw.startswith(FINGERPRINT):
            pins.fingerprint = raw[len(FINGERPRINT) :].strip()
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("--hash="):
            if current is not None:
                pins.unhashed = [name for name in pins.unhashed if name != current]
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)(?:\s*;[^\\]*)?\s*\\?", line)
        if match is None:
            raise LockError(f"not a pinned requirement: {raw.strip()!r}")
        current = canonical(match.group(1))
        pins.versions[current] = match.group(2)
        pins.unhashed.append(current)
    return pins


def requirements(pyproject: dict[str, object], extras: tuple[str, ...]) -> list[str]:
    """The requirement strings of the project and the given extras, self-references expanded."""
    project = pyproject["project"]
    assert isinstance(project, dict)
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    out: list[str] = list(project.get("dependencies", []))
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        if extra not in optional:
            raise LockError(f"pyproject.toml has no extra {extra!r}")
        for spec in optional[extra]:
            self_ref = re.fullmatch(rf"{PROJECT}\[([^\]]+)\]", spec.replace(" ", ""))
            if self_ref:
                todo.extend(self_ref.group(1).split(","))
            else:
                out.append(spec)
    return out


def check(root: Path = ROOT, locks: tuple[Lock, ...] = LOCKS) -> list[str]:
    """Every way the locks disagree with pyproject.toml (and each other); empty when they agree."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    expected = fingerprint(pyproject)
    problems: list[str] = []
    all_pins: dict[Path, Pins] = {}
    for lock in locks:
        path = root / lock.path.relative_to(ROOT)
        rel = path.relative_to(root)
        if not path.exists():
            problems.append(f"{rel} is missing: run `make lock`")
            continue
        pins = read_lock(path.read_text())
        all_pins[path] = pins
        if pins.fingerprint != expected:
            problems.append(f"{rel} was not made from this pyproject.toml (fingerprint differs): run `make lock`")
        for name in pins.unhashed:
            problems.append(f"{rel}: {name} has no --hash")
        for name in UNLOCKED:
            if name in pins.versions:
                problems.append(f"{rel} pins {name}, which each install pins apart")
        for spec in requirements(pyproject, lock.extras):
            req = Requirement(spec)
            name = canonical(req.name)
            if name in UNLOCKED or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
                continue
            if name not in pins.versions:
                problems.append(f"{rel} lacks {req.name} (pyproject.toml: {spec}): run `make lock`")
            elif Version(pins.versions[name]) not in req.specifier:
                problems.append(
                    f"{rel} pins {req.name}=={pins.versions[name]}, outside pyproject.toml's {spec}: run `make lock`"
                )
    torch_pins = [Requirement(d) for d in requirements(pyproject, ()) if canonical(Requirement(d).name) == "torch"]
    pinned = [spec.version for req in torch_pins for spec in req.specifier if spec.operator == "=="]
    makefile = root / "Makefile"
    if makefile.exists():
        found = re.search(r"^TORCH_VERSION\s*:?=\s*(\S+)", makefile.read_text(), flags=re.M)
        if found is None or [found.group(1)] != pinned:
            made = found.group(1) if found else None
            problems.append(f"Makefile installs torch {made}, pyproject.toml pins {pinned or 'no version'}")
    if len(all_pins) > 1:
        first, *rest = all_pins.items()
        for path, pins in rest:
            for name, version in pins.versions.items():
                other = first[1].versions.get(name)
                if other is not None and other != version:
                    problems.append(
                        f"{path.relative_to(root)} pins {name}=={version} but {first[0].relative_to(root)} "
                        f"pins {other}: run `make lock`"
                    )
    return problems


def compile_locks(upgrade: bool, upgrade_packages: list[str]) -> None:
    pip_compile = shutil.which("pip-compile", path=str(Path(sys.executable).parent))
    if pip_compile is None:
        raise SystemExit("pip-compile is not installed beside this Python: run `make lock`")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    stamp = fingerprint(pyproject)
    torch_source = (
        ["--find-links", str(LOCAL_WHEELS)] if LOCAL_WHEELS.is_dir() else ["--extra-index-url", TORCH_CPU_INDEX]
    )
    # No pip configuration: a machine's local mirrors or constraints must not shape the lock.
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "CUSTOM_COMPILE_COMMAND": "make lock"}
    for i, lock in enumerate(LOCKS):
        if i > 0 and not lock.path.exists():
            # Seed it with the first lock's pins: pip-compile keeps the pins it finds in its output.
            shutil.copyfile(LOCKS[0].path, lock.path)
        argv = [pip_compile, "--quiet", "pyproject.toml", "--output-file", str(lock.path.relative_to(ROOT))]
        argv += [f"--extra={extra}" for extra in lock.extras]
        argv += ["--generate-hashes", "--strip-extras", "--no-emit-index-url", "--no-emit-find-links"]
        argv += [f"--unsafe-package={name}" for name in (*UNLOCKED, PROJECT)]  # listed as comments only
        argv += torch_source
        if i == 0 and upgrade:
            argv.append("--upgrade")
        for name in upgrade_packages if i == 0 else []:
            argv += ["--upgrade-package", name]
        if i > 0:
            # Whatever the first lock pins wins: upgrade nothing, and drop pins it no longer has.
            first = read_lock(LOCKS[0].path.read_text()).versions
            mine = read_lock(lock.path.read_text()).versions if lock.path.exists() else {}
            for name, version in mine.items():
                if first.get(name) not in (None, version):
                    argv += ["--upgrade-package", f"{name}=={first[name]}"]
        subprocess.run(argv, cwd=ROOT, env=env, check=True)
        text = lock.path.read_text()
        text = re.sub(rf"^{re.escape(FINGERPRINT)}.*\n", "", text, flags=re.M)
        lines = text.splitlines(keepends=True)
        header_end = next(i for i, line in enumerate(lines) if not line.startswith("#"))
        lines.insert(header_end, f"{FINGERPRINT}{stamp}\n")
        lock.path.write_text("".join(lines))
        print(f"wrote {lock.path.relative_to(ROOT)}: {len(read_lock(lock.path.read_text()).versions)} packages")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    comp = sub.add_parser("compile", help="(re)write the locks; keeps existing pins unless told to upgrade")
    comp.add_argument("--upgrade", action="store_true", help="every package to its newest allowed version")
    comp.add_argument("--upgrade-package", action="append", default=[], metavar="NAME[==VERSION]")
    sub.add_parser("check", help="exit 1 when the locks and pyproject.toml disagree")
    args = parser.parse_args(argv)
    if args.command == "compile":
        compile_locks(args.upgrade, args.upgrade_package)
        return 0
    try:
        problems = check()
    except LockError as exc:
        problems = [str(exc)]
    for problem in problems:
        print(f"lock check: {problem}", file=sys.stderr)
    if not problems:
        print(f"lock check: {', '.join(str(lock.path.relative_to(ROOT)) for lock in LOCKS)} agree with pyproject.toml")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
