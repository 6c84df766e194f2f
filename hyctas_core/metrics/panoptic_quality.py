"""Panoptic quality (PQ / SQ / RQ) of COCO-panoptic files, with the matching rules of the COCO
``panopticapi``: IoU > 0.5 within a category, prediction pixels on void excluded from the union,
crowd regions neither matched nor counted as false negatives, unmatched predictions lying mostly
on void or same-category crowd not counted as false positives."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    pass

from hyctas_core.metrics.confusion import MetricsError, _none_if_nan, _one_line

__all__ = ["PQClassStat", "PQSummary", "PanopticCategory", "PanopticResult", "pq_compute"]

ImageId: TypeAlias = int | str
_PANOPTIC_OFFSET = 256 * 256 * 256  # panoptic ids are 24-bit (RGB-encoded)
_VOID = 0


# ---------------------------------------------------------------------------------------------
# Panoptic quality (COCO panoptic format)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PanopticCategory:
    """A category of the ground-truth JSON."""

    id: int
    name: str
    isthing: bool


@dataclass
class PQClassStat:
    """Matching counts of one category, summed over images.

    Attributes:
        tp: Matched (ground truth, prediction) pairs.
        fp: Unmatched predicted segments (not mostly on void / same-category crowd).
        fn: Unmatched non-crowd ground-truth segments.
        iou_sum: Sum of the IoUs of the matched pairs.
    """

    tp: int = 0
    fp: int = 0
    fn: int = 0
    iou_sum: float = 0.0

    @property
    def counted(self) -> bool:
        """Whether the category takes part in the averages (``tp + fp + fn > 0``)."""
        return self.tp + self.fp + self.fn > 0

    @property
    def pq(self) -> float:
        """Panoptic quality ``iou_sum / (tp + fp/2 + fn/2)`` (NaN when not counted)."""
        return self.iou_sum / (self.tp + 0.5 * self.fp + 0.5 * self.fn) if self.counted else math.nan

    @property
    def sq(self) -> float:
        """Segmentation quality ``iou_sum / tp`` (0 without matches, NaN when not counted)."""
        if not self.counted:
            return math.nan
        return self.iou_sum / self.tp if self.tp else 0.0

    @property
    def rq(self) -> float:
        """Recognition quality ``tp / (tp + fp/2 + fn/2)`` (NaN when not counted)."""
        return self.tp / (self.tp + 0.5 * self.fp + 0.5 * self.fn) if self.counted else math.nan


@dataclass(frozen=True)
class PQSummary:
    """PQ / SQ / RQ averaged over ``n`` categories (NaN values when ``n == 0``)."""

    pq: float
    sq: float
    rq: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict ``{"pq", "sq", "rq", "n"}``; NaN becomes ``None``.

        Returns:
            The summary as a dict.
        """
        return {"pq": _none_if_nan(self.pq), "sq": _none_if_nan(self.sq), "rq": _none_if_nan(self.rq), "n": self.n}


@dataclass
class PanopticResult:
    """The outcome of :func:`pq_compute`.

    Attributes:
        categories: The ground-truth categories by id.
        per_class: Matching counts by category id (every category has an entry).
        num_images: Number of evaluated images.
    """

    categories: dict[int, PanopticCategory]
    per_class: dict[int, PQClassStat]
    num_images: int = 0

    def summary(self, isthing: bool | None = None) -> PQSummary:
        """Average PQ / SQ / RQ over the categories with ``tp + fp + fn > 0``.

        Args:
            isthing: ``None`` for all categories, ``True`` for things, ``False`` for stuff.

        Returns:
            The average and the number ``n`` of averaged categories.
        """
        stats = [
            self.per_class[cid]
            for cid, cat in self.categories.items()
            if (isthing is None or cat.isthing == isthing) and self.per_class[cid].counted
        ]
        if not stats:
            return PQSummary(math.nan, math.nan, math.nan, 0)
        n = len(stats)
        return PQSummary(
            pq=sum(s.pq for s in stats) / n, sq=sum(s.sq for s in stats) / n, rq=sum(s.rq for s in stats) / n, n=n
        )

    @property
    def all(self) -> PQSummary:
        """Average over all categories."""
        return self.summary(None)

    @property
    def things(self) -> PQSummary:
        """Average over the thing categories."""
        return self.summary(True)

    @property
    def stuff(self) -> PQSummary:
        """Average over the stuff categories."""
        return self.summary(False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary.

        Returns:
            ``{"num_images", "all", "things", "stuff", "per_class": {name: {"pq", "sq", "rq", "tp",
            "fp", "fn", "isthing"}}}``; values of categories without segments are ``None``.
        """
        per_class: dict[str, Any] = {}
        for cid, cat in self.categories.items():
            s = self.per_class[cid]
            per_class[cat.name] = {
                "pq": _none_if_nan(s.pq),
                "sq": _none_if_nan(s.sq),
                "rq": _none_if_nan(s.rq),
                "tp": s.tp,
                "fp": s.fp,
                "fn": s.fn,
                "isthing": cat.isthing,
            }
        return {
            "num_images": self.num_images,
            "all": self.all.to_dict(),
            "things": self.things.to_dict(),
            "stuff": self.stuff.to_dict(),
            "per_class": per_class,
        }


@dataclass(frozen=True)
class _Segment:
    id: int
    category_id: int
    iscrowd: bool


@dataclass
class _Annotation:
    image_id: ImageId
    file_name: str
    segments: dict[int, _Segment] = field(default_factory=dict)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _load_json(path: Path, role: str) -> dict[str, Any]:
    if not path.is_file():
        raise MetricsError(f"{role} JSON {str(path)!r} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise MetricsError(f"cannot read {role} JSON {str(path)!r}: {_one_line(e)}") from e
    except json.JSONDecodeError as e:
        raise MetricsError(f"{role} JSON {str(path)!r} is not valid JSON: {_one_line(e)}") from e
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise MetricsError(f"{role} JSON {str(path)!r} must be an object with an 'annotations' list")
    return data


def _parse_categories(data: dict[str, Any], path: Path) -> dict[int, PanopticCategory]:
    raw = data.get("categories")
    if not isinstance(raw, list) or not raw:
        raise MetricsError(f"ground-truth JSON {str(path)!r} needs a non-empty 'categories' list")
    cats: dict[int, PanopticCategory] = {}
    names: set[str] = set()
    for c in raw:
        if not isinstance(c, dict) or not _is_int(c.get("id")) or c.get("isthing") not in (0, 1, True, False):
            raise MetricsError(
                f"ground-truth JSON {str(path)!r}: category {c!r} needs an integer 'id' and 'isthing' 0 or 1"
            )
        cid = int(c["id"])
        name = str(c.get("name", f"category_{cid}"))
        if cid in cats:
            raise MetricsError(f"ground-truth JSON {str(path)!r}: category id {cid} is listed twice")
        if name in names:
            raise MetricsError(f"ground-truth JSON {str(path)!r}: category name {name!r} is used twice")
        names.add(name)
        cats[cid] = PanopticCategory(cid, name, bool(c["isthing"]))
    return cats


def _parse_annotations(
    data: dict[str, Any], path: Path, role: str, categories: dict[int, PanopticCategory]
) -> dict[ImageId, _Annotation]:
    anns: dict[ImageId, _Annotation] = {}
    for a in data["annotations"]:
        if (
            not isinstance(a, dict)
            or not isinstance(a.get("image_id"), int | str)
            or isinstance(a.get("image_id"), bool)
            or not isinstance(a.get("file_name"), str)
            or not isinstance(a.get("segments_info"), list)
        ):
            raise MetricsError(
                f"{role} JSON {str(path)!r}: every annotation needs 'image_id', 'file_name' and a 'segments_info' list"
            )
        image_id: ImageId = a["image_id"]
        if image_id in anns:
            raise MetricsError(f"{role} JSON {str(path)!r}: image {image_id!r} is annotated twice (duplicated image)")
        ann = _Annotation(image_id, a["file_name"])
        for s in a["segments_info"]:
            if not isinstance(s, dict) or not _is_int(s.get("id")) or not _is_int(s.get("category_id")):
                raise MetricsError(
                    f"{role} JSON {str(path)!r}: image {image_id!r} has a segment without integer 'id' and "
                    f"'category_id': {s!r}"
                )
            sid, cid = int(s["id"]), int(s["category_id"])
            if not 0 < sid < _PANOPTIC_OFFSET:
                raise MetricsError(
                    f"{role} JSON {str(path)!r}: image {image_id!r} has segment id {sid}; "
                    f"allowed are 1..{_PANOPTIC_OFFSET - 1} (0 is void)"
                )
            if sid in ann.segments:
                raise MetricsError(f"{role} JSON {str(path)!r}: image {image_id!r} lists segment id {sid} twice")
            if cid not in categories:
                raise MetricsError(
                    f"{role} JSON {str(path)!r}: image {image_id!r} segment {sid} has unknown category_id {cid} "
                    f"(not among the {len(categories)} categories of the ground-truth JSON)"
                )
            ann.segments[sid] = _Segment(sid, cid, s.get("iscrowd", 0) in (1, True))
        anns[image_id] = ann
    return anns


def _panoptic_ids(path: Path, role: str) -> npt.NDArray[np.uint32]:
    """The segment-id map of an RGB-encoded panoptic PNG (id = R + 256 G + 256^2 B)."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise MetricsError(f"{role} PNG {str(path)!r} does not exist")
    try:
        with Image.open(path) as img:
            mode = img.mode
            rgb = np.asarray(img.convert("RGB"), dtype=np.uint32) if mode in ("RGB", "RGBA") else None
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise MetricsError(f"cannot read {role} PNG {str(path)!r}: {_one_line(e)}") from e
    if rgb is None:
        raise MetricsError(f"{role} PNG {str(path)!r} has mode {mode}; expected an RGB-encoded panoptic PNG")
    ids: npt.NDArray[np.uint32] = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
    return ids


def _segment_areas(ids: npt.NDArray[np.uint32], ann: _Annotation, png: Path, role: str) -> dict[int, int]:
    """Pixel count per listed segment; checks that PNG and ``segments_info`` agree."""
    labels, counts = np.unique(ids, return_counts=True)
    areas = {int(k): int(c) for k, c in zip(labels, counts, strict=True)}
    for sid in areas:
        if sid != _VOID and sid not in ann.segments:
            raise MetricsError(
                f"{role} image {ann.image_id!r} ({str(png)!r}): segment id {sid} is in the PNG but not in segments_info"
            )
    for sid in ann.segments:
        if sid not in areas:
            raise MetricsError(
                f"{role} image {ann.image_id!r} ({str(png)!r}): segment id {sid} is in segments_info but not in the PNG"
            )
    return areas


def _match_image(
    gt_ids: npt.NDArray[np.uint32],
    gt_ann: _Annotation,
    gt_areas: dict[int, int],
    pred_ids: npt.NDArray[np.uint32],
    pred_ann: _Annotation,
    pred_areas: dict[int, int],
    stats: dict[int, PQClassStat],
) -> None:
    """Add the TP / FP / FN / IoU of one image to ``stats`` (panopticapi matching rules)."""
    joint = gt_ids.astype(np.uint64) * np.uint64(_PANOPTIC_OFFSET) + pred_ids.astype(np.uint64)
    labels, counts = np.unique(joint, return_counts=True)
    inter: dict[tuple[int, int], int] = {
        (int(k) // _PANOPTIC_OFFSET, int(k) % _PANOPTIC_OFFSET): int(c) for k, c in zip(labels, counts, strict=True)
    }
    gt_segs, pred_segs = gt_ann.segments, pred_ann.segments
    gt_matched: set[int] = set()
    pred_matched: set[int] = set()
    for (g, p), n in inter.items():
        if g == _VOID or p == _VOID:
            continue
        gs, ps = gt_segs[g], pred_segs[p]
        if gs.iscrowd or gs.category_id != ps.category_id:
            continue
        # prediction pixels on void ground truth count neither for nor against the pair
        union = pred_areas[p] + gt_areas[g] - n - inter.get((_VOID, p), 0)
        iou = n / union
        if iou > 0.5:  # IoU > 0.5 makes the matching unique
            stats[gs.category_id].tp += 1
            stats[gs.category_id].iou_sum += iou
            gt_matched.add(g)
            pred_matched.add(p)
    crowd_by_cat: dict[int, list[int]] = {}
    for g, gs in gt_segs.items():
        if gs.iscrowd:
            crowd_by_cat.setdefault(gs.category_id, []).append(g)
        elif g not in gt_matched:
            stats[gs.category_id].fn += 1
    for p, ps in pred_segs.items():
        if p in pred_matched:
            continue
        ignored = inter.get((_VOID, p), 0) + sum(inter.get((g, p), 0) for g in crowd_by_cat.get(ps.category_id, []))
        if ignored / pred_areas[p] > 0.5:  # mostly on void / same-category crowd: not a false positive
            continue
        stats[ps.category_id].fp += 1


def pq_compute(gt_json: Path, gt_folder: Path, pred_json: Path, pred_folder: Path) -> PanopticResult:
    """Panoptic quality of COCO-panoptic predictions, with the panopticapi matching rules.

    Both sides use the COCO panoptic format: a JSON with ``annotations`` (``image_id``,
    ``file_name``, ``segments_info`` of ``id`` / ``category_id`` / ``iscrowd``) and a folder of
    RGB-encoded PNGs (id = R + 256 G + 256^2 B, 0 = void). Categories come from the ground-truth
    JSON. Images are paired by ``image_id``; predictions for images absent from the ground truth
    are ignored. Segment areas are counted in the PNGs (JSON ``area`` fields are not used).
    Where an image has several crowd regions of one category, an unmatched prediction's overlap
    with all of them counts.

    Args:
        gt_json: Ground-truth JSON (with ``categories``).
        gt_folder: Folder of ground-truth PNGs.
        pred_json: Prediction JSON (``categories`` optional, ignored).
        pred_folder: Folder of prediction PNGs.

    Returns:
        Per-category TP / FP / FN / IoU sums and All / Things / Stuff averages.

    Raises:
        MetricsError: On a missing or malformed JSON / PNG / folder, an unknown category, a
            duplicated image, an image without prediction, a size mismatch, or a disagreement
            between a PNG and its ``segments_info``.
    """
    gt_data = _load_json(gt_json, "ground-truth")
    pred_data = _load_json(pred_json, "prediction")
    for folder, role in ((gt_folder, "ground-truth"), (pred_folder, "prediction")):
        if not folder.is_dir():
            raise MetricsError(f"{role} folder {str(folder)!r} does not exist")
    categories = _parse_categories(gt_data, gt_json)
    gt_anns = _parse_annotations(gt_data, gt_json, "ground-truth", categories)
    pred_anns = _parse_annotations(pred_data, pred_json, "prediction", categories)
    if not gt_anns:
        raise MetricsError(f"ground-truth JSON {str(gt_json)!r} has no annotations")
    for image_id in gt_anns:
        if image_id not in pred_anns:
            raise MetricsError(f"image {image_id!r} of the ground truth has no prediction in {str(pred_json)!r}")
    stats = {cid: PQClassStat() for cid in categories}
    for image_id, gt_ann in gt_anns.items():
        pred_ann = pred_anns[image_id]
        gt_png, pred_png = gt_folder / gt_ann.file_name, pred_folder / pred_ann.file_name
        gt_ids = _panoptic_ids(gt_png, "ground-truth")
        pred_ids = _panoptic_ids(pred_png, "prediction")
        if gt_ids.shape != pred_ids.shape:
            raise MetricsError(
                f"size mismatch for image {image_id!r}: ground truth {str(gt_png)!r} is "
                f"{gt_ids.shape[0]}x{gt_ids.shape[1]} (HxW) but prediction {str(pred_png)!r} is "
                f"{pred_ids.shape[0]}x{pred_ids.shape[1]}"
            )
        gt_areas = _segment_areas(gt_ids, gt_ann, gt_png, "ground-truth")
        pred_areas = _segment_areas(pred_ids, pred_ann, pred_png, "prediction")
        _match_image(gt_ids, gt_ann, gt_areas, pred_ids, pred_ann, pred_areas, stats)
    return PanopticResult(categories=categories, per_class=stats, num_images=len(gt_anns))
