"""The instance branch of a Panoptic-DeepLab style head: centre heatmap and centre offsets.

Paper: Cheng et al., "Panoptic-DeepLab", arXiv 1911.10194; HyCTAS (arXiv 2403.10413) puts it on
the searched backbone without the heavy ASPP context module and decoder. Upstream:
MarvinYu1995/HyCTAS ``train/hrtnet.py`` ``HRTInsHead*`` (re-written; see :class:`PanopticHead`).
"""

from __future__ import annotations

import torch
from torch import nn

from hyctas_core.layers import ConvNormAct, resize

__all__ = ["PanopticHead"]


def _predictor(in_chs: int, out_chs: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_chs, out_chs, 1)
    nn.init.normal_(conv.weight, std=0.001)  # start near 0: an empty heatmap, no offsets
    nn.init.zeros_(conv.bias)  # type: ignore[arg-type]
    return conv


class PanopticHead(nn.Module):
    """Centre heatmap (1 channel) and offsets to the centre (2 channels, dy then dx).

    Reads the same fused stride-8 features as the semantic :class:`~hyctas_core.heads.SegHead`;
    with ``s4_chs > 0`` it also fuses the stride-4 stem feature (projected to 32 channels) and
    predicts at stride 4. One shared 3x3 conv-BN-ReLU, then a 3x3 conv-BN-ReLU (half width)
    and a 1x1 predictor per output. The official ``HRTInsHead*`` starts with an attention
    block and runs two full towers; ours shares the first conv to keep the head light (the
    paper removes Panoptic-DeepLab's ASPP and decoder for speed, in the same spirit).

    Offsets come out in units of the head's own pixels; :class:`~hyctas_core.network.HyCTASNet`
    multiplies them by the upsampling factor, so that its ``"offset"`` output is in input pixels.
    """

    def __init__(self, in_chs: int, *, s4_chs: int = 0, align_corners: bool = False) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.s4_proj = ConvNormAct(s4_chs, 32, 1) if s4_chs else None
        mid = in_chs if in_chs <= 256 else in_chs // 2
        half = max(mid // 2, 8)
        self.shared = ConvNormAct(in_chs + (32 if s4_chs else 0), mid, 3)
        self.center = nn.Sequential(ConvNormAct(mid, half, 3), _predictor(half, 1))
        self.offset = nn.Sequential(ConvNormAct(mid, half, 3), _predictor(half, 2))

    def forward(self, x: torch.Tensor, s4: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.s4_proj is not None:
            if s4 is None:
                raise ValueError("the output-stride-4 head needs the stride-4 stem feature")
            x = resize(x, (s4.shape[-2], s4.shape[-1]), self.align_corners)
            x = torch.cat([x, self.s4_proj(s4)], dim=1)
        f = self.shared(x)  # (B, mid, h, w)
        center: torch.Tensor = self.center(f)  # (B, 1, h, w)
        offset: torch.Tensor = self.offset(f)  # (B, 2, h, w): dy, dx
        return center, offset
