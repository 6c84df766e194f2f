"""Supernet: every sampled arch runs; extraction is exact and holds only used weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hyctas_core.config import ModelConfig
from hyctas_core.layers import SlimBatchNorm2d, SlimConv2d
from hyctas_core.network import HyCTASNet, build
from hyctas_core.presets import PRESETS, get_preset
from hyctas_core.profile import count_params
from hyctas_core.search_space import Arch, ArchError, sample_arch
from hyctas_core.supernet import Supernet
from tests.core.helpers import randomize

SIZE = (97, 131)  # odd on purpose


@pytest.fixture(scope="module")
def small_supernet() -> Supernet:
    torch.manual_seed(0)
    return randomize(Supernet(ModelConfig(base_channels=4, num_layers=8, num_classes=5)), seed=1).eval()  # type: ignore[return-value]


@pytest.fixture(scope="module")
def deep_supernet() -> Supernet:
    torch.manual_seed(0)
    cfg = ModelConfig(base_channels=4, num_layers=20, num_classes=5, output_stride=4)
    return randomize(Supernet(cfg), seed=2).eval()  # type: ignore[return-value]


def _sampled_archs(n: int, num_layers: int, seed: int) -> list[Arch]:
    rng = np.random.default_rng(seed)
    return [sample_arch(rng, num_layers) for _ in range(n)]


def _check_extraction(supernet: Supernet, arch: Arch, x: torch.Tensor) -> None:
    with torch.no_grad():
        ref = supernet(x, arch)["out"]
        net = supernet.extract(arch).eval()
        out = net(x)["out"]
    assert out.shape == (1, supernet.cfg.num_classes, *x.shape[-2:])
    assert ref.abs().mean() > 1e-2  # randomised weights: a real signal, not ~0
    assert (out - ref).abs().max().item() < 1e-5
    assert not any(isinstance(m, SlimConv2d | SlimBatchNorm2d) for m in net.modules())
    fresh = HyCTASNet(arch, supernet.cfg)
    assert count_params(net) == count_params(fresh)


def test_extract_matches_supernet_on_sampled_archs(small_supernet: Supernet) -> None:
    x = torch.randn(1, 3, *SIZE)
    archs = _sampled_archs(60, 8, seed=1)
    assert {a.num_branches for a in archs} == {1, 2, 3}
    assert len({a.combination for a in archs}) == 7  # every output combination / head
    for arch in archs:
        _check_extraction(small_supernet, arch, x)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_extract_matches_supernet_on_presets(deep_supernet: Supernet, name: str) -> None:
    _check_extraction(deep_supernet, get_preset(name), torch.randn(1, 3, *SIZE))


def test_extracted_net_uses_every_parameter() -> None:
    supernet = Supernet(ModelConfig(base_channels=4, num_layers=8, num_classes=5))
    x = torch.randn(2, 3, 64, 96)
    target = torch.randint(0, 5, (2, 64, 96))
    for arch in _sampled_archs(8, 8, seed=3):
        net = supernet.extract(arch, aux=True).train()
        out = net(x)
        assert set(out) == {"out", "aux"}
        loss = F.cross_entropy(out["out"], target) + 0.4 * F.cross_entropy(out["aux"], target)
        loss.backward()
        unused = [n for n, p in net.named_parameters() if p.grad is None]
        assert not unused, f"parameters the arch does not use: {unused[:5]}"


def test_supernet_trains_any_arch_with_aux_and_shares_weights() -> None:
    supernet = Supernet(ModelConfig(base_channels=4, num_layers=6, num_classes=5)).train()
    opt = torch.optim.SGD(supernet.parameters(), lr=0.01)
    rng = np.random.default_rng(4)
    x = torch.randn(2, 3, 48, 64)
    target = torch.randint(0, 5, (2, 48, 64))
    for _ in range(6):
        arch = sample_arch(rng, 6)
        out = supernet(x, arch)
        assert out["out"].shape == out["aux"].shape == (2, 5, 48, 64)
        opt.zero_grad()
        F.cross_entropy(out["out"], target).backward()
        opt.step()
    supernet.set_active(arch)
    assert supernet.active == arch
    assert supernet(x)["out"].shape == (2, 5, 48, 64)


def test_supernet_rejects_bad_archs() -> None:
    supernet = Supernet(ModelConfig(base_channels=4, num_layers=6, num_classes=5))
    with pytest.raises(ArchError, match="allows 6"):
        supernet.set_active(get_preset("hyctas-s"))
    with pytest.raises(RuntimeError, match="no architecture"):
        supernet(torch.randn(1, 3, 32, 32))


def test_build_from_arch_alone() -> None:
    net = build(get_preset("hyctas-m"), num_classes=7, base_channels=4, aux=True).train()
    out = net(torch.randn(2, 3, 65, 81))
    assert out["out"].shape == out["aux"].shape == (2, 7, 65, 81)
    assert set(net.eval()(torch.randn(1, 3, 65, 81))) == {"out"}


def test_output_stride_4_fuses_the_stem_feature() -> None:
    arch = get_preset("hyctas-s")
    os8 = build(arch, base_channels=4, output_stride=8)
    os4 = build(arch, base_channels=4, output_stride=4)
    assert os8.head.s4_proj is None and os4.head.s4_proj is not None
    assert os4.eval()(torch.randn(1, 3, 64, 64))["out"].shape == (1, 19, 64, 64)
