"""The confusion matrix of semantic segmentation: per-class IoU and mIoU as in the Cityscapes
benchmark scripts (a class with neither ground-truth nor predicted pixels has IoU NaN and is left
out of the mean; a class only in the prediction has IoU 0 and counts; a prediction outside the
evaluated classes is a miss)."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from hyctas_core.data.labels import IGNORE_INDEX

if TYPE_CHECKING:
    import torch

__all__ = ["ConfusionMatrix", "MetricsError"]


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
