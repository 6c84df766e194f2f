"""Segment images with a trained network: label maps, colour maps, overlays, class statistics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from hyctas_core.data.labels import TRAIN_ID_COLORS, TRAIN_ID_NAMES
from hyctas_core.data.transforms import normalize

__all__ = ["class_stats", "colorize", "overlay", "predict_labels"]


@torch.inference_mode()
def predict_labels(
    model: nn.Module, images: Sequence[np.ndarray], *, device: str | torch.device = "cpu"
) -> list[np.ndarray]:
    """Train-id label maps (uint8 HxW) for RGB uint8 HxWx3 images; images of one size run as a batch."""
    if not images:
        return []
    sizes = {im.shape for im in images}
    model.eval()
    if len(sizes) == 1:
        batch = torch.from_numpy(np.stack([normalize(im) for im in images])).permute(0, 3, 1, 2).to(device)
        logits = model(batch)["out"]
        return [p.astype(np.uint8) for p in logits.argmax(1).cpu().numpy()]
    return [predict_labels(model, [im], device=device)[0] for im in images]


def colorize(labels: np.ndarray, palette: Sequence[tuple[int, int, int]] = TRAIN_ID_COLORS) -> np.ndarray:
    """RGB uint8 colour map of a label map (ignore / unknown ids are black)."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    colored: np.ndarray = lut[labels]
    return colored


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the colour map over the image (``alpha`` = weight of the colours)."""
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image {image.shape[:2]} and labels {labels.shape} differ in size")
    mixed = (1 - alpha) * image.astype(np.float32) + alpha * colorize(labels).astype(np.float32)
    return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)


def class_stats(labels: np.ndarray, names: Sequence[str] = TRAIN_ID_NAMES) -> list[dict[str, Any]]:
    """Pixel share of every class present, largest first."""
    ids, counts = np.unique(labels, return_counts=True)
    total = labels.size
    rows = [
        {
            "class_id": int(i),
            "name": names[i] if i < len(names) else f"class_{i}",
            "pixels": int(c),
            "fraction": c / total,
        }
        for i, c in zip(ids, counts, strict=True)
    ]
    return sorted(rows, key=lambda r: -r["pixels"])
