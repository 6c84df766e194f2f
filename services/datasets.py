"""Dataset references in job payloads, resolved to a local directory by workers.

A reference is a small JSON object, so a job can be replayed from the database alone:

- ``{"kind": "synthetic", "train": 24, "val": 8, "size": [64, 128], "seed": 0}``: the built-in
  procedural street scenes (Cityscapes layout), generated once into the artifact directory and
  shared by every job with the same parameters (the directory name is a hash of them).
- ``{"kind": "cityscapes", "path": "cityscapes"}``: a directory below the data root
  (``HYCTAS_DATA_DIR``); absolute paths and ``..`` are refused, so a client cannot make a
  worker read arbitrary files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path, PurePosixPath
from typing import Any

__all__ = ["DatasetRefError", "check_relative_path", "resolve_dataset"]


class DatasetRefError(ValueError):
    """The reference is malformed or points at nothing."""


def check_relative_path(path: str) -> str:
    """``path`` if it is a plain relative path (no ``..``, not absolute); raises DatasetRefError."""
    pure = PurePosixPath(path)
    if not path or pure.is_absolute() or ".." in pure.parts or "\\" in path or path.startswith("~"):
        raise DatasetRefError(f"dataset path {path!r} must be relative to the data root, without '..'")
    return path


def _synthetic(ref: dict[str, Any], artifact_dir: Path) -> Path:
    from hyctas_core.data.synth import generate

    params = {k: ref[k] for k in ("train", "val", "size", "seed")}
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    final = artifact_dir / "datasets" / f"synth-{digest}"
    if (final / "DONE").exists():
        return final
    # Generate beside the final place, then rename: concurrent workers never see a half dataset.
    tmp = final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        size = (int(params["size"][0]), int(params["size"][1]))
        generate(
            tmp,
            train=int(params["train"]),
            val=int(params["val"]),
            size=size,
            seed=int(params["seed"]),
            write_color=False,
        )
        (tmp / "DONE").write_text(json.dumps(params))
        try:
            os.rename(tmp, final)
        except OSError:  # another worker finished first
            if not (final / "DONE").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def resolve_dataset(ref: dict[str, Any], *, data_dir: Path, artifact_dir: Path) -> Path:
    """The local directory of ``ref`` (generating a synthetic one on first use).

    Raises:
        DatasetRefError: unknown kind, bad path, or a directory that does not exist.
    """
    kind = ref.get("kind")
    if kind == "synthetic":
        return _synthetic(ref, artifact_dir)
    if kind == "cityscapes":
        root = data_dir / check_relative_path(str(ref.get("path", "")))
        if not root.is_dir():
            raise DatasetRefError(f"dataset directory {str(root)!r} does not exist")
        return root
    raise DatasetRefError(f"unknown dataset kind {kind!r}; use 'synthetic' or 'cityscapes'")
