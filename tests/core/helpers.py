"""Helpers for model and training tests."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset


class ToyScenes(Dataset[dict[str, Any]]):
    """Tiny deterministic scenes: class = which vertical band, with epoch-dependent noise.

    Args:
        n: images.
        size: (H, W).
        noise: standard deviation of the pixel noise.
        ragged_ignore: the unlabelled (255) top rows differ per image (0 to 4/8 of the height),
            so images hold different numbers of labelled pixels; else the top quarter of each.
    """

    def __init__(
        self, n: int = 12, size: tuple[int, int] = (48, 64), *, noise: float = 0.3, ragged_ignore: bool = False
    ) -> None:
        self.n, self.size, self.noise, self.ragged_ignore, self.epoch = n, size, noise, ragged_ignore, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(1000 * self.epoch + i)
        h, w = self.size
        label = (torch.arange(w) * 3 // w).expand(h, w).clone()
        label[: (i % 5) * h // 8 if self.ragged_ignore else h // 4] = 255
        image = torch.randn(3, h, w, generator=g) * self.noise + label.clamp(max=2).float().unsqueeze(0)
        return {"image": image, "label": label.long()}


@torch.no_grad()
def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter and BN statistic a non-trivial random value.

    Fresh models have BN at identity, zero-initialised residual branches and a near-zero
    classifier, which would hide extraction bugs; this makes every tensor matter.
    """
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
        elif isinstance(m, nn.Conv2d):
            fan_in = m.weight[0].numel()
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            if m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model
