"""Semantic segmentation scored from files: Cityscapes (``*_gtFine_labelIds.png``) or ADE20K
(``ADEChallengeData2016``) ground truth against single-channel prediction PNGs of train ids or
(Cityscapes, as the official server takes them) label ids."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import numpy as np
import numpy.typing as npt

from hyctas_core.data.labels import IGNORE_INDEX, NUM_CLASSES, TRAIN_ID_NAMES, VALID_IDS, id_to_train_id_lut

if TYPE_CHECKING:
    pass

from hyctas_core.metrics.confusion import ConfusionMatrix, MetricsError, _one_line, _out_of_range

__all__ = ["ADE20K_CLASS_NAMES", "PRED_IDS", "PredIds", "SemsegDataset", "SemsegResult", "evaluate_semseg_files"]

SemsegDataset: TypeAlias = Literal["cityscapes", "ade20k"]
PredIds: TypeAlias = Literal["train", "label"]
PRED_IDS: tuple[str, ...] = ("train", "label")
ADE20K_NUM_CLASSES = 150

# The first name of each of the 150 SceneParsing classes (objectInfo150.txt, index = label - 1).
ADE20K_CLASS_NAMES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine",
    "hovel",
    "bus", "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool",
    "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball",
    "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher",
    "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Semantic segmentation from files (Cityscapes / ADE20K)
# ---------------------------------------------------------------------------------------------


@dataclass
class SemsegResult:
    """The outcome of :func:`evaluate_semseg_files`.

    Attributes:
        dataset: ``"cityscapes"`` or ``"ade20k"``.
        confusion: The accumulated confusion matrix.
        class_names: One name per class.
        num_images: Number of evaluated (ground truth, prediction) pairs.
    """

    dataset: str
    confusion: ConfusionMatrix
    class_names: tuple[str, ...]
    num_images: int

    @property
    def miou(self) -> float:
        """Mean IoU (Cityscapes convention, see :attr:`ConfusionMatrix.miou`)."""
        return self.confusion.miou

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary.

        Returns:
            ``{"dataset", "num_images", "miou", "pixel_accuracy", "per_class": {name: iou | None}}``.
        """
        return {"dataset": self.dataset, "num_images": self.num_images, **self.confusion.to_dict(self.class_names)}


def _png_label_map(path: Path, role: str) -> npt.NDArray[Any]:
    """A single-channel integer PNG as a 2-D array."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            mode = img.mode
            arr = np.array(img)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise MetricsError(f"cannot read {role} {str(path)!r}: {_one_line(e)}") from e
    if arr.ndim != 2:
        channels = arr.shape[2] if arr.ndim == 3 else arr.ndim
        raise MetricsError(
            f"{role} {str(path)!r} has {channels} channels (mode {mode}); expected a single-channel PNG of labels"
        )
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise MetricsError(f"{role} {str(path)!r} has non-integer pixels (mode {mode}); expected a PNG of labels")
    return arr


def _expand(paths: Sequence[Path], role: str, accept: Callable[[Path], bool], pattern: str) -> list[Path]:
    """Files of ``paths``, directories expanded recursively to accepted ``*.png`` files."""
    if not paths:
        raise MetricsError(f"no {role} paths given")
    out: list[Path] = []
    seen: set[Path] = set()
    for p in paths:
        if not p.exists():
            raise MetricsError(f"{role} path {str(p)!r} does not exist")
        if p.is_dir():
            found = sorted(f for f in p.rglob("*.png") if f.is_file() and accept(f))
        else:
            if not accept(p):
                raise MetricsError(f"{role} file {str(p)!r} is not a {pattern} file")
            found = [p]
        for f in found:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                out.append(f)
    if not out:
        shown = ", ".join(repr(str(p)) for p in paths)
        raise MetricsError(f"no {role} files ({pattern}) found in {shown}")
    return out


_ADE_STEM = re.compile(r"^(ADE_[A-Za-z]+_\d+)")


def _pair_key(dataset: SemsegDataset, path: Path, role: str) -> str:
    """The pairing key: Cityscapes frame prefix ``<city>_<seq>_<frame>`` or ADE20K image stem."""
    if dataset == "cityscapes":
        fields = path.name.removesuffix(path.suffix).split("_")
        if len(fields) < 3 or not all(fields[:3]):
            raise MetricsError(
                f"cannot pair {role} {str(path)!r}: the name must start with <city>_<seq>_<frame>_, "
                "e.g. frankfurt_000000_000294_pred.png"
            )
        return "_".join(fields[:3])
    m = _ADE_STEM.match(path.name)
    return m.group(1) if m else path.name.removesuffix(".png")


def _pair(dataset: SemsegDataset, gt_files: list[Path], pred_files: list[Path]) -> list[tuple[Path, Path]]:
    """(ground truth, prediction) pairs; every ground truth must have exactly one prediction."""
    preds: dict[str, Path] = {}
    for f in pred_files:
        key = _pair_key(dataset, f, "prediction")
        if key in preds:
            raise MetricsError(f"predictions {str(preds[key])!r} and {str(f)!r} are both for image {key!r}")
        preds[key] = f
    gts: dict[str, Path] = {}
    for f in gt_files:
        key = _pair_key(dataset, f, "ground truth")
        if key in gts:
            raise MetricsError(f"ground-truth files {str(gts[key])!r} and {str(f)!r} are both for image {key!r}")
        gts[key] = f
    rule = "<city>_<seq>_<frame> prefix" if dataset == "cityscapes" else "file stem, e.g. ADE_val_00000001"
    pairs = [(g, preds[k]) for k, g in gts.items() if k in preds]
    if not pairs:
        raise MetricsError(
            f"no pairs found: none of the {len(pred_files)} prediction PNG(s) matches any of the "
            f"{len(gt_files)} ground-truth file(s) (paired by {rule})"
        )
    missing = [g for k, g in gts.items() if k not in preds]
    if missing:
        raise MetricsError(
            f"ground truth {str(missing[0])!r} has no prediction ({len(missing)} of {len(gt_files)} "
            f"ground-truth file(s) unmatched; paired by {rule})"
        )
    return pairs


def _cityscapes_gt(path: Path, lut: npt.NDArray[np.uint8]) -> npt.NDArray[Any]:
    ids = _png_label_map(path, "ground truth")
    valid = np.zeros(256, dtype=bool)
    valid[sorted(VALID_IDS)] = True
    if int(ids.min()) < 0 or int(ids.max()) > 255 or not valid[ids].all():
        bad = [int(v) for v in np.unique(ids[~np.isin(ids, sorted(VALID_IDS))])[:5]]
        raise MetricsError(
            f"ground truth {str(path)!r} holds label id(s) {bad}; Cityscapes label ids are "
            f"{min(VALID_IDS)}..{max(VALID_IDS)} (expected a *_gtFine_labelIds.png)"
        )
    train_ids: npt.NDArray[np.uint8] = lut[ids]
    return train_ids


def _ade_gt(path: Path) -> npt.NDArray[Any]:
    raw = _png_label_map(path, "ground truth")
    bad = _out_of_range(raw, 0, ADE20K_NUM_CLASSES)
    if bad:
        raise MetricsError(
            f"ground truth {str(path)!r} holds value(s) {bad}; ADE20K annotations are 0 (ignored) "
            f"and 1..{ADE20K_NUM_CLASSES}"
        )
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    lut[1 : ADE20K_NUM_CLASSES + 1] = np.arange(ADE20K_NUM_CLASSES, dtype=np.uint8)
    mapped: npt.NDArray[np.uint8] = lut[raw]
    return mapped


def _pred_to_train_ids(dataset: SemsegDataset, pred: npt.NDArray[Any], lut: npt.NDArray[np.uint8]) -> npt.NDArray[Any]:
    """Official submission encoding to train ids; anything unevaluated becomes a miss (IGNORE_INDEX)."""
    p = pred.astype(np.int64)
    if dataset == "cityscapes":  # label ids 0..33 (unevaluated ones map to IGNORE_INDEX)
        inside = (p >= 0) & (p < lut.size)
        return np.where(inside, lut[np.clip(p, 0, lut.size - 1)], IGNORE_INDEX)
    return np.where((p >= 1) & (p <= ADE20K_NUM_CLASSES), p - 1, IGNORE_INDEX)  # ADE20K: 1..150, 0 = other


def evaluate_semseg_files(
    dataset: SemsegDataset, gt: Sequence[Path], pred: Sequence[Path], pred_ids: PredIds = "train"
) -> SemsegResult:
    """Per-class IoU / mIoU of prediction PNGs against Cityscapes or ADE20K ground truth.

    Cityscapes: ground truth is ``*_gtFine_labelIds.png`` (label ids, mapped to the 19 train
    ids; unevaluated ids become ignore), paired with predictions by the frame prefix
    ``<city>_<seq>_<frame>``. ADE20K: ground truth PNGs hold 0 (ignored) and 1..150 (mapped to
    0..149), paired by the stem ``ADE_<split>_<number>`` (any suffix after it, such as
    ``_pred``, is ignored).

    Predictions are single-channel PNGs (8 or 16 bit, grey or palette) of train ids
    (``pred_ids="train"``: Cityscapes 0..18, ADE20K 0..149) or of the official submission
    encoding (``"label"``: Cityscapes label ids 0..33, ADE20K 1..150). As in the official
    evaluations, any other value (255, void, an unevaluated label id, ADE20K's 0) is accepted
    and counted as a miss: a false negative of the pixel's ground-truth class.

    Args:
        dataset: ``"cityscapes"`` or ``"ade20k"``.
        gt: Ground-truth files or directories (searched recursively).
        pred: Prediction files or directories (searched recursively for ``*.png``).
        pred_ids: ``"train"`` or ``"label"``, the encoding of the predictions.

    Returns:
        The accumulated result over all pairs.

    Raises:
        MetricsError: On an unknown dataset or encoding, a missing path, no or incomplete pairs,
            unreadable or multi-channel PNGs, a size mismatch, or a ground-truth label out of range.
    """
    if pred_ids not in PRED_IDS:
        raise MetricsError(f"unknown prediction encoding {pred_ids!r}; choose train or label")
    if dataset == "cityscapes":
        num_classes, names = NUM_CLASSES, TRAIN_ID_NAMES
        gt_pattern = "*_gtFine_labelIds.png"

        def gt_accept(f: Path) -> bool:
            return f.name.endswith("_gtFine_labelIds.png")

    elif dataset == "ade20k":
        num_classes, names = ADE20K_NUM_CLASSES, ADE20K_CLASS_NAMES
        gt_pattern = "*.png"

        def gt_accept(f: Path) -> bool:
            return f.suffix.lower() == ".png"

    else:
        raise MetricsError(f"unknown dataset {dataset!r}; choose cityscapes or ade20k")

    gt_files = _expand(gt, "ground truth", gt_accept, gt_pattern)
    pred_files = _expand(pred, "prediction", lambda f: f.suffix.lower() == ".png", "*.png")
    pairs = _pair(dataset, gt_files, pred_files)
    cm = ConfusionMatrix(num_classes, IGNORE_INDEX)
    lut = id_to_train_id_lut()
    for gt_path, pred_path in pairs:
        target = _cityscapes_gt(gt_path, lut) if dataset == "cityscapes" else _ade_gt(gt_path)
        p = _png_label_map(pred_path, "prediction")
        if p.shape != target.shape:
            raise MetricsError(
                f"size mismatch: ground truth {str(gt_path)!r} is {target.shape[0]}x{target.shape[1]} (HxW) "
                f"but prediction {str(pred_path)!r} is {p.shape[0]}x{p.shape[1]}"
            )
        if pred_ids == "label":
            p = _pred_to_train_ids(dataset, p, lut)
        cm.update(p, target)
    return SemsegResult(dataset=dataset, confusion=cm, class_names=tuple(names), num_images=len(pairs))
