"""The weight-sharing HyCTAS supernet.

Every (layer, input scale, op, stride) holds one slimmable op at the widest width; an
architecture runs on leading slices of those weights (slimmable convs, sliced BN). Branch
fusion nodes exist once per end scale, and the feature aggregation (fusion + head) once per
output combination of end scales (7 combinations). Surface after OFA: ``set_active(arch)``,
``forward(x, arch=None)``, ``extract(arch)``.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from hyctas_core.config import ModelConfig
from hyctas_core.layers import copy_sliced
from hyctas_core.network import (
    CellPlan,
    HyCTASNet,
    NetPlan,
    _HyCTASBase,
    _new_aggregation,
    _new_aux_head,
    _new_fusion,
    _new_stem,
    combo_key,
    plan_network,
    stem_widths,
)
from hyctas_core.ops import OPS, create_op
from hyctas_core.search_space import SCALES, Arch, num_filters

__all__ = ["Supernet"]


def _all_combinations() -> list[tuple[int, ...]]:
    return [tuple(s for i, s in enumerate(SCALES) if mask >> i & 1) for mask in range(1, 2 ** len(SCALES))]


def _cell_key(layer: int, in_scale: int, op: str, stride: int) -> str:
    return f"{layer}_{in_scale}_{op}_s{stride}"


class Supernet(_HyCTASBase):
    """Weight-sharing supernet over every architecture with up to ``cfg.num_layers`` cells.

    Args:
        cfg: the model configuration (``num_layers`` sets the depth).
        aux: hold auxiliary heads (one per end scale) used in training.
    """

    def __init__(self, cfg: ModelConfig, *, aux: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        F = cfg.base_channels
        stem8 = stem_widths(cfg)[2]
        self.stem = _new_stem(cfg)
        cells = {}
        for layer in range(cfg.num_layers):
            for scale in SCALES[: layer + 1]:
                in_chs = stem8 if layer == 0 else num_filters(scale, F)
                for op in OPS:
                    strides = [1] if op == "skip" or scale == SCALES[-1] or layer == cfg.num_layers - 1 else [1, 2]
                    for stride in strides:
                        out_chs = num_filters(scale * stride, F)
                        cells[_cell_key(layer, scale, op, stride)] = create_op(
                            op, in_chs, out_chs, stride, slim=True,
                            heads=cfg.attn_heads, ratio=cfg.attn_ratio, qk_ratio=cfg.attn_qk_ratio,
                            align_corners=cfg.align_corners,
                        )  # fmt: skip
        self.cells = nn.ModuleDict(cells)
        max8 = max(stem8, num_filters(8, F))
        self.fusions = nn.ModuleDict(
            {
                "16": _new_fusion(16, cfg, [max8], True),
                "32": _new_fusion(32, cfg, [num_filters(16, F), max8], True),
            }
        )
        self.ffms = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        for combination in _all_combinations():
            ffm, head = _new_aggregation(combination, cfg)
            self.ffms[combo_key(combination)] = ffm
            self.heads[combo_key(combination)] = head
        self.aux_heads = nn.ModuleDict({str(s): _new_aux_head(s, cfg) for s in SCALES}) if aux else None
        self._active: Arch | None = None

    # -- choosing a sub-network -----------------------------------------------------------
    @functools.lru_cache(maxsize=4096)  # noqa: B019 - plans are small and archs hashable
    def _plan(self, arch: Arch) -> NetPlan:
        return plan_network(arch, self.cfg)

    def set_active(self, arch: Arch) -> None:
        """Select the sub-network that ``forward(x)`` runs; raises ``ArchError`` if invalid."""
        self._plan(arch)
        self._active = arch

    @property
    def active(self) -> Arch | None:
        return self._active

    def _cell(self, c: CellPlan) -> nn.Module:
        op = self.cells[_cell_key(c.layer, c.in_scale, c.op, c.stride)]
        op.set_out(c.out_chs)  # type: ignore[operator]
        return op

    def _fusion(self, end_scale: int) -> nn.Module:
        return self.fusions[str(end_scale)]

    def _aggregate(self, combination: tuple[int, ...]) -> tuple[nn.Module, nn.Module]:
        key = combo_key(combination)
        return self.ffms[key], self.heads[key]

    def _aux_head(self, end_scale: int) -> nn.Module | None:
        return self.aux_heads[str(end_scale)] if self.aux_heads is not None else None

    def forward(self, x: torch.Tensor, arch: Arch | None = None) -> dict[str, torch.Tensor]:
        """Run ``arch`` (or the active one) on ``x``: ``{"out"}`` (+ ``"aux"`` in training)."""
        arch = arch if arch is not None else self._active
        if arch is None:
            raise RuntimeError("no architecture: pass one or call set_active(arch) first")
        return self._run(x, self._plan(arch))

    # -- extraction -----------------------------------------------------------------------
    def extract(self, arch: Arch, *, aux: bool = False) -> HyCTASNet:
        """A standalone network for ``arch`` holding copies of the shared weights.

        In eval mode its output equals ``self(x, arch)``; it holds only the parameters the
        architecture uses (plus the auxiliary head when ``aux``).
        """
        plan = self._plan(arch)
        net = HyCTASNet(arch, self.cfg, aux=aux and self.aux_heads is not None)
        copy_sliced(net.stem, self.stem)
        for c in plan.cells:
            copy_sliced(net.cells[c.key], self.cells[_cell_key(c.layer, c.in_scale, c.op, c.stride)])
        for key, fusion in net.fusions.items():
            copy_sliced(fusion, self.fusions[key])
        ffm, head = self._aggregate(plan.combination)
        copy_sliced(net.ffm, ffm)
        copy_sliced(net.head, head)
        if net.aux_head is not None:
            src = self._aux_head(plan.branches[-1].end_scale)
            assert src is not None
            copy_sliced(net.aux_head, src)
        return net.train(self.training)
