"""ADE20K scene parsing (the ``ADEChallengeData2016`` release, 150 classes).

Layout read::

    ADEChallengeData2016/images/<split>/<name>.jpg          split: training | validation
    ADEChallengeData2016/annotations/<split>/<name>.png     mode L: 0 = other, 1..150 = classes
    ADEChallengeData2016/objectInfo150.csv                  optional: Idx, ..., Name

Annotation values follow the usual "reduce zero label" convention: 0 (other / unlabelled)
-> 255 (ignored) and k -> train id k - 1 for k in 1..150; larger values are an error.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from hyctas_core.data.base import (
    DatasetError,
    RawSample,
    SegmentationDataset,
    check_same_size,
    load_rgb,
    load_single_channel,
)
from hyctas_core.data.transforms import SegTransform

__all__ = ["ADE20K_NUM_CLASSES", "ADE20KDataset", "read_object_info"]

ADE20K_NUM_CLASSES = 150
_SPLITS = ("training", "validation")

_LUT = np.full(256, 255, dtype=np.uint8)
_LUT[1 : ADE20K_NUM_CLASSES + 1] = np.arange(ADE20K_NUM_CLASSES, dtype=np.uint8)


def read_object_info(path: Path) -> tuple[str, ...]:
    """Read the 150 class names (train id order) from ``objectInfo150.csv``.

    The file has a header with at least the columns ``Idx`` (1..150) and ``Name``; a name may
    list ``;``-separated synonyms, of which the first is kept.

    Raises:
        DatasetError: If the file cannot be read, lacks the columns, or does not name each
            index 1..150 exactly once.
    """
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read class names ({exc})") from None
    names: dict[int, str] = {}
    for line, row in enumerate(rows, start=2):
        if "Idx" not in row or "Name" not in row:
            raise DatasetError(f"{path}: needs the columns Idx and Name, found {sorted(k for k in row if k)}")
        try:
            idx = int(row["Idx"])
        except (TypeError, ValueError):
            raise DatasetError(f"{path}: line {line}: Idx {row['Idx']!r} is not an integer") from None
        if not 1 <= idx <= ADE20K_NUM_CLASSES or idx in names:
            raise DatasetError(f"{path}: line {line}: Idx {idx} is out of range 1..{ADE20K_NUM_CLASSES} or repeated")
        names[idx] = (row["Name"] or "").split(";")[0].strip() or f"class_{idx - 1}"
    if len(names) != ADE20K_NUM_CLASSES:
        missing = [k for k in range(1, ADE20K_NUM_CLASSES + 1) if k not in names]
        raise DatasetError(f"{path}: {len(missing)} class indices missing, first {missing[0]}")
    return tuple(names[k] for k in range(1, ADE20K_NUM_CLASSES + 1))


class ADE20KDataset(SegmentationDataset):
    """ADE20K (SceneParsing / ADEChallengeData2016), 150 train classes, no instances.

    Args:
        root: The ``ADEChallengeData2016`` folder.
        split: ``"training"`` or ``"validation"``.
        transform: The augmentation; None = normalisation only.
        seed: Base seed of the per-item augmentation generators.
        limit: Keep only the first ``limit`` images (sorted by name), or None for all.

    Class names come from ``root/objectInfo150.csv`` when present, else ``class_<train id>``.

    Raises:
        DatasetError: If the split folders are missing or empty, an image has no annotation,
            or ``objectInfo150.csv`` is malformed.
        ValueError: If ``split`` or ``limit`` is invalid.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "training",
        transform: SegTransform | None = None,
        seed: int = 0,
        limit: int | None = None,
    ) -> None:
        super().__init__(transform=transform, return_instances=False, seed=seed, limit=limit)
        if split not in _SPLITS:
            raise ValueError(f"ADE20K split must be one of {', '.join(_SPLITS)}, got {split!r}")
        self.root = Path(root)
        self.split = split
        image_dir = self.root / "images" / split
        ann_dir = self.root / "annotations" / split
        for d in (image_dir, ann_dir):
            if not d.is_dir():
                raise DatasetError(f"{d}: ADE20K directory not found (root must be the ADEChallengeData2016 folder)")
        images = sorted(image_dir.glob("*.jpg"))
        if not images:
            raise DatasetError(f"{image_dir}: no *.jpg images found")
        if limit is not None:
            images = images[:limit]
        self._images: list[Path] = images
        self._labels: list[Path] = []
        for img in images:
            ann = ann_dir / (img.stem + ".png")
            if not ann.is_file():
                raise DatasetError(f"{ann}: annotation file missing for image {img}")
            self._labels.append(ann)
        self._names = tuple(p.stem for p in images)
        info = self.root / "objectInfo150.csv"
        self._class_names = (
            read_object_info(info) if info.is_file() else tuple(f"class_{k}" for k in range(ADE20K_NUM_CLASSES))
        )

    def load(self, index: int, instances: bool = False) -> RawSample:
        """Decode image and train-id label of image ``index`` (ADE20K has no instance maps here).

        Raises:
            DatasetError: If a file is missing or unreadable, the annotation is not
                single-channel, holds a value above 150, or its size differs from the image's.
        """
        img_path, ann_path = self._images[index], self._labels[index]
        image = load_rgb(img_path)
        ann = load_single_channel(ann_path, "annotation")
        check_same_size(image, ann, img_path, ann_path)
        top = int(ann.max()) if ann.size else 0
        if top > ADE20K_NUM_CLASSES or (ann.dtype != np.uint8 and int(ann.min()) < 0):
            bad = top if top > ADE20K_NUM_CLASSES else int(ann.min())
            raise DatasetError(
                f"{ann_path}: annotation value {bad} is not an ADE20K class (allowed: 0 = other, "
                f"1..{ADE20K_NUM_CLASSES})"
            )
        label = _LUT[ann.astype(np.uint8)]
        if not instances:
            return RawSample(image=image, label=label, name=self._names[index])
        return RawSample(
            image=image,
            label=label,
            name=self._names[index],
            instances=np.zeros(label.shape, dtype=np.int32),
            instance_classes={},
        )
