"""Building blocks shared by the supernet and standalone networks.

Slimmable layers (``SlimConv2d``, ``SlimBatchNorm2d``) hold the widest weights and run on a
*leading slice* of them: the input width is read from the input tensor, the output width is
``out_active`` (``None`` = full). A standalone network uses plain ``nn.Conv2d`` /
``nn.BatchNorm2d`` with exactly the sliced shapes and the same parameter names, so that
extracting a sub-network is a copy of leading slices (``copy_sliced``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ConvNormAct",
    "DropPath",
    "SDPAttention",
    "SlimBatchNorm2d",
    "SlimConv2d",
    "copy_sliced",
    "feature_sizes",
    "half_size",
    "resize",
]


def half_size(size: tuple[int, int]) -> tuple[int, int]:
    """Spatial size after a stride-2 step, ``ceil(x / 2)``: what a padded 3x3/s2 conv gives."""
    return (size[0] + 1) // 2, (size[1] + 1) // 2


def feature_sizes(input_size: tuple[int, int], max_stride: int = 64) -> dict[int, tuple[int, int]]:
    """Spatial size of the features at strides 1, 2, 4, ... ``max_stride`` (``half_size`` per step)."""
    sizes, size, stride = {1: input_size}, input_size, 1
    while stride < max_stride:
        size, stride = half_size(size), stride * 2
        sizes[stride] = size
    return sizes


def resize(x: torch.Tensor, size: tuple[int, int], align_corners: bool = False) -> torch.Tensor:
    """Bilinear resize to an explicit size (odd sizes stay consistent across ops)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


class SlimConv2d(nn.Conv2d):
    """``nn.Conv2d`` that can run on the first ``in`` input and ``out_active`` output channels."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.out_active: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cin = x.shape[1]
        cout = self.out_active if self.out_active is not None else self.out_channels
        if cin == self.in_channels and cout == self.out_channels:
            return super().forward(x)
        weight = self.weight[:cout, :cin]
        bias = self.bias[:cout] if self.bias is not None else None
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class SlimBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` over the first ``C`` channels of its parameters and statistics.

    Running statistics of the active slice are updated in place, with the same momentum
    rule as ``nn.BatchNorm2d`` (``momentum=None`` gives a cumulative average, used by BN
    recalibration).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if c == self.num_features:
            return super().forward(x)
        factor = 0.0
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch_stats = self.training or self.running_mean is None
        running_mean = self.running_mean[:c] if self.running_mean is not None else None
        running_var = self.running_var[:c] if self.running_var is not None else None
        return F.batch_norm(
            x,
            running_mean if not self.training or self.track_running_stats else None,
            running_var if not self.training or self.track_running_stats else None,
            self.weight[:c] if self.weight is not None else None,
            self.bias[:c] if self.bias is not None else None,
            use_batch_stats,
            factor,
            self.eps,
        )


class ConvNormAct(nn.Module):
    """Conv (no bias) -> BatchNorm -> optional ReLU; slimmable when ``slim``."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        *,
        act: bool = True,
        slim: bool = False,
    ) -> None:
        super().__init__()
        conv_layer = SlimConv2d if slim else nn.Conv2d
        norm_layer = SlimBatchNorm2d if slim else nn.BatchNorm2d
        self.conv = conv_layer(in_chs, out_chs, kernel_size, stride, kernel_size // 2, bias=False)
        self.bn = norm_layer(out_chs)
        self.act = nn.ReLU() if act else nn.Identity()

    def set_out(self, out_chs: int) -> None:
        """Active output width (slimmable layers only)."""
        if isinstance(self.conv, SlimConv2d):
            self.conv.out_active = out_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.act(self.bn(self.conv(x)))
        return y


class SDPAttention(nn.Module):
    """Multi-head ``scaled_dot_product_attention`` on (B, heads, N, d) tensors.

    A module of its own so that profilers can count its two matmuls (QK^T and AV).
    The softmax runs in float32 whatever the input dtype.
    """

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        dtype = q.dtype
        if dtype in (torch.float16, torch.bfloat16) and q.device.type == "cpu":
            q, k, v = q.float(), k.float(), v.float()
        return F.scaled_dot_product_attention(q, k, v).to(dtype)


@torch.no_grad()
def copy_sliced(dst: nn.Module, src: nn.Module) -> None:
    """Copy every parameter and buffer of ``dst`` from the leading slice of ``src``'s.

    Raises:
        KeyError: ``dst`` has a tensor ``src`` lacks.
        ValueError: a ``dst`` tensor is larger than its ``src`` counterpart.
    """
    src_state = src.state_dict()
    for name, t in dst.state_dict(keep_vars=True).items():
        if name not in src_state:
            raise KeyError(f"{type(src).__name__} has no tensor {name!r} to copy into {type(dst).__name__}")
        s = src_state[name]
        if t.dim() != s.dim() or any(a > b for a, b in zip(t.shape, s.shape, strict=True)):
            raise ValueError(f"{name}: cannot slice {tuple(s.shape)} to {tuple(t.shape)}")
        t.copy_(s[tuple(slice(0, n) for n in t.shape)] if t.dim() else s)


class DropPath(nn.Module):
    """Per-sample stochastic depth: zero a whole sample's tensor with probability ``p``.

    In training mode each sample of the batch is kept with probability ``1 - p`` and scaled by
    ``1 / (1 - p)`` (so the expectation is unchanged), or zeroed; ``p = 1`` zeroes every sample.
    In eval mode, or with ``p = 0``, the input is returned as is (the very same tensor). Put it
    on a residual branch only: dropping a path that has no bypass zeroes the feature map.

    The keep/drop draw (one uniform number per sample, drawn on the generator's device and
    moved to the input's) comes from ``generator``, a ``torch.Generator`` the owner sets and
    may share between modules (see :meth:`hyctas_core.network.HyCTASNet.set_drop_path`).

    Args:
        p: drop probability in ``[0, 1]``.
        generator: the source of the draws; required whenever ``p > 0`` in training.
    """

    def __init__(self, p: float = 0.0, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.p = 0.0
        self.set_p(p)
        self.generator = generator

    def set_p(self, p: float) -> None:
        """Set the drop probability; raises ``ValueError`` outside ``[0, 1]``."""
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"drop path probability must be in [0, 1], got {p}")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.generator is None:
            raise RuntimeError("DropPath with p > 0 in training needs a torch.Generator (set .generator)")
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        u = torch.rand(shape, generator=self.generator, device=self.generator.device).to(x.device)
        mask = (u < keep).to(x.dtype)  # (B, 1, ..., 1): 1 keeps the sample, 0 drops it
        if keep > 0.0:
            mask = mask / keep
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"
