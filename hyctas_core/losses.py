"""Segmentation losses with hard-pixel mining.

- ``TopKCrossEntropy``: DeepLab-style, keep the ``top_k`` fraction of largest pixel losses
  (official HyCTAS ``DeepLabCE``, top 20 %).
- ``OhemCrossEntropy``: keep pixels whose true-class probability is below ``thresh``, at
  least ``min_kept`` of them (FasterSeg's supernet loss, threshold 0.7).

Each can weight pixels by their class (:func:`log_class_weights`, ENet's ``1 / ln(c + p)``):
rare classes count more, so a short training does not leave them unlearnt.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CLASS_WEIGHTINGS",
    "LOSSES",
    "ClassWeighting",
    "OhemCrossEntropy",
    "TopKCrossEntropy",
    "build_loss",
    "log_class_weights",
]


class TopKCrossEntropy(nn.Module):
    """Mean of the ``top_k`` fraction of the largest per-pixel cross-entropies."""

    def __init__(self, top_k: float = 0.2, ignore_index: int = 255, class_weights: torch.Tensor | None = None) -> None:
        super().__init__()
        if not 0 < top_k <= 1:
            raise ValueError(f"top_k must be in (0, 1], got {top_k}")
        self.top_k, self.ignore_index = top_k, ignore_index
        self.class_weights: torch.Tensor | None
        self.register_buffer("class_weights", class_weights)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """``weights`` (same shape as ``target``) scale each pixel's loss before the ranking
        (after the class weights, if any)."""
        pixel = F.cross_entropy(
            logits, target, weight=self.class_weights, ignore_index=self.ignore_index, reduction="none"
        )
        if weights is not None:
            pixel = pixel * weights  # official DeepLabCE: weighted, then ranked
        pixel = pixel.flatten()
        if self.top_k < 1:
            k = max(1, int(self.top_k * pixel.numel()))
            pixel = pixel.topk(k).values
        return pixel.mean()


class OhemCrossEntropy(nn.Module):
    """Cross-entropy over hard pixels: true-class probability < ``thresh``, at least ``min_kept``."""

    def __init__(
        self,
        thresh: float = 0.7,
        min_kept: int = 10_000,
        ignore_index: int = 255,
        class_weights: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.thresh, self.min_kept, self.ignore_index = thresh, min_kept, ignore_index
        self.class_weights: torch.Tensor | None
        self.register_buffer("class_weights", class_weights)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pixel = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="none").flatten()
        valid = target.flatten() != self.ignore_index
        n_valid = int(valid.sum())
        if n_valid == 0:
            return pixel.sum() * 0.0
        with torch.no_grad():
            prob = torch.exp(-pixel[valid])  # probability of the true class
            threshold = self.thresh
            k = min(n_valid, self.min_kept)
            if k > 0:
                kth = prob.kthvalue(k).values.item()
                threshold = max(threshold, kth)
            keep = prob <= threshold
        kept = pixel[valid][keep]
        if self.class_weights is None:
            return kept.mean()
        w = self.class_weights[target.flatten()[valid][keep]]  # hard pixels chosen unweighted
        return (kept * w).sum() / w.sum()


# The losses build_loss knows (training configs check their ``loss`` against this).
LOSSES: tuple[str, ...] = ("topk", "ohem", "ce")


# How a training config weights the classes: "none", or "log" (:func:`log_class_weights`).
ClassWeighting = Literal["none", "log"]
CLASS_WEIGHTINGS: tuple[ClassWeighting, ...] = get_args(ClassWeighting)


def log_class_weights(frequencies: np.ndarray, c: float = 1.1) -> torch.Tensor:
    """ENet's class weights ``1 / ln(c + p)`` for class shares ``p`` (Paszke et al., 2016).

    A class's weight is bounded by ``1 / ln(c)`` however rare it is (ENet: ``c`` = 1.02, a
    ratio of up to ~50 between classes; ``c`` = 1.1 bounds it near 10). The weights are scaled
    so that the mean weight of a pixel, ``sum(p * w)``, is 1: the loss keeps the magnitude of
    the unweighted one, and so does the step size.

    Raises:
        ValueError: if ``c`` is not above 1 or ``frequencies`` is not a distribution.
    """
    p = np.asarray(frequencies, np.float64)
    if c <= 1.0:
        raise ValueError(f"class weight constant c must be > 1, got {c}")
    if p.ndim != 1 or (p < 0).any() or not np.isclose(p.sum(), 1.0):
        raise ValueError("class frequencies must be a 1-D distribution (non-negative, summing to 1)")
    w = 1.0 / np.log(c + p)
    return torch.tensor(w / float((p * w).sum()), dtype=torch.float32)


def build_loss(
    name: str,
    *,
    ignore_index: int = 255,
    top_k: float = 0.2,
    ohem_thresh: float = 0.7,
    class_weights: torch.Tensor | None = None,
) -> nn.Module:
    """``"topk"``, ``"ohem"`` or ``"ce"`` (plain cross-entropy), each with optional per-class weights."""
    if name == "topk":
        return TopKCrossEntropy(top_k, ignore_index, class_weights=class_weights)
    if name == "ohem":
        return OhemCrossEntropy(ohem_thresh, ignore_index=ignore_index, class_weights=class_weights)
    if name == "ce":
        return nn.CrossEntropyLoss(weight=class_weights, ignore_index=ignore_index)
    raise ValueError(f"unknown loss {name!r}; choose {', '.join(LOSSES)}")
