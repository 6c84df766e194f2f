"""Training-memory estimate of a sub-network (constraint 4), without running it.

The estimate walks the network plan and adds, per op, the activations autograd keeps for the
backward pass (conv inputs, BN inputs, ReLU outputs, attention q/k/v/out; a tensor shared by
two consumers counts once), plus the logits and loss buffers at full resolution, plus
weights, gradients and SGD momentum (3 x params). The self-attention map itself is counted
(``heads * N^2`` per image) when ``attention_map=True``, the default: PyTorch's CPU training
path saves it (measured), and it is the safe side of "do not OOM to find out". The fused
CUDA kernels (flash / memory-efficient) never materialise it: pass ``attention_map=False``.
``tests/core/test_memory.py`` checks the estimate against the tensors autograd really saves.
"""

from __future__ import annotations

from dataclasses import dataclass

from hyctas_core.config import ModelConfig
from hyctas_core.layers import feature_sizes
from hyctas_core.network import NetPlan, plan_network, stem_widths
from hyctas_core.ops import OFFICIAL_QK_RATIO, attn_dim, qk_dim
from hyctas_core.search_space import Arch, ArchError, num_filters

__all__ = ["MemoryBudget", "MemoryEstimate", "activation_elements", "estimate_train_memory"]

_BYTES = 4  # float32


@dataclass(frozen=True)
class MemoryEstimate:
    activation_bytes: int
    param_bytes: int  # weights + gradients + momentum
    largest: str  # the cell with the most activation memory, e.g. "cell 3_0 (sa at 1/8): 1.2 GiB"

    @property
    def total_bytes(self) -> int:
        return self.activation_bytes + self.param_bytes


def _areas(input_size: tuple[int, int]) -> dict[int, int]:
    """Pixels per image at strides 1..64 with the ceil(x/2) rule of the network."""
    return {stride: h * w for stride, (h, w) in feature_sizes(input_size).items()}


def _cell_elements(
    op: str, cin: int, cout: int, stride: int, area_in: int, area_half: int, cfg: ModelConfig, attention_map: bool
) -> tuple[int, int]:
    """(activation elements per image, params) of one cell."""
    area_out = area_in if stride == 1 else area_half
    if op == "skip":
        if cin == cout:
            return 0, 0
        return 2 * cout * area_out, cin * cout + 2 * cout
    if op == "conv":
        return 2 * cout * area_out, 9 * cin * cout + 2 * cout
    if op in ("conv_downup", "conv_2x_downup"):
        n = 1 if op == "conv_downup" else 2
        acts = cin * area_half  # the down-sampled input, saved by the first conv
        acts += (2 * n - 1) * cout * area_half if stride == 1 else 2 * n * cout * area_half
        params = 9 * cin * cout + (n - 1) * 9 * cout * cout + 2 * n * cout
        if stride == 1:
            acts += 2 * cout * area_in  # bypass conv output, final ReLU output
            params += cin * cout + 2 * cout
        return acts, params
    if op == "sa":
        d = attn_dim(cout, cfg.attn_ratio, cfg.attn_heads)
        qk = qk_dim(d, cfg.attn_qk_ratio, cfg.attn_heads)
        n_tok = area_in
        acts = 2 * d * n_tok + (2 * qk + d) * n_tok  # reduce (conv, ReLU), q/k/v
        if attention_map:
            acts += cfg.attn_heads * n_tok * n_tok  # softmax probabilities
        else:
            acts += d * n_tok + cfg.attn_heads * n_tok  # fused kernels: output and log-sum-exp
        acts += d * n_tok + d * area_out  # residual sum (saved by BN / pooling), BN-ReLU output
        acts += cout * area_out * 2  # expand conv output, final ReLU output
        params = cin * d + 2 * d + 2 * (d * qk + qk) + d * d + d + 2 * d + d * cout + 2 * cout
        if stride == 2 or cin != cout:
            k = 9 if stride == 2 else 1
            acts += cout * area_out
            params += k * cin * cout + 2 * cout
        return acts, params
    raise ValueError(f"unknown op {op!r}")


def activation_elements(
    plan: NetPlan, cfg: ModelConfig, input_size: tuple[int, int], *, attention_map: bool = False
) -> tuple[int, int, str]:
    """(activation elements per image, params, description of the largest cell)."""
    area = _areas(input_size)
    s2, s4, s8 = stem_widths(cfg)
    F = cfg.base_channels
    # Stem: the input image (saved by the first conv) and 2 tensors per conv-BN-ReLU.
    acts = 3 * area[1] + 2 * (s2 * area[2] + 2 * s4 * area[4] + 2 * s8 * area[8])
    params = 27 * s2 + 9 * s2 * s4 + 9 * s4 * s4 + 9 * s4 * s8 + 9 * s8 * s8 + 2 * (s2 + 2 * s4 + 2 * s8)
    largest, largest_acts = "stem", acts
    for c in plan.cells:
        a, p = _cell_elements(
            c.op,
            c.in_chs,
            c.out_chs,
            c.stride,
            area[c.in_scale],
            area[2 * c.in_scale],
            cfg,
            attention_map,
        )
        acts += a
        params += p
        if a > largest_acts:
            largest, largest_acts = f"cell {c.key} ({c.op} at 1/{c.in_scale})", a
    for br in plan.branches:
        scales = [s for s in (32, 16, 8) if s <= br.end_scale]
        for (coarse, fine), skip_chs in zip(zip(scales, scales[1:], strict=False), br.skip_chs, strict=True):
            cw, fw = num_filters(coarse, F), num_filters(fine, F)
            acts += 2 * fw * area[coarse] + (fw + skip_chs) * area[fine] + 2 * fw * area[fine]
            params += cw * fw + 9 * (fw + skip_chs) * fw + 4 * fw
    chs = num_filters(8, F) * len(plan.branches)
    acts += chs * area[8] + 2 * chs * area[8] + 2 * chs * area[8]  # concat, fusion conv, SE product
    params += chs * chs + 2 * chs + chs * chs // 2
    mid = chs if chs <= 256 else chs // 2
    head_area = area[4] if cfg.output_stride == 4 else area[8]
    head_in = chs + (48 if cfg.output_stride == 4 else 0)
    if cfg.output_stride == 4:
        acts += 2 * 48 * area[4]
        params += s4 * 48 + 96
    if cfg.head == "official":  # attention at half of stride 8, then a zoomed double conv
        n_tok = max(1, area[8] // 4)
        qk = qk_dim(chs, OFFICIAL_QK_RATIO, 1)
        acts += 2 * chs * area[8] + (2 * qk + chs) * n_tok + 3 * chs * n_tok + 3 * chs * area[8]
        acts += n_tok * n_tok if attention_map else chs * n_tok
        params += 3 * chs * chs + 2 * (chs * qk + qk) + 7 * chs
        acts += head_in * head_area // 4 + 3 * mid * head_area // 4 + 3 * mid * head_area
        params += 9 * head_in * mid + 9 * mid * mid + head_in * mid + 6 * mid
        head_in = mid
    acts += head_in * head_area + 2 * mid * head_area + cfg.num_classes * head_area
    params += 9 * head_in * mid + 2 * mid + mid * cfg.num_classes + cfg.num_classes
    # Aux head on the coarsest branch; the loss keeps one log-softmax per head at full size.
    end = plan.branches[-1].end_scale
    end_chs = num_filters(end, F)
    aux_mid = end_chs if end_chs <= 256 else end_chs // 2
    acts += 2 * aux_mid * area[end] + cfg.num_classes * area[end]
    params += 9 * end_chs * aux_mid + 2 * aux_mid + aux_mid * cfg.num_classes + cfg.num_classes
    acts += 2 * cfg.num_classes * area[1]  # log-softmax of the main and aux logits
    return acts, params, largest


def estimate_train_memory(
    arch: Arch,
    *,
    base_channels: int = 12,
    input_size: tuple[int, int] = (512, 1024),
    batch_size: int = 16,
    attn_heads: int = 2,
    attn_ratio: float = 0.5,
    num_classes: int = 19,
    output_stride: int = 8,
    attention_map: bool = True,
) -> MemoryEstimate:
    """Estimated peak training memory of ``arch`` for one SGD step (float32)."""
    cfg = ModelConfig(
        base_channels=base_channels,
        num_layers=max(arch.num_layers, 3),
        num_classes=num_classes,
        output_stride=output_stride,
        attn_heads=attn_heads,
        attn_ratio=attn_ratio,
    )
    plan = plan_network(arch, cfg)
    acts, params, largest = activation_elements(plan, cfg, input_size, attention_map=attention_map)
    return MemoryEstimate(batch_size * acts * _BYTES, 3 * params * _BYTES, largest)


@dataclass(frozen=True)
class MemoryBudget:
    """Constraint 4: the training memory of a sub-network must stay under ``limit_bytes``.

    The estimate is for one training step at ``batch_size`` x ``input_size`` with
    ``base_channels`` F (see :func:`estimate_train_memory`).
    """

    limit_bytes: int
    base_channels: int = 12
    input_size: tuple[int, int] = (512, 1024)
    batch_size: int = 16
    attn_heads: int = 2
    attn_ratio: float = 0.5
    # Count the (HW)^2 attention map (CPU / math kernel); False for fused CUDA kernels.
    attention_map: bool = True

    def check(self, arch: Arch) -> None:
        need = estimate_train_memory(
            arch,
            base_channels=self.base_channels,
            input_size=self.input_size,
            batch_size=self.batch_size,
            attn_heads=self.attn_heads,
            attn_ratio=self.attn_ratio,
            attention_map=self.attention_map,
        )
        if need.total_bytes > self.limit_bytes:
            raise ArchError(
                f"constraint 4 (memory): estimated training memory {need.total_bytes / 2**30:.2f} GiB "
                f"exceeds the limit {self.limit_bytes / 2**30:.2f} GiB; largest cell: {need.largest}"
            )
