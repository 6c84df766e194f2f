"""Segmentation losses with hard-pixel mining.

- ``TopKCrossEntropy``: DeepLab-style, keep the ``top_k`` fraction of largest pixel losses
  (official HyCTAS ``DeepLabCE``, top 20 %).
- ``OhemCrossEntropy``: keep pixels whose true-class probability is below ``thresh``, at
  least ``min_kept`` of them (FasterSeg's supernet loss, threshold 0.7).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LOSSES", "OhemCrossEntropy", "TopKCrossEntropy", "build_loss"]


class TopKCrossEntropy(nn.Module):
    """Mean of the ``top_k`` fraction of the largest per-pixel cross-entropies."""

    def __init__(self, top_k: float = 0.2, ignore_index: int = 255) -> None:
        super().__init__()
        if not 0 < top_k <= 1:
            raise ValueError(f"top_k must be in (0, 1], got {top_k}")
        self.top_k, self.ignore_index = top_k, ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """``weights`` (same shape as ``target``) scale each pixel's loss before the ranking."""
        pixel = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="none")
        if weights is not None:
            pixel = pixel * weights  # official DeepLabCE: weighted, then ranked
        pixel = pixel.flatten()
        if self.top_k < 1:
            k = max(1, int(self.top_k * pixel.numel()))
            pixel = pixel.topk(k).values
        return pixel.mean()


class OhemCrossEntropy(nn.Module):
    """Cross-entropy over hard pixels: true-class probability < ``thresh``, at least ``min_kept``."""

    def __init__(self, thresh: float = 0.7, min_kept: int = 10_000, ignore_index: int = 255) -> None:
        super().__init__()
        self.thresh, self.min_kept, self.ignore_index = thresh, min_kept, ignore_index

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
        return pixel[valid][keep].mean()


# The losses build_loss knows (training configs check their ``loss`` against this).
LOSSES: tuple[str, ...] = ("topk", "ohem", "ce")


def build_loss(name: str, *, ignore_index: int = 255, top_k: float = 0.2, ohem_thresh: float = 0.7) -> nn.Module:
    """``"topk"``, ``"ohem"`` or ``"ce"`` (plain cross-entropy)."""
    if name == "topk":
        return TopKCrossEntropy(top_k, ignore_index)
    if name == "ohem":
        return OhemCrossEntropy(ohem_thresh, ignore_index=ignore_index)
    if name == "ce":
        return nn.CrossEntropyLoss(ignore_index=ignore_index)
    raise ValueError(f"unknown loss {name!r}; choose {', '.join(LOSSES)}")
