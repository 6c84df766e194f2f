"""Candidate ops of a HyCTAS cell.

Paper: Yu et al., "Real-Time Image Segmentation via Hybrid Convolutional-Transformer
Architecture Search", arXiv 2403.10413. Upstream: MarvinYu1995/HyCTAS ``train/operations.py``
(op names and codes kept; the modules are re-written from the paper's description).

Every op has the signature ``Op(in_chs, out_chs, stride, *, slim=False, ...)``. With
``slim=True`` it holds the widest weights and ``set_out(c)`` selects the active output width
(the input width is read from the input); without, it is a plain network module. Output
spatial size: the input's for stride 1, ``ceil(H/2) x ceil(W/2)`` for stride 2, for every
input size (odd ones included).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from hyctas_core.layers import ConvNormAct, SDPAttention, SlimBatchNorm2d, SlimConv2d, half_size, resize

__all__ = [
    "OPS",
    "ConvOp",
    "EfficientSelfAttention",
    "LightConv",
    "LightConv2x",
    "SkipOp",
    "attn_dim",
    "create_op",
]


class _Op(nn.Module):
    """Common bookkeeping: widths, stride and the active output width."""

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.in_chs, self.out_chs, self.stride = in_chs, out_chs, stride
        self.out_active = out_chs

    def set_out(self, out_chs: int) -> None:
        if not 1 <= out_chs <= self.out_chs:
            raise ValueError(f"{type(self).__name__}: active width {out_chs} not in 1..{self.out_chs}")
        self.out_active = out_chs
        self._set_out(out_chs)

    def _set_out(self, out_chs: int) -> None:
        for m in self.children():
            if isinstance(m, ConvNormAct):
                m.set_out(out_chs)


class SkipOp(_Op):
    """Identity; a 1x1 conv-BN-ReLU projection when the widths differ (FasterSeg style).

    Constraint 3 keeps ``skip`` away from down-sampling cells, so it has stride 1 only.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, *, slim: bool = False, **_: object) -> None:
        super().__init__(in_chs, out_chs, stride)
        if stride != 1:
            raise ValueError("skip has no stride-2 form (constraint 3)")
        self.proj = ConvNormAct(in_chs, out_chs, 1, slim=slim) if slim or in_chs != out_chs else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.proj is None or x.shape[1] == self.out_active:
            return x
        y: torch.Tensor = self.proj(x)
        return y


class ConvOp(_Op):
    """``conv``: a 3x3 conv-BN-ReLU (stride 1 or 2)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, *, slim: bool = False, **_: object) -> None:
        super().__init__(in_chs, out_chs, stride)
        self.conv = ConvNormAct(in_chs, out_chs, 3, stride, slim=slim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.conv(x)
        return y


class LightConv(_Op):
    """``conv_downup``: the light-weight (zoomed) convolution.

    Stride 1: bilinear down x0.5 -> 3x3 conv-BN -> bilinear up -> + 1x1 conv-BN bypass at full
    resolution -> ReLU. Stride 2: down x0.5 -> 3x3 conv-BN-ReLU (no bypass).
    ``num_convs=2`` gives ``conv_2x_downup`` (conv-BN-ReLU -> conv-BN in the low-res path).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int = 1,
        *,
        num_convs: int = 1,
        slim: bool = False,
        align_corners: bool = False,
        **_: object,
    ) -> None:
        super().__init__(in_chs, out_chs, stride)
        self.align_corners = align_corners
        convs = []
        for i in range(num_convs):
            last = i == num_convs - 1
            convs.append(ConvNormAct(in_chs if i == 0 else out_chs, out_chs, 3, act=not last or stride == 2, slim=slim))
        self.convs = nn.Sequential(*convs)
        self.bypass = ConvNormAct(in_chs, out_chs, 1, act=False, slim=slim) if stride == 1 else None

    def _set_out(self, out_chs: int) -> None:
        for m in self.convs:
            assert isinstance(m, ConvNormAct)
            m.set_out(out_chs)
        if self.bypass is not None:
            self.bypass.set_out(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.shape[-2], x.shape[-1])
        y: torch.Tensor = self.convs(resize(x, half_size(size), self.align_corners))  # (B, C, H/2, W/2)
        if self.bypass is None:
            return y
        y = resize(y, size, self.align_corners)  # back to (B, C, H, W)
        return F.relu(y + self.bypass(x))


class LightConv2x(LightConv):
    """``conv_2x_downup``: the light-weight convolution with two 3x3 convs."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int = 1,
        *,
        slim: bool = False,
        align_corners: bool = False,
        **_: object,
    ) -> None:
        super().__init__(in_chs, out_chs, stride, num_convs=2, slim=slim, align_corners=align_corners)


def attn_dim(out_chs: int, ratio: float, heads: int) -> int:
    """Bottleneck width of the attention: ``ratio * out_chs`` rounded up to a multiple of heads."""
    return heads * max(1, math.ceil(out_chs * ratio / heads))


# The official position attention (SAGAN / DANet): queries and keys at 1/8 of the value width.
OFFICIAL_QK_RATIO = 0.125


def qk_dim(dim: int, qk_ratio: float, heads: int) -> int:
    """Width of the queries and keys of an attention of value width ``dim``."""
    return heads * max(1, math.ceil(dim * qk_ratio / heads))


class EfficientSelfAttention(_Op):
    """``sa``: memory-efficient self-attention as a bottleneck, without FFN.

    1x1 conv-BN-ReLU reduces ``in_chs`` to ``attn_dim(out_chs)`` -> multi-head self-attention
    over all H*W positions (q, k, v 1x1 projections; ``scaled_dot_product_attention``, so the
    fused CPU/GPU kernels avoid materialising the (HW)^2 map where they can) with a residual ->
    2x2 average pooling for stride 2 -> BN-ReLU -> 1x1 conv-BN expands to ``out_chs`` (its BN
    scale starts at 0, so a fresh block is its bypass) -> + bypass (identity when shapes match,
    else 1x1 conv-BN, or 3x3/s2 conv-BN for stride 2) -> ReLU. No positional encoding, as in
    the official code.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int = 1,
        *,
        heads: int = 2,
        ratio: float = 0.5,
        qk_ratio: float = 1.0,
        half_res: bool = False,
        align_corners: bool = False,
        slim: bool = False,
        **_: object,
    ) -> None:
        super().__init__(in_chs, out_chs, stride)
        self.heads, self.ratio, self.qk_ratio = heads, ratio, qk_ratio
        self.half_res, self.align_corners = half_res, align_corners
        dim = attn_dim(out_chs, ratio, heads)
        qk = qk_dim(dim, qk_ratio, heads)
        conv_layer = SlimConv2d if slim else nn.Conv2d
        self.reduce = ConvNormAct(in_chs, dim, 1, slim=slim)
        self.q = conv_layer(dim, qk, 1)
        self.k = conv_layer(dim, qk, 1)
        self.v = conv_layer(dim, dim, 1)
        self.attn = SDPAttention()
        self.norm = (SlimBatchNorm2d if slim else nn.BatchNorm2d)(dim)
        self.expand = ConvNormAct(dim, out_chs, 1, act=False, slim=slim)
        nn.init.zeros_(self.expand.bn.weight)
        needs_bypass = slim or stride == 2 or in_chs != out_chs
        self.bypass = (
            ConvNormAct(in_chs, out_chs, 1 if stride == 1 else 3, stride, act=False, slim=slim)
            if needs_bypass
            else None
        )

    def _set_out(self, out_chs: int) -> None:
        dim = attn_dim(out_chs, self.ratio, self.heads)
        self.reduce.set_out(dim)
        qk = qk_dim(dim, self.qk_ratio, self.heads)
        for conv, width in ((self.q, qk), (self.k, qk), (self.v, dim)):
            assert isinstance(conv, SlimConv2d)
            conv.out_active = width
        self.expand.set_out(out_chs)
        if self.bypass is not None:
            self.bypass.set_out(out_chs)

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        B, D, H, W = t.shape
        return t.reshape(B, self.heads, D // self.heads, H * W).transpose(-1, -2)  # (B, h, N, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.reduce(x)  # (B, D, H, W)
        full = (y.shape[-2], y.shape[-1])
        if self.half_res:
            y = resize(y, half_size(full), self.align_corners)
        B, D, H, W = y.shape
        a = self.attn(self._split_heads(self.q(y)), self._split_heads(self.k(y)), self._split_heads(self.v(y)))
        y = y + a.transpose(-1, -2).reshape(B, D, H, W)  # (B, h, N, d) -> (B, D, H, W)
        if self.stride == 2:
            y = F.avg_pool2d(y, 2, ceil_mode=True)
        y = F.relu(self.norm(y))
        if self.half_res:
            y = resize(y, full, self.align_corners)
        y = self.expand(y)
        use_identity = self.bypass is None or (self.stride == 1 and x.shape[1] == self.out_active)
        shortcut = x if use_identity else self.bypass(x)  # type: ignore[misc]
        return F.relu(y + shortcut)


OPS: dict[str, Callable[..., _Op]] = {
    "skip": SkipOp,
    "conv": ConvOp,
    "conv_downup": LightConv,
    "conv_2x_downup": LightConv2x,
    "sa": EfficientSelfAttention,
}


def create_op(
    name: str,
    in_chs: int,
    out_chs: int,
    stride: int,
    *,
    slim: bool = False,
    heads: int = 2,
    ratio: float = 0.5,
    qk_ratio: float = 1.0,
    align_corners: bool = False,
) -> _Op:
    """Build op ``name`` from :data:`OPS`; raises ``KeyError`` naming the known ops."""
    if name not in OPS:
        raise KeyError(f"unknown op {name!r}; known: {', '.join(OPS)}")
    return OPS[name](
        in_chs, out_chs, stride, slim=slim, heads=heads, ratio=ratio, qk_ratio=qk_ratio, align_corners=align_corners
    )
