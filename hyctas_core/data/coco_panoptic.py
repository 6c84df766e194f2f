"""COCO panoptic segmentation (``panoptic_<split>.json`` + PNG folder), as semantic + instance targets.

Format (panopticapi): the JSON has ``images`` ({id, file_name, height, width}), ``annotations``
({image_id, file_name of the PNG, segments_info: [{id, category_id, iscrowd, area, bbox}]}) and
``categories`` ({id, name, isthing, supercategory}). Each PNG encodes the segment id of a pixel
as ``R + 256 * G + 256**2 * B``; 0 is void.

Targets: category ids map to contiguous train ids ``0..C-1`` in the order of the
``categories`` list; void and crowd pixels are ignored (255) in the label. The instance map
numbers the non-crowd segments of thing categories present in the PNG 1..K, in
``segments_info`` order; everything else is 0.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hyctas_core.data.base import DatasetError, RawSample, SegmentationDataset, check_same_size, load_rgb
from hyctas_core.data.labels import IGNORE_INDEX
from hyctas_core.data.transforms import SegTransform

__all__ = ["COCOPanopticDataset", "rgb_to_id"]


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """Decode an HxWx3 panoptic PNG array to int64 segment ids ``R + 256 G + 256^2 B``."""
    c = rgb.astype(np.int64)
    return c[..., 0] + 256 * c[..., 1] + 65536 * c[..., 2]


@dataclass(frozen=True)
class _Segment:
    train_id: int
    is_thing: bool
    iscrowd: bool


@dataclass(frozen=True)
class _Entry:
    image: Path
    png: Path
    segments: dict[int, _Segment]  # in segments_info order


def _load_panoptic_png(path: Path) -> np.ndarray:
    """Read an RGB-encoded panoptic PNG as an HxWx3 uint8 array (mode RGB only)."""
    try:
        with Image.open(path) as im:
            if im.mode != "RGB":
                raise DatasetError(f"{path}: panoptic PNG must be RGB-encoded (mode RGB), got mode {im.mode!r}")
            return np.asarray(im)
    except FileNotFoundError:
        raise DatasetError(f"{path}: panoptic PNG not found") from None
    except DatasetError:
        raise
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read panoptic PNG ({exc})") from None


def _field(obj: Any, key: str, where: str, path: Path) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise DatasetError(f"{path}: {where} lacks the field {key!r}")
    return obj[key]


class COCOPanopticDataset(SegmentationDataset):
    """COCO panoptic annotations as semantic labels (and optional instance maps).

    Args:
        root_json: The ``panoptic_<split>.json`` file.
        image_dir: Folder of the images (``images[].file_name``).
        panoptic_dir: Folder of the panoptic PNGs (``annotations[].file_name``).
        transform: The augmentation; None = normalisation only.
        return_instances: Add the ``"instances"`` index map to each sample.
        seed: Base seed of the per-item augmentation generators.
        limit: Keep only the first ``limit`` annotations (JSON order), or None for all.

    Samples follow the order of the JSON's ``annotations`` list; a sample's name is the image
    file stem.

    Raises:
        DatasetError: If the JSON is unreadable or malformed, has no annotations or more than
            255 categories, a segment has an unknown category id, an annotation's image id is not
            in ``images``, or an image / PNG file is missing.
        ValueError: If ``limit`` is not positive.
    """

    def __init__(
        self,
        root_json: str | Path,
        image_dir: str | Path,
        panoptic_dir: str | Path,
        transform: SegTransform | None = None,
        return_instances: bool = False,
        seed: int = 0,
        limit: int | None = None,
    ) -> None:
        super().__init__(transform=transform, return_instances=return_instances, seed=seed, limit=limit)
        self.root_json = Path(root_json)
        self.image_dir = Path(image_dir)
        self.panoptic_dir = Path(panoptic_dir)
        path = self.root_json
        try:
            with path.open(encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise DatasetError(f"{path}: COCO panoptic JSON not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DatasetError(f"{path}: cannot read COCO panoptic JSON ({exc})") from None
        for d, what in ((self.image_dir, "image"), (self.panoptic_dir, "panoptic PNG")):
            if not d.is_dir():
                raise DatasetError(f"{d}: {what} directory not found")

        categories = _field(data, "categories", "the top level", path)
        if not isinstance(categories, list) or not categories:
            raise DatasetError(f"{path}: 'categories' must be a non-empty list")
        if len(categories) > IGNORE_INDEX:
            raise DatasetError(f"{path}: {len(categories)} categories, at most {IGNORE_INDEX} supported")
        self._cat_to_train: dict[int, int] = {}
        names: list[str] = []
        things: set[int] = set()
        for t, cat in enumerate(categories):
            cid = int(_field(cat, "id", f"categories[{t}]", path))
            if cid in self._cat_to_train:
                raise DatasetError(f"{path}: category id {cid} listed twice")
            self._cat_to_train[cid] = t
            names.append(str(_field(cat, "name", f"categories[{t}]", path)))
            if int(cat.get("isthing", 0)):
                things.add(t)
        self._class_names = tuple(names)  # the JSON's categories, in order (133 for COCO panoptic)
        self.thing_train_ids: frozenset[int] = frozenset(things)
        self.category_ids: tuple[int, ...] = tuple(self._cat_to_train)

        images = _field(data, "images", "the top level", path)
        image_files: dict[int, str] = {}
        for k, im in enumerate(images):
            image_files[int(_field(im, "id", f"images[{k}]", path))] = str(
                _field(im, "file_name", f"images[{k}]", path)
            )

        annotations = _field(data, "annotations", "the top level", path)
        if not isinstance(annotations, list) or not annotations:
            raise DatasetError(f"{path}: 'annotations' must be a non-empty list")
        if limit is not None:
            annotations = annotations[:limit]
        self._entries: list[_Entry] = []
        for k, ann in enumerate(annotations):
            where = f"annotations[{k}]"
            image_id = int(_field(ann, "image_id", where, path))
            if image_id not in image_files:
                raise DatasetError(f"{path}: {where} refers to image id {image_id}, which is not in 'images'")
            segments: dict[int, _Segment] = {}
            for s, seg in enumerate(_field(ann, "segments_info", where, path)):
                sw = f"{where}.segments_info[{s}]"
                sid, cid = int(_field(seg, "id", sw, path)), int(_field(seg, "category_id", sw, path))
                if cid not in self._cat_to_train:
                    raise DatasetError(f"{path}: {sw} (segment {sid}) has unknown category id {cid}")
                if sid in segments or sid == 0:
                    raise DatasetError(f"{path}: {sw}: segment id {sid} is 0 (void) or repeated")
                t = self._cat_to_train[cid]
                segments[sid] = _Segment(t, t in things, bool(int(seg.get("iscrowd", 0))))
            image = self.image_dir / image_files[image_id]
            png = self.panoptic_dir / str(_field(ann, "file_name", where, path))
            for p, what in ((image, "image"), (png, "panoptic PNG")):
                if not p.is_file():
                    raise DatasetError(f"{p}: {what} file missing (listed in {path} {where})")
            self._entries.append(_Entry(image=image, png=png, segments=segments))
        self._names = tuple(e.image.stem for e in self._entries)

    def load(self, index: int, instances: bool = False) -> RawSample:
        """Decode image, train-id label and (optionally) instance map of sample ``index``.

        Raises:
            DatasetError: If a file is unreadable, the PNG size differs from the image's, or the
                PNG holds a segment id that is not in the annotation's ``segments_info``.
        """
        entry = self._entries[index]
        image = load_rgb(entry.image)
        ids = rgb_to_id(_load_panoptic_png(entry.png))
        check_same_size(image, ids, entry.image, entry.png)
        uniq, inverse = np.unique(ids, return_inverse=True)
        sem = np.full(uniq.shape, IGNORE_INDEX, dtype=np.uint8)
        inst = np.zeros(uniq.shape, dtype=np.int32)
        present: dict[int, int] = {}  # segment id -> position in uniq
        for pos, sid in enumerate(uniq.tolist()):
            if sid == 0:
                continue
            seg = entry.segments.get(sid)
            if seg is None:
                raise DatasetError(
                    f"{entry.png}: segment id {sid} (RGB {sid % 256},{sid // 256 % 256},{sid // 65536}) "
                    "is not in the annotation's segments_info"
                )
            if not seg.iscrowd:
                sem[pos] = seg.train_id
            present[sid] = pos
        label = sem[inverse].reshape(ids.shape)
        if not instances:
            return RawSample(image=image, label=label, name=self._names[index])
        classes: dict[int, int] = {}
        for sid, seg in entry.segments.items():  # segments_info order
            if seg.is_thing and not seg.iscrowd and sid in present:
                k = len(classes) + 1
                inst[present[sid]] = k
                classes[k] = seg.train_id
        return RawSample(
            image=image,
            label=label,
            name=self._names[index],
            instances=inst[inverse].reshape(ids.shape),
            instance_classes=classes,
        )
