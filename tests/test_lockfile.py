"""The dependency locks agree with pyproject.toml, and the check that says so catches each way they can disagree."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tools import lockfile

ROOT = Path(__file__).resolve().parent.parent


def test_the_committed_locks_agree_with_pyproject() -> None:
    assert lockfile.check() == []
    pins = lockfile.read_lock((ROOT / "requirements.lock").read_text())
    # the test, demo and CI install: everything the extras need, torch apart, every pin hashed
    for name in ("fastapi", "ray", "sqlalchemy", "pymoo", "onnxruntime", "pytest", "mypy", "filelock", "sympy"):
        assert name in pins.versions, name
    assert "torch" not in pins.versions and not pins.unhashed
    images = lockfile.read_lock((ROOT / "docker" / "requirements.lock").read_text())
    assert "pytest" not in images.versions and "ray" in images.versions  # images get no dev tools


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for rel in ("pyproject.toml", "Makefile", "requirements.lock", "docker/requirements.lock"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / rel, tmp_path / rel)
    assert lockfile.check(tmp_path) == []
    return tmp_path


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def test_a_new_dependency_is_caught(tree: Path) -> None:
    _edit(tree / "pyproject.toml", '"numpy>=1.26",', '"numpy>=1.26",\n    "leftpad>=1",')
    problems = lockfile.check(tree)
    assert any("fingerprint differs" in p for p in problems)
    assert any("requirements.lock lacks leftpad" in p for p in problems)
    assert any("docker/requirements.lock lacks leftpad" in p for p in problems)


def test_a_range_that_excludes_the_pin_is_caught(tree: Path) -> None:
    version = lockfile.read_lock((tree / "requirements.lock").read_text()).versions["fastapi"]
    _edit(tree / "pyproject.toml", '"fastapi>=0.115",', f'"fastapi>{version}",')
    problems = lockfile.check(tree)
    assert any(f"pins fastapi=={version}, outside pyproject.toml's fastapi>{version}" in p for p in problems)


def test_a_hand_edited_lock_is_caught(tree: Path) -> None:
    lock = tree / "requirements.lock"
    text = lock.read_text()
    # an unhashed pin, and torch pinned inside the lock
    lock.write_text(text + "leftpad==1.0\ntorch==2.13.0 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    problems = lockfile.check(tree)
    assert "requirements.lock: leftpad has no --hash" in problems
    assert any("pins torch, which each install pins apart" in p for p in problems)
    # the images' lock disagreeing with the test lock on a shared package
    docker = tree / "docker" / "requirements.lock"
    ray = lockfile.read_lock(docker.read_text()).versions["ray"]
    docker.write_text(re.sub(rf"^ray=={re.escape(ray)} ", "ray==0.0.1 ", docker.read_text(), flags=re.M))
    assert any(f"pins ray==0.0.1 but requirements.lock pins {ray}" in p for p in lockfile.check(tree))


def test_a_stale_fingerprint_and_a_torch_mismatch_are_caught(tree: Path) -> None:
    _edit(tree / "pyproject.toml", 'requires-python = ">=3.11,<3.12"', 'requires-python = ">=3.11,<3.13"')
    assert any("fingerprint differs" in p for p in lockfile.check(tree))
    shutil.copyfile(ROOT / "pyproject.toml", tree / "pyproject.toml")
    _edit(tree / "Makefile", "TORCH_VERSION := 2.13.0", "TORCH_VERSION := 2.14.1")
    assert lockfile.check(tree) == ["Makefile installs torch 2.14.1, pyproject.toml pins ['2.13.0']"]
    (tree / "docker" / "requirements.lock").unlink()
    assert "docker/requirements.lock is missing: run `make lock`" in lockfile.check(tree)


def test_the_cli_exit_status(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert lockfile.main(["check"]) == 0
    assert "agree with pyproject.toml" in capsys.readouterr().out
