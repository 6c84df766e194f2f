"""Constraint 4: the training-memory estimate against what autograd really saves."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hyctas_core.config import ModelConfig
from hyctas_core.memory import estimate_train_memory
from hyctas_core.network import HyCTASNet
from hyctas_core.presets import get_preset
from hyctas_core.profile import count_params
from hyctas_core.search_space import Arch, sample_arch

SIZE = (96, 160)
F_CH = 8
BATCH = 2


def saved_activation_bytes(arch: Arch) -> tuple[int, int]:
    """Bytes of distinct non-parameter tensors autograd saves in one training step."""
    cfg = ModelConfig(base_channels=F_CH, num_layers=max(arch.num_layers, 3))
    net = HyCTASNet(arch, cfg, aux=True).train()
    params = {p.data_ptr() for p in net.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() not in params:
            storages[t.data_ptr()] = max(storages.get(t.data_ptr(), 0), t.untyped_storage().nbytes())
        return t

    x = torch.randn(BATCH, 3, *SIZE)
    target = torch.randint(0, cfg.num_classes, (BATCH, *SIZE))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = net(x)
        F.cross_entropy(out["out"], target) + 0.4 * F.cross_entropy(out["aux"], target)
    return sum(storages.values()), count_params(net, training_heads=True)  # training memory: aux head too


def _archs() -> list[Arch]:
    rng = np.random.default_rng(5)
    return [get_preset(n) for n in ("hyctas-s", "hyctas-m", "hyctas-l")] + [sample_arch(rng, 8) for _ in range(5)]


@pytest.mark.parametrize("arch", _archs(), ids=lambda a: a.hash)
def test_estimate_matches_saved_tensors(arch: Arch) -> None:
    measured, params = saved_activation_bytes(arch)
    est = estimate_train_memory(arch, base_channels=F_CH, input_size=SIZE, batch_size=BATCH)
    assert 0.9 < est.activation_bytes / measured < 1.1
    assert 0.98 < est.param_bytes / (3 * 4 * params) < 1.02


def test_estimate_scales_with_batch_and_attention() -> None:
    arch = get_preset("hyctas-l")
    one = estimate_train_memory(arch, batch_size=1, input_size=(512, 1024))
    eight = estimate_train_memory(arch, batch_size=8, input_size=(512, 1024))
    assert eight.activation_bytes == 8 * one.activation_bytes
    assert eight.param_bytes == one.param_bytes
    fused = estimate_train_memory(arch, batch_size=1, input_size=(512, 1024), attention_map=False)
    assert fused.total_bytes < one.total_bytes
    assert "sa at 1/8" in one.largest
