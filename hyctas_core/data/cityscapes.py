"""Cityscapes (fine annotations) in its official directory layout.

Layout read (as distributed by cityscapes-dataset.com)::

    root/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    root/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
    root/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_instanceIds.png   (return_instances)

Labels are read from the ``labelIds`` PNGs (ids 0..33) and mapped to the 19 train ids with
:func:`~hyctas_core.data.labels.id_to_train_id_lut` (ignored classes -> 255). Pre-computed
``labelTrainIds`` files, if present, are not used. In ``instanceIds`` PNGs a value >= 1000
is an instance ``label_id * 1000 + k``; smaller values are plain label ids (stuff, or thing
regions without instance annotation such as crowds). Instances whose class has a train id
become the per-image instance indices 1..K (in increasing raw id order); everything else is 0.
"""

from __future__ import annotations

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
from hyctas_core.data.labels import THING_TRAIN_IDS, TRAIN_ID_NAMES, VALID_IDS, id_to_train_id_lut
from hyctas_core.data.transforms import SegTransform

__all__ = ["CityscapesDataset"]

_IMAGE_SUFFIX = "_leftImg8bit.png"
_LABEL_SUFFIX = "_gtFine_labelIds.png"
_INSTANCE_SUFFIX = "_gtFine_instanceIds.png"

_LUT = id_to_train_id_lut()
_VALID = np.zeros(256, dtype=bool)
_VALID[sorted(VALID_IDS)] = True
_THING_LUT = np.zeros(256, dtype=bool)  # label id -> is a thing class with a train id
_THING_LUT[[i for i in range(256) if int(_LUT[i]) in THING_TRAIN_IDS]] = True


def _check_label_ids(ids: np.ndarray, path: Path) -> None:
    """Raise a DatasetError naming ``path`` and the first id that is not a Cityscapes label id."""
    if ids.dtype == np.uint8:
        counts = np.bincount(ids.ravel(), minlength=256)
        bad = np.flatnonzero((counts > 0) & ~_VALID)
    else:
        values = np.unique(ids)
        bad = values[(values < 0) | (values > 255) | ~_VALID[np.clip(values, 0, 255)]]
    if bad.size:
        raise DatasetError(
            f"{path}: label id {int(bad[0])} is not a Cityscapes label id (allowed: 0..33)"
            + (f"; {bad.size} unknown ids in all" if bad.size > 1 else "")
        )


def _instance_map(raw: np.ndarray, path: Path) -> tuple[np.ndarray, dict[int, int]]:
    """Cityscapes instanceIds -> (int32 instance index map 1..K, index -> train id)."""
    ids = raw.astype(np.int64)
    mask = ids >= 1000
    if not mask.any():
        return np.zeros(ids.shape, dtype=np.int32), {}
    label_ids = ids[mask] // 1000
    if label_ids.max() > 255:
        raise DatasetError(
            f"{path}: instance id {int(ids[mask].max())} encodes label id {int(label_ids.max())}, "
            "not a Cityscapes label id (allowed: 0..33)"
        )
    keep = _THING_LUT[label_ids]
    out = np.zeros(ids.shape, dtype=np.int32)
    if not keep.any():
        return out, {}
    uniq, inverse = np.unique(ids[mask][keep], return_inverse=True)
    flat_idx = np.flatnonzero(mask)[keep]
    out.ravel()[flat_idx] = inverse.astype(np.int32) + 1
    classes = {k + 1: int(_LUT[int(u) // 1000]) for k, u in enumerate(uniq)}
    return out, classes


class CityscapesDataset(SegmentationDataset):
    """Cityscapes fine annotations, 19 train classes.

    Args:
        root: The Cityscapes root (holding ``leftImg8bit/`` and ``gtFine/``).
        split: Sub-folder of ``leftImg8bit/`` and ``gtFine/``, e.g. ``"train"``, ``"val"``.
        transform: The augmentation; None = normalisation only.
        return_instances: Add the ``"instances"`` index map to each sample.
        seed: Base seed of the per-item augmentation generators.
        limit: Keep only the first ``limit`` images (sorted by path), or None for all.

    Raises:
        DatasetError: If the split folder is missing, holds no images, or an image has no
            label (or, with ``return_instances``, no instanceIds) file.
        ValueError: If ``limit`` is not positive.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: SegTransform | None = None,
        return_instances: bool = False,
        seed: int = 0,
        limit: int | None = None,
    ) -> None:
        super().__init__(transform=transform, return_instances=return_instances, seed=seed, limit=limit)
        self.root = Path(root)
        self.split = split
        image_root = self.root / "leftImg8bit" / split
        label_root = self.root / "gtFine" / split
        if not image_root.is_dir():
            parent = self.root / "leftImg8bit"
            found = sorted(p.name for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
            raise DatasetError(
                f"{image_root}: Cityscapes image directory not found "
                f"(splits found under {parent}: {', '.join(found) if found else 'none'})"
            )
        if not label_root.is_dir():
            raise DatasetError(f"{label_root}: Cityscapes gtFine directory not found")
        images = sorted(image_root.glob(f"*/*{_IMAGE_SUFFIX}"))
        if not images:
            raise DatasetError(f"{image_root}: no <city>/*{_IMAGE_SUFFIX} images found")
        if limit is not None:
            images = images[:limit]
        self._images: list[Path] = images
        self._labels: list[Path] = []
        self._instances: list[Path] = []
        self._names = tuple(p.name[: -len(_IMAGE_SUFFIX)] for p in images)  # <city>_<seq>_<frame>, sorted
        self._class_names = TRAIN_ID_NAMES  # the 19 train classes
        for img, prefix in zip(images, self._names, strict=True):
            label = label_root / img.parent.name / (prefix + _LABEL_SUFFIX)
            if not label.is_file():
                raise DatasetError(f"{label}: label file missing for image {img}")
            self._labels.append(label)
            inst = label_root / img.parent.name / (prefix + _INSTANCE_SUFFIX)
            if return_instances and not inst.is_file():
                raise DatasetError(f"{inst}: instanceIds file missing for image {img}")
            self._instances.append(inst)

    def load(self, index: int, instances: bool = False) -> RawSample:
        """Decode image, train-id label and (optionally) instance map of image ``index``.

        Raises:
            DatasetError: If a file is missing or unreadable, a label PNG is not single-channel
                or holds an id outside 0..33, or the sizes differ.
        """
        img_path, label_path = self._images[index], self._labels[index]
        image = load_rgb(img_path)
        ids = load_single_channel(label_path, "label")
        check_same_size(image, ids, img_path, label_path)
        _check_label_ids(ids, label_path)
        label = _LUT[ids.astype(np.uint8)]
        if not instances:
            return RawSample(image=image, label=label, name=self._names[index])
        inst_path = self._instances[index]
        raw = load_single_channel(inst_path, "instanceIds")
        check_same_size(image, raw, img_path, inst_path)
        inst, classes = _instance_map(raw, inst_path)
        return RawSample(image=image, label=label, name=self._names[index], instances=inst, instance_classes=classes)
