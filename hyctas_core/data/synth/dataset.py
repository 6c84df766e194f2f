"""The on-disk dataset in the Cityscapes layout: deterministic per (seed, split, index)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hyctas_core.data.labels import (
    CITYSCAPES_LABELS,
    IGNORE_INDEX,
    NUM_CLASSES,
    TRAIN_ID_NAMES,
    id_to_train_id_lut,
)
from hyctas_core.data.synth.materials import GENERATOR_VERSION, Arr
from hyctas_core.data.synth.scene import _check_size, render_scene

METADATA_FILE = "README_SYNTH.json"


SPLITS: tuple[str, ...] = ("train", "val")


CITIES: dict[str, tuple[str, ...]] = {"train": ("synthA", "synthB", "synthC"), "val": ("synthD", "synthE")}


_FRAME = 19  # Cityscapes' annotated frames are frame 19 of each 30-frame snippet


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of image ``index`` of ``split``: depends on nothing else.

    Args:
        seed: the dataset seed (>= 0).
        split: ``"train"`` or ``"val"``.
        index: the image index in its split (>= 0).

    Returns:
        A fresh ``np.random.Generator``.
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r} must be one of {', '.join(SPLITS)}")
    return np.random.default_rng([seed, SPLITS.index(split), index, GENERATOR_VERSION])


def scene_stem(split: str, index: int) -> tuple[str, str]:
    """``(city, "<city>_<seq:06d>_<frame:06d>")`` of image ``index`` of ``split``.

    Images are dealt round-robin over the split's cities, so the name of image ``i`` does
    not depend on how many images the split has.
    """
    cities = CITIES[split]
    city = cities[index % len(cities)]
    return city, f"{city}_{index // len(cities):06d}_{_FRAME:06d}"


def check_generate_args(
    out_dir: Path, *, train: int, val: int, size: tuple[int, int], seed: int, overwrite: bool = False
) -> None:
    """Validate :func:`generate`'s arguments without writing anything.

    Raises:
        ValueError: naming the bad value: negative or zero total counts, a size outside
            :data:`MIN_SIZE`..4096, a negative seed, ``out_dir`` being a file, or ``out_dir``
            non-empty (a previous synthetic dataset there is replaced only with ``overwrite``;
            any other non-empty directory is always refused).
    """
    for name, n in (("train", train), ("val", val)):
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
            raise ValueError(f"{name} count {n!r} must be a non-negative integer")
    if train + val == 0:
        raise ValueError("train and val counts are both 0: nothing to generate")
    _check_size(size)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed {seed!r} must be a non-negative integer")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output {str(out_dir)!r} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not (out_dir / METADATA_FILE).is_file():
            raise ValueError(
                f"output directory {str(out_dir)!r} is not empty and holds no synthetic dataset; choose another"
            )
        if not overwrite:
            raise ValueError(
                f"output directory {str(out_dir)!r} already holds a synthetic dataset; pass overwrite to replace it"
            )


def _save_png(arr: Arr, path: Path) -> None:
    Image.fromarray(arr).save(path, format="PNG", compress_level=4)


def _color_lut() -> Arr:
    lut = np.zeros((256, 3), np.uint8)
    for lab in CITYSCAPES_LABELS:
        lut[lab.id] = lab.color
    return lut


def write_instance_png(instance_ids: Arr, path: Path) -> None:
    """Write instance ids as a 16-bit greyscale PNG, as Cityscapes does (ids must be < 65536)."""
    if instance_ids.min() < 0 or instance_ids.max() > 0xFFFF:
        raise ValueError("instance ids must be in 0..65535 for a 16-bit PNG")
    Image.fromarray(instance_ids.astype(np.uint16)).save(path, format="PNG", compress_level=4)


def generate(
    out_dir: Path,
    *,
    train: int,
    val: int,
    size: tuple[int, int],
    seed: int,
    progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
    write_color: bool = True,
) -> dict[str, Any]:
    """Write a synthetic dataset in the Cityscapes layout.

    Files: ``leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` (RGB) and
    ``gtFine/<split>/<city>/<stem>_gtFine_{labelIds,instanceIds,color}.png`` (8-bit label ids,
    16-bit instance ids, RGB colours), plus :data:`METADATA_FILE`. Output is byte-identical for
    equal ``(seed, size)``, and image ``i`` of a split does not depend on the counts.

    Args:
        out_dir: target directory; created if missing; must be empty or hold a previous
            synthetic dataset (replaced only when ``overwrite``).
        train: number of training images.
        val: number of validation images.
        size: ``(height, width)``.
        seed: dataset seed (>= 0).
        progress: called as ``progress(done, total)`` after every image.
        overwrite: replace a previous synthetic dataset in ``out_dir``.
        write_color: also write the ``_gtFine_color.png`` visualisations.

    Returns:
        A summary: counts, size, seed, version, file count and per-class pixel fractions
        (train ids, over all images).

    Raises:
        ValueError: for bad arguments (see :func:`check_generate_args`).
    """
    check_generate_args(out_dir, train=train, val=val, size=size, seed=seed, overwrite=overwrite)
    out_dir = Path(out_dir)
    h, w = int(size[0]), int(size[1])
    if (out_dir / METADATA_FILE).is_file():
        for sub in ("leftImg8bit", "gtFine"):
            if (out_dir / sub).is_dir():
                shutil.rmtree(out_dir / sub)
        (out_dir / METADATA_FILE).unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "generator": "hyctas_core.data.synth",
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "size": [h, w],
        "counts": {"train": int(train), "val": int(val)},
        "cities": {s: list(CITIES[s]) for s in SPLITS},
        "layout": "cityscapes",
        "complete": False,
    }
    (out_dir / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    colors = _color_lut()
    train_lut = id_to_train_id_lut()
    pixels = np.zeros(256, np.int64)
    jobs = [(s, i) for s, n in (("train", train), ("val", val)) for i in range(int(n))]
    files = 0
    for done, (split, i) in enumerate(jobs, start=1):
        scene = render_scene(scene_rng(int(seed), split, i), (h, w))
        city, stem = scene_stem(split, i)
        img_dir = out_dir / "leftImg8bit" / split / city
        gt_dir = out_dir / "gtFine" / split / city
        img_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        _save_png(scene.image, img_dir / f"{stem}_leftImg8bit.png")
        _save_png(scene.label_ids, gt_dir / f"{stem}_gtFine_labelIds.png")
        write_instance_png(scene.instance_ids, gt_dir / f"{stem}_gtFine_instanceIds.png")
        files += 3
        if write_color:
            _save_png(colors[scene.label_ids], gt_dir / f"{stem}_gtFine_color.png")
            files += 1
        pixels += np.bincount(train_lut[scene.label_ids].ravel(), minlength=256)
        if progress is not None:
            progress(done, len(jobs))
    total = max(int(pixels.sum()), 1)
    freq = {TRAIN_ID_NAMES[t]: round(int(pixels[t]) / total, 6) for t in range(NUM_CLASSES)}
    freq["ignored"] = round(int(pixels[IGNORE_INDEX]) / total, 6)
    meta["complete"] = True
    meta["class_pixel_fraction"] = freq
    (out_dir / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return {
        "out_dir": str(out_dir),
        "train": int(train),
        "val": int(val),
        "size": [h, w],
        "seed": int(seed),
        "version": GENERATOR_VERSION,
        "files": files,
        "class_pixel_fraction": freq,
    }
