"""Stem, branch-fusion nodes, feature aggregation and segmentation heads.

Structure follows the official ``HyCTAS.agg_ffm`` and ``HRTSemHead*`` (MarvinYu1995/HyCTAS
``train/hrtnet.py``), re-written; differences are listed on each class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hyctas_core.layers import ConvNormAct, resize
from hyctas_core.ops import OFFICIAL_QK_RATIO, EfficientSelfAttention, LightConv2x

__all__ = ["BranchFusion", "FeatureFusion", "SegHead", "Stem"]


class Stem(nn.Module):
    """Input -> stride 4 (kept for the output-stride-4 head) -> stride 8 (the cells' input).

    3x3/s2 conv-BN-ReLU (2*nf2) -> 3x3/s2 (2*nf4) -> 3x3 (2*nf4) = s4 feature ->
    3x3/s2 (nf8) -> 3x3 (nf8) = s8 feature. The official stem has no ReLU after its first
    conv; we keep one (every other conv of the stem has one).
    """

    def __init__(self, in_chs: int, s2_chs: int, s4_chs: int, s8_chs: int) -> None:
        super().__init__()
        self.to_s4 = nn.Sequential(
            ConvNormAct(in_chs, s2_chs, 3, 2),
            ConvNormAct(s2_chs, s4_chs, 3, 2),
            ConvNormAct(s4_chs, s4_chs, 3, 1),
        )
        self.to_s8 = nn.Sequential(ConvNormAct(s4_chs, s8_chs, 3, 2), ConvNormAct(s8_chs, s8_chs, 3, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s4 = self.to_s4(x)  # (B, 2*nf4, H/4, W/4)
        return s4, self.to_s8(s4)  # (B, nf8, H/8, W/8)


class _FuseStep(nn.Module):
    """One node: 1x1 conv to the finer scale's width, upsample, concat the branch's own
    feature at that scale, 3x3 refine. Slimmable in the concatenated (last) input only."""

    def __init__(self, in_chs: int, out_chs: int, skip_chs: int, *, slim: bool, align_corners: bool) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.arm = ConvNormAct(in_chs, out_chs, 1)
        self.refine = ConvNormAct(out_chs + skip_chs, out_chs, 3, slim=slim)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = resize(self.arm(x), (skip.shape[-2], skip.shape[-1]), self.align_corners)
        y: torch.Tensor = self.refine(torch.cat([up, skip], dim=1))  # fixed width first: slices stay leading
        return y


class BranchFusion(nn.Module):
    """Brings a branch ending at stride 16 or 32 to stride 8 (official arms/refines).

    Args:
        widths: full widths of the scales on the way, coarsest first, e.g. ``[nf32, nf16, nf8]``.
        skip_chs: (max) widths of the branch's own last features at the finer scales,
            coarsest first, e.g. ``[ch16, ch8]``.

    Unlike the official code the arms and refines end with ReLU (as in FasterSeg).
    """

    def __init__(
        self, widths: list[int], skip_chs: list[int], *, slim: bool = False, align_corners: bool = False
    ) -> None:
        super().__init__()
        if len(widths) != len(skip_chs) + 1:
            raise ValueError("need one skip feature per fusion step")
        self.steps = nn.ModuleList(
            _FuseStep(widths[i], widths[i + 1], skip_chs[i], slim=slim, align_corners=align_corners)
            for i in range(len(skip_chs))
        )

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for step, skip in zip(self.steps, skips, strict=True):
            x = step(x, skip)
        return x


class FeatureFusion(nn.Module):
    """Concatenated stride-8 branch outputs -> 1x1 conv-BN-ReLU -> squeeze-excitation gate.

    ``out = f * (1 + gate(f))`` as in the official FeatureFusion. The official SE applies BN
    to 1x1 pooled features, which needs a synchronised global batch; ours uses biased 1x1
    convs instead, so it trains at any batch size.
    """

    def __init__(self, in_chs: int, out_chs: int, se_reduction: int = 4) -> None:
        super().__init__()
        self.conv = ConvNormAct(in_chs, out_chs, 1)
        mid = max(8, out_chs // se_reduction)
        self.se = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(out_chs, mid, 1),
            nn.ReLU(),
            nn.Conv2d(mid, out_chs, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f: torch.Tensor = self.conv(x)
        gate: torch.Tensor = self.se(f)
        return f * (1 + gate)


class SegHead(nn.Module):
    """Segmentation head, optionally fusing the stride-4 stem feature first.

    ``s4_chs > 0`` gives the output-stride-4 head (official ``HRTSemHead1``): the stride-4
    feature is projected to 48 channels and concatenated with the upsampled input.

    - ``official=False`` (the light head): 3x3 conv-BN-ReLU -> 1x1 classifier. Attention is
      left to the searched cells, so the head is one small block for every architecture.
    - ``official=True`` (``HRTSemHead1`` / ``HRTSemHeadLight``): an attention refinement of the
      input first (``SAHead``: 1x1 conv-BN-ReLU, single-head position attention with queries and
      keys at 1/8 width, run at half resolution, BN-ReLU, back to full resolution, 1x1 conv-BN,
      + input, ReLU), then a zoomed double conv (``conv_2x_downup``) to the head width, then the
      3x3 conv-BN-ReLU and the classifier. Ours scales the attention logits by 1/sqrt(d) and
      starts the refinement as its bypass (last BN scale 0), where the official code does not.
    """

    def __init__(
        self,
        in_chs: int,
        num_classes: int,
        *,
        s4_chs: int = 0,
        align_corners: bool = False,
        official: bool = False,
    ) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.attention = (
            EfficientSelfAttention(
                in_chs, in_chs, 1, heads=1, ratio=1.0, qk_ratio=OFFICIAL_QK_RATIO, half_res=True,
                align_corners=align_corners,
            )
            if official
            else None
        )  # fmt: skip
        self.s4_proj = ConvNormAct(s4_chs, 48, 1) if s4_chs else None
        mid = in_chs if in_chs <= 256 else in_chs // 2
        fused = in_chs + (48 if s4_chs else 0)
        self.zoom = LightConv2x(fused, mid, 1, align_corners=align_corners) if official else None
        self.conv = ConvNormAct(mid if official else fused, mid, 3)
        self.classifier = nn.Conv2d(mid, num_classes, 1)
        nn.init.normal_(self.classifier.weight, std=0.001)
        nn.init.zeros_(self.classifier.bias)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor, s4: torch.Tensor | None = None) -> torch.Tensor:
        if self.attention is not None:
            x = self.attention(x)
        if self.s4_proj is not None:
            if s4 is None:
                raise ValueError("the output-stride-4 head needs the stride-4 stem feature")
            x = resize(x, (s4.shape[-2], s4.shape[-1]), self.align_corners)
            x = torch.cat([x, self.s4_proj(s4)], dim=1)
        if self.zoom is not None:
            x = self.zoom(x)
        logits: torch.Tensor = self.classifier(self.conv(x))
        return logits


def upsample_logits(logits: torch.Tensor, size: tuple[int, int], align_corners: bool = False) -> torch.Tensor:
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)
