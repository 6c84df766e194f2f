"""The panoptic training loss: weighted top-k cross-entropy, centre MSE and offset L1.

``total = semantic + center_weight * center + offset_weight * offset`` (official HyCTAS and
Panoptic-DeepLab: 1, 200, 0.01). The centre and offset terms are means over the pixels their
weight maps keep (a batch that keeps none contributes 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hyctas_core.config import PanopticConfig
from hyctas_core.losses import TopKCrossEntropy

__all__ = ["PanopticLoss"]


def _masked_mean(pixel: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum(pixel * weights) / sum(weights)`` over the batch; ``pixel`` (B, C, H, W), weights (B, H, W)."""
    total = weights.sum()
    weighted = (pixel * weights.unsqueeze(1)).sum()
    return weighted / total if total > 0 else weighted * 0.0


class PanopticLoss(nn.Module):
    """Semantic + centre + offset loss of a network with a panoptic head.

    Args:
        cfg: the loss weights (``center_weight``, ``offset_weight``).
        top_k: fraction of the largest weighted pixel cross-entropies kept (1 = all pixels).
        ignore_index: the ignored label.
    """

    def __init__(self, cfg: PanopticConfig, *, top_k: float = 0.2, ignore_index: int = 255) -> None:
        super().__init__()
        self.cfg = cfg
        self.semantic_loss = TopKCrossEntropy(top_k, ignore_index)

    def semantic(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The (small-instance weighted) top-k cross-entropy of ``logits`` against ``batch["label"]``."""
        loss: torch.Tensor = self.semantic_loss(logits, batch["label"], batch["semantic_weights"])
        return loss

    def parts(self, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The unweighted terms ``{"semantic", "center", "offset"}`` of ``out`` against ``batch``."""
        center = F.mse_loss(out["center"], batch["center"], reduction="none")  # (B, 1, H, W)
        offset = F.l1_loss(out["offset"], batch["offset"], reduction="none")  # (B, 2, H, W), summed over dy, dx
        return {
            "semantic": self.semantic(out["out"], batch),
            "center": _masked_mean(center, batch["center_weights"]),
            "offset": _masked_mean(offset, batch["offset_weights"]),
        }

    def combine(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """The weighted sum of the terms :meth:`parts` returns."""
        return parts["semantic"] + self.cfg.center_weight * parts["center"] + self.cfg.offset_weight * parts["offset"]

    def forward(self, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.combine(self.parts(out, batch))
