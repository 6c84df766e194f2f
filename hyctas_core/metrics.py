"""Segmentation metrics that follow the official evaluation conventions.

* Semantic segmentation: a confusion matrix over ``num_classes`` classes with an ignore label,
  per-class IoU and mIoU as in the Cityscapes benchmark scripts (a class with neither
  ground-truth nor predicted pixels has IoU NaN and is left out of the mean; a class that only
  appears in the prediction has IoU 0 and counts). As there, a predicted value outside the
  evaluated classes (void, 255, an unevaluated label id) is a miss: a false negative of the
  pixel's ground-truth class and a false positive of none. :func:`evaluate_semseg_files` reads
  Cityscapes (``*_gtFine_labelIds.png``) or ADE20K (``ADEChallengeData2016``) ground truth and
  single-channel prediction PNGs of train ids or (Cityscapes, as the official server takes
  them) label ids.
* Panoptic segmentation: :func:`pq_compute` computes PQ / SQ / RQ with the matching rules of
  the COCO ``panopticapi`` (IoU > 0.5 within a category, prediction pixels on void excluded
  from the union, crowd regions neither matched nor counted as false negatives, unmatched
  predictions lying mostly on void or same-category crowd not counted as false positives).

Every malformed input raises :class:`MetricsError` with a one-line message naming the file.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import numpy as np
import numpy.typing as npt

from hyctas_core.data.labels import IGNORE_INDEX, NUM_CLASSES, TRAIN_ID_NAMES, VALID_IDS, id_to_train_id_lut

if TYPE_CHECKING:
    import torch

__all__ = [
    "ADE20K_CLASS_NAMES",
    "ConfusionMatrix",
    "MetricsError",
    "PQClassStat",
    "PQSummary",
    "PanopticCategory",
    "PanopticResult",
    "PRED_IDS",
    "PredIds",
    "SemsegDataset",
    "SemsegResult",
    "evaluate_semseg_files",
    "pq_compute",
]

SemsegDataset: TypeAlias = Literal["cityscapes", "ade20k"]
PredIds: TypeAlias = Literal["train", "label"]
PRED_IDS: tuple[str, ...] = ("train", "label")
ImageId: TypeAlias = int | str

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

_PANOPTIC_OFFSET = 256 * 256 * 256  # panoptic ids are 24-bit (RGB-encoded)
_VOID = 0


class MetricsError(ValueError):
    """Malformed metric input: wrong shapes or values, unreadable or inconsistent files."""


# ---------------------------------------------------------------------------------------------
# Confusion matrix / IoU
# ---------------------------------------------------------------------------------------------


def _as_int_array(x: npt.NDArray[Any] | torch.Tensor, what: str) -> npt.NDArray[Any]:
    """A numpy integer array from a numpy array or a torch tensor (no copy for numpy input)."""
    if isinstance(x, np.ndarray):
        arr = x
    else:
        torch_mod = sys.modules.get("torch")
        if torch_mod is None or not isinstance(x, torch_mod.Tensor):
            raise MetricsError(f"{what} must be a numpy array or a torch tensor, got {type(x).__name__}")
        arr = x.detach().cpu().numpy()
    if not np.issubdtype(arr.dtype, np.integer):
        raise MetricsError(f"{what} must hold integers (class indices), got dtype {arr.dtype}")
    return arr


def _out_of_range(values: npt.NDArray[Any], low: int, high: int) -> list[int]:
    """Up to five distinct values of ``values`` outside ``low..high`` (empty when all are inside)."""
    if values.size == 0 or (int(values.min()) >= low and int(values.max()) <= high):
        return []
    bad = np.unique(values[(values < low) | (values > high)])
    return [int(v) for v in bad[:5]]


class ConfusionMatrix:
    """Pixel confusion matrix ``[ground truth, prediction]`` for ``num_classes`` classes.

    Predicted values outside ``0..num_classes-1`` (void, ``255``, ...) are counted per
    ground-truth class in :attr:`misses`: each is a false negative of that class and a false
    positive of none, as in the official Cityscapes evaluation.

    Args:
        num_classes: Number of classes; valid labels are ``0..num_classes-1``.
        ignore_index: Ground-truth label whose pixels are not evaluated (must lie outside
            ``0..num_classes-1``).

    Raises:
        MetricsError: If ``num_classes < 1`` or ``ignore_index`` is a valid class index.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise MetricsError(f"num_classes must be a positive integer, got {num_classes!r}")
        if 0 <= ignore_index < num_classes:
            raise MetricsError(
                f"ignore_index {ignore_index} collides with a class index; use a value outside 0..{num_classes - 1}"
            )
        self._num_classes = num_classes
        self._ignore_index = ignore_index
        # The last column counts predictions outside the classes (misses).
        self._mat: npt.NDArray[np.int64] = np.zeros((num_classes, num_classes + 1), dtype=np.int64)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return self._num_classes

    @property
    def ignore_index(self) -> int:
        """Ground-truth label that is not evaluated."""
        return self._ignore_index

    @property
    def matrix(self) -> npt.NDArray[np.int64]:
        """A copy of the ``int64`` matrix, rows = ground truth, columns = prediction."""
        return self._mat[:, :-1].copy()

    @property
    def misses(self) -> npt.NDArray[np.int64]:
        """Per ground-truth class, the pixels predicted as a value outside the classes."""
        return self._mat[:, -1].copy()

    def update(self, pred: npt.NDArray[Any] | torch.Tensor, target: npt.NDArray[Any] | torch.Tensor) -> None:
        """Add one batch (any shape) of predicted and ground-truth labels.

        Args:
            pred: Predicted labels; a value outside ``0..num_classes-1`` is a miss.
            target: Ground-truth class indices of the same shape; ``ignore_index`` pixels are skipped.

        Raises:
            MetricsError: On a shape mismatch, a non-integer input, or a target value out of range.
        """
        p = _as_int_array(pred, "prediction")
        t = _as_int_array(target, "target")
        if p.shape != t.shape:
            raise MetricsError(f"prediction shape {tuple(p.shape)} differs from target shape {tuple(t.shape)}")
        n = self._num_classes
        p = p.reshape(-1)
        t = t.reshape(-1)
        keep = t != self._ignore_index
        if not keep.all():
            p, t = p[keep], t[keep]
        bad = _out_of_range(t, 0, n - 1)
        if bad:
            raise MetricsError(
                f"target holds value(s) {bad}; allowed are the classes 0..{n - 1} and ignore_index {self._ignore_index}"
            )
        p = p.astype(np.int64)
        p[(p < 0) | (p >= n)] = n  # the miss column
        idx = t.astype(np.int64) * (n + 1) + p
        self._mat += np.bincount(idx, minlength=n * (n + 1)).reshape(n, n + 1)

    def reset(self) -> None:
        """Set every count back to zero."""
        self._mat[...] = 0

    def merge(self, other: ConfusionMatrix) -> None:
        """Add the counts of ``other`` (e.g. from another worker) to this matrix.

        Args:
            other: A confusion matrix with the same ``num_classes`` and ``ignore_index``.

        Raises:
            MetricsError: If the two matrices are not compatible.
        """
        if other.num_classes != self._num_classes or other.ignore_index != self._ignore_index:
            raise MetricsError(
                f"cannot merge a confusion matrix with {other.num_classes} classes / ignore_index "
                f"{other.ignore_index} into one with {self._num_classes} classes / ignore_index {self._ignore_index}"
            )
        self._mat += other._mat

    def iou(self) -> npt.NDArray[np.float64]:
        """Per-class IoU ``tp / (tp + fp + fn)``; misses count in ``fn`` of their ground-truth class.

        Returns:
            A float array of length ``num_classes``; NaN for classes with neither
            ground-truth nor predicted pixels.
        """
        square = self._mat[:, :-1]
        tp = np.diag(square).astype(np.float64)
        union = square.sum(axis=0) + self._mat.sum(axis=1) - tp
        out = np.full(self._num_classes, np.nan, dtype=np.float64)
        np.divide(tp, union, out=out, where=union > 0)
        return out

    @property
    def miou(self) -> float:
        """Mean IoU over the classes present in ground truth or prediction (NaN if none)."""
        iou = self.iou()
        present = iou[~np.isnan(iou)]
        return float(present.mean()) if present.size else math.nan

    @property
    def pixel_accuracy(self) -> float:
        """Correct pixels / evaluated pixels, misses included (NaN before any pixel was evaluated)."""
        total = int(self._mat.sum())
        return float(np.trace(self._mat[:, :-1])) / total if total else math.nan

    def to_dict(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """A JSON-able summary; NaN values become ``None``.

        Args:
            class_names: One name per class (default ``class_<k>``).

        Returns:
            ``{"miou": float | None, "pixel_accuracy": float | None, "void_predictions": int,
            "per_class": {name: iou | None}}``; ``void_predictions`` counts the evaluated pixels
            predicted outside the classes (misses).

        Raises:
            MetricsError: If the number of names is not ``num_classes``.
        """
        names = list(class_names) if class_names is not None else [f"class_{k}" for k in range(self._num_classes)]
        if len(names) != self._num_classes:
            raise MetricsError(f"got {len(names)} class names for {self._num_classes} classes")
        return {
            "miou": _none_if_nan(self.miou),
            "pixel_accuracy": _none_if_nan(self.pixel_accuracy),
            "void_predictions": int(self._mat[:, -1].sum()),
            "per_class": {name: _none_if_nan(float(v)) for name, v in zip(names, self.iou(), strict=True)},
        }


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else value


def _one_line(err: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


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
