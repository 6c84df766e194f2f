"""A standalone HyCTAS segmentation network built from an :class:`~hyctas_core.search_space.Arch`.

Paper: arXiv 2403.10413. Upstream: MarvinYu1995/HyCTAS ``train/hrtnet.py`` (re-written).

Branches that share a prefix (same op, width and stride cell by cell from the stem) share
those cells and compute them once, as in the official ``get_branch_groups_cells``. Every
branch is brought to stride 8 by its fusion node, the branch outputs are concatenated and
fused, and the head predicts at stride 8 (or 4); ``forward`` returns ``{"out": logits}`` at
the input size, plus ``"aux"`` (a light head on the coarsest branch) in training mode when
built with ``aux=True``. Built with ``panoptic=True`` (or after :meth:`HyCTASNet.add_panoptic_head`)
it also returns the instance branch's ``"center"`` heatmap (B, 1, H, W) and ``"offset"``
(B, 2, H, W; dy, dx in input pixels, pointing from each pixel to its instance centre), computed
from the same fused features as the semantic logits (:mod:`hyctas_core.panoptic`).

Drop path (scheduled stochastic depth, used when retraining an architecture from scratch) is
applied only where a cell op has a residual form, to the branch that is summed onto a bypass:

- ``conv_downup`` / ``conv_2x_downup`` with stride 1: the low-resolution conv path, before it
  is up-sampled and added to the 1x1 bypass;
- ``sa`` (both strides): the attention path (the output of the expanding 1x1 conv-BN), before
  it is added to the shortcut (identity, or the projection).

``skip``, ``conv`` and the stride-2 light convs have no bypass: dropping their output would
zero the feature map for every later cell, so they are never dropped. A :class:`DropPath`
takes the place of the (identity) activation of the last conv-BN of each such branch, so
parameter names are unchanged, eval-mode outputs are bit-for-bit those of a network without
drop path, and so are training-mode outputs at probability 0. ``HyCTASNet.set_drop_path(p)``
sets the probability of every dropped branch at once (0 after construction); the per-sample
draws come from the network's ``drop_path_generator`` (a seeded ``torch.Generator``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hyctas_core.config import ModelConfig
from hyctas_core.heads import BranchFusion, FeatureFusion, SegHead, Stem, upsample_logits
from hyctas_core.layers import ConvNormAct, DropPath
from hyctas_core.ops import EfficientSelfAttention, LightConv, create_op
from hyctas_core.panoptic.head import PanopticHead
from hyctas_core.search_space import SCALES, Arch, ArchError, num_filters, validate

__all__ = ["BranchPlan", "CellPlan", "HyCTASNet", "NetPlan", "build", "plan_network"]


@dataclass(frozen=True)
class CellPlan:
    """One computed cell of a network (shared by every branch with the same prefix)."""

    key: str  # "<layer>_<group>", unique in the network
    layer: int
    op: str
    in_scale: int
    stride: int
    in_chs: int
    out_chs: int
    parent: str | None  # key of the input cell; None = the stem's stride-8 feature

    @property
    def out_scale(self) -> int:
        return self.in_scale * self.stride


@dataclass(frozen=True)
class BranchPlan:
    end_scale: int
    cells: tuple[str, ...]  # cell key per layer
    # The branch's last feature at each finer scale it passed, coarsest first (None = stem),
    # with its width: what the fusion node concatenates.
    skips: tuple[str | None, ...]
    skip_chs: tuple[int, ...]


@dataclass(frozen=True)
class NetPlan:
    cells: tuple[CellPlan, ...]  # in execution order
    branches: tuple[BranchPlan, ...]  # ordered by end scale
    stem_chs: int

    @property
    def combination(self) -> tuple[int, ...]:
        return tuple(b.end_scale for b in self.branches)


def stem_widths(cfg: ModelConfig) -> tuple[int, int, int]:
    """Stem widths at strides 2, 4, 8 (official: 2*nf(2), 2*nf(4), nf(8))."""
    F, w = cfg.base_channels, cfg.stem_width
    return 2 * num_filters(2, F, w), 2 * num_filters(4, F, w), num_filters(8, F, w)


def plan_network(arch: Arch, cfg: ModelConfig) -> NetPlan:
    """Cells, sharing and channel widths of ``arch`` under ``cfg``.

    Raises:
        ArchError: the arch is invalid or deeper than ``cfg.num_layers``.
    """
    validate(arch)
    if arch.num_layers > cfg.num_layers:
        raise ArchError(f"arch has {arch.num_layers} cells per branch; the config allows {cfg.num_layers}")
    arch = arch.canonical()
    stem_chs = stem_widths(cfg)[2]
    F = cfg.base_channels
    groups: dict[tuple[object, ...], CellPlan] = {}
    per_layer_count: dict[int, int] = {}
    order: list[CellPlan] = []
    branches = []
    for br in arch.branches:
        prefix: tuple[object, ...] = ()
        parent: str | None = None
        in_chs = stem_chs
        keys: list[str] = []
        last_at: dict[int, tuple[str | None, int]] = {8: (None, stem_chs)}
        for i, (cell, s_in) in enumerate(zip(br.cells, br.in_scales, strict=True)):
            prefix = (*prefix, cell.op, cell.width, cell.stride)
            node = groups.get(prefix)
            if node is None:
                idx = per_layer_count.get(i, 0)
                per_layer_count[i] = idx + 1
                out_chs = num_filters(s_in * cell.stride, F, cell.width_mult)
                node = CellPlan(f"{i}_{idx}", i, cell.op, s_in, cell.stride, in_chs, out_chs, parent)
                groups[prefix] = node
                order.append(node)
            keys.append(node.key)
            parent, in_chs = node.key, node.out_chs
            last_at[node.out_scale] = (node.key, node.out_chs)
        finer = [s for s in SCALES if s < br.last_scale][::-1]  # e.g. [16, 8]
        branches.append(
            BranchPlan(
                br.last_scale,
                tuple(keys),
                tuple(last_at[s][0] for s in finer),
                tuple(last_at[s][1] for s in finer),
            )
        )
    order.sort(key=lambda c: c.layer)  # stable: parents always precede children
    return NetPlan(tuple(order), tuple(branches), stem_chs)


def combo_key(combination: tuple[int, ...]) -> str:
    return "_".join(str(s) for s in combination)


class _HyCTASBase(nn.Module):
    """The forward pass shared by :class:`HyCTASNet` and the supernet."""

    cfg: ModelConfig
    stem: Stem

    def _cell(self, c: CellPlan) -> nn.Module:
        raise NotImplementedError

    def _fusion(self, end_scale: int) -> nn.Module:
        raise NotImplementedError

    def _aggregate(self, combination: tuple[int, ...]) -> tuple[nn.Module, nn.Module]:
        raise NotImplementedError

    def _aux_head(self, end_scale: int) -> nn.Module | None:
        raise NotImplementedError

    def _instance_head(self) -> nn.Module | None:
        return None

    def _run(self, x: torch.Tensor, plan: NetPlan) -> dict[str, torch.Tensor]:
        size = (x.shape[-2], x.shape[-1])
        s4, s8 = self.stem(x)
        feats: dict[str | None, torch.Tensor] = {None: s8}
        for c in plan.cells:
            feats[c.key] = self._cell(c)(feats[c.parent])
        outs = []
        for br in plan.branches:
            end = feats[br.cells[-1]]
            if br.end_scale == 8:
                outs.append(end)
            else:
                outs.append(self._fusion(br.end_scale)(end, [feats[k] for k in br.skips]))
        ffm, head = self._aggregate(plan.combination)
        fused = ffm(torch.cat(outs, dim=1))  # (B, k * nf8, H/8, W/8)
        logits = head(fused, s4 if self.cfg.output_stride == 4 else None)
        result = {"out": upsample_logits(logits, size, self.cfg.align_corners)}
        instance_head = self._instance_head()
        if instance_head is not None:
            center, offset = instance_head(fused, s4 if self.cfg.output_stride == 4 else None)
            # offsets are learnt in head pixels; scale them to input pixels while upsampling
            scale = torch.tensor(
                [size[0] / offset.shape[-2], size[1] / offset.shape[-1]], device=offset.device, dtype=offset.dtype
            )
            result["center"] = upsample_logits(center, size, self.cfg.align_corners)
            result["offset"] = upsample_logits(offset, size, self.cfg.align_corners) * scale.view(1, 2, 1, 1)
        coarsest = plan.branches[-1]
        aux_head = self._aux_head(coarsest.end_scale)
        if self.training and aux_head is not None:
            aux = aux_head(feats[coarsest.cells[-1]])
            result["aux"] = upsample_logits(aux, size, self.cfg.align_corners)
        return result


def _new_fusion(end_scale: int, cfg: ModelConfig, skip_chs: tuple[int, ...] | list[int], slim: bool) -> BranchFusion:
    widths = [num_filters(s, cfg.base_channels) for s in SCALES if s <= end_scale][::-1]
    return BranchFusion(widths, list(skip_chs), slim=slim, align_corners=cfg.align_corners)


def _new_aggregation(combination: tuple[int, ...], cfg: ModelConfig) -> tuple[FeatureFusion, SegHead]:
    chs = num_filters(8, cfg.base_channels) * len(combination)
    s4_chs = stem_widths(cfg)[1] if cfg.output_stride == 4 else 0
    ffm = FeatureFusion(chs, chs, cfg.se_reduction)
    head = SegHead(
        chs, cfg.num_classes, s4_chs=s4_chs, align_corners=cfg.align_corners, official=cfg.head == "official"
    )
    return ffm, head


def _new_aux_head(end_scale: int, cfg: ModelConfig) -> SegHead:
    return SegHead(num_filters(end_scale, cfg.base_channels), cfg.num_classes, align_corners=cfg.align_corners)


def _new_instance_head(combination: tuple[int, ...], cfg: ModelConfig) -> PanopticHead:
    chs = num_filters(8, cfg.base_channels) * len(combination)
    s4_chs = stem_widths(cfg)[1] if cfg.output_stride == 4 else 0
    return PanopticHead(chs, s4_chs=s4_chs, align_corners=cfg.align_corners)


def _new_stem(cfg: ModelConfig) -> Stem:
    return Stem(3, *stem_widths(cfg))


def _attach_drop_path(op: nn.Module, generator: torch.Generator) -> DropPath | None:
    """Put a :class:`DropPath` on the residual branch of ``op``, if it has one (see the module doc).

    The branch's last conv-BN has no activation (``nn.Identity``); the drop path replaces it,
    so the op's parameters and its eval-mode function are unchanged.
    """
    block: nn.Module | None = None
    if isinstance(op, LightConv) and op.bypass is not None:
        block = op.convs[-1]
    elif isinstance(op, EfficientSelfAttention):
        block = op.expand
    if block is None:
        return None
    assert isinstance(block, ConvNormAct) and isinstance(block.act, nn.Identity), "residual branch ends in an act"
    drop = DropPath(0.0, generator)
    block.add_module("act", drop)  # replaces the nn.Identity; no parameter names change
    return drop


class HyCTASNet(_HyCTASBase):
    """A plain (non-slimmable) network for one architecture.

    Args:
        arch: the architecture (validated).
        cfg: widths, classes, output stride, attention settings.
        aux: also build the auxiliary head used in training.
        panoptic: also build the instance branch (centre heatmap and offsets).
    """

    def __init__(self, arch: Arch, cfg: ModelConfig, *, aux: bool = False, panoptic: bool = False) -> None:
        super().__init__()
        self.arch = arch.canonical()
        self.cfg = cfg
        self.plan = plan_network(arch, cfg)
        self.stem = _new_stem(cfg)
        self.cells = nn.ModuleDict(
            {
                c.key: create_op(
                    c.op, c.in_chs, c.out_chs, c.stride,
                    heads=cfg.attn_heads, ratio=cfg.attn_ratio, qk_ratio=cfg.attn_qk_ratio,
                    align_corners=cfg.align_corners,
                )
                for c in self.plan.cells
            }
        )  # fmt: skip
        self.drop_path_generator = torch.Generator().manual_seed(0)
        self.drop_path_p = 0.0
        self._drop_paths = [
            d for op in self.cells.values() if (d := _attach_drop_path(op, self.drop_path_generator)) is not None
        ]
        self.fusions = nn.ModuleDict(
            {
                str(b.end_scale): _new_fusion(b.end_scale, cfg, b.skip_chs, False)
                for b in self.plan.branches
                if b.end_scale > 8
            }
        )
        self.ffm, self.head = _new_aggregation(self.plan.combination, cfg)
        self.aux_head = _new_aux_head(self.plan.branches[-1].end_scale, cfg) if aux else None
        self.instance_head: PanopticHead | None = None
        if panoptic:
            self.add_panoptic_head()

    def add_panoptic_head(self) -> HyCTASNet:
        """Give the network a freshly initialised instance branch (e.g. after ``Supernet.extract``).

        Returns the network itself; a network that already has one keeps it.
        """
        if self.instance_head is None:
            device = next(self.head.parameters()).device
            self.instance_head = _new_instance_head(self.plan.combination, self.cfg).to(device).train(self.training)
        return self

    @property
    def panoptic(self) -> bool:
        """Whether the network predicts centres and offsets besides the semantic logits."""
        return self.instance_head is not None

    def _instance_head(self) -> nn.Module | None:
        return self.instance_head

    def _cell(self, c: CellPlan) -> nn.Module:
        return self.cells[c.key]

    def _fusion(self, end_scale: int) -> nn.Module:
        return self.fusions[str(end_scale)]

    def _aggregate(self, combination: tuple[int, ...]) -> tuple[nn.Module, nn.Module]:
        return self.ffm, self.head

    def _aux_head(self, end_scale: int) -> nn.Module | None:
        return self.aux_head

    @property
    def drop_path_modules(self) -> tuple[DropPath, ...]:
        """The drop-path modules, one per residual cell branch (empty if the arch has none)."""
        return tuple(self._drop_paths)

    def set_drop_path(self, p: float, *, generator: torch.Generator | None = None) -> None:
        """Set the drop probability of every residual cell branch (training mode only).

        Args:
            p: probability in ``[0, 1]`` that a sample's residual branch is zeroed.
            generator: a new source for the per-sample draws (kept for later calls); the
                default keeps the current ``drop_path_generator``.

        Raises:
            ValueError: ``p`` is outside ``[0, 1]``.
        """
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"drop path probability must be in [0, 1], got {p}")
        if generator is not None:
            self.drop_path_generator = generator
        for d in self._drop_paths:
            d.set_p(p)
            d.generator = self.drop_path_generator
        self.drop_path_p = float(p)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._run(x, self.plan)


def build(
    arch: Arch,
    num_classes: int = 19,
    base_channels: int = 12,
    *,
    aux: bool = False,
    panoptic: bool = False,
    **cfg_kwargs: object,
) -> HyCTASNet:
    """A freshly initialised network for ``arch`` (other :class:`ModelConfig` fields by keyword)."""
    kwargs = dict(cfg_kwargs)
    kwargs.setdefault("num_layers", max(arch.num_layers, 3))
    cfg = ModelConfig(num_classes=num_classes, base_channels=base_channels, **kwargs)  # type: ignore[arg-type]
    return HyCTASNet(arch, cfg, aux=aux, panoptic=panoptic)


class InferenceWrapper(nn.Module):
    """Returns only the logits tensor: the form TorchScript/ONNX export and serving use."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: dict[str, torch.Tensor] = self.model(x)
        return out["out"]
