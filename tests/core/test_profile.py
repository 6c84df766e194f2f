"""Params / MACs counter against hand arithmetic; latency measurement."""

from __future__ import annotations

from torch import nn

from hyctas_core.network import build
from hyctas_core.ops import EfficientSelfAttention
from hyctas_core.presets import get_preset
from hyctas_core.profile import count_macs, count_params, measure_latency
from hyctas_core.search_space import Arch


def test_conv_net_by_hand() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),  # 16x16 out: 3*9*8*256 = 55,296 MACs
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 4, 3, stride=2, padding=1),  # 8x8 out: 8*9*4*64 = 18,432 MACs
        nn.Flatten(),
        nn.Linear(4 * 64, 10),  # 2,560 MACs
    )
    assert count_macs(net, (16, 16)) == 55_296 + 18_432 + 2_560
    assert count_params(net) == 216 + 16 + (288 + 4) + (2560 + 10)


def test_self_attention_by_hand() -> None:
    # in = out = 8 channels, 2 heads, ratio 0.5 -> attention width 4 (2 per head); 6x5 = 30 tokens.
    op = EfficientSelfAttention(8, 8, 1, heads=2, ratio=0.5)
    n = 30
    reduce = 8 * 4 * n
    qkv = 3 * 4 * 4 * n
    attention = 2 * (2 * n * n * 2)  # QK^T and AV, per head N*N*d with d = 2
    expand = 4 * 8 * n
    assert count_macs(op, (6, 5), in_chs=8) == reduce + qkv + attention + expand == 10_560
    # reduce conv 32 + BN 8, q/k/v 3*(16+4), BN 8, expand conv 32 + BN 16; no FFN, no bypass
    assert count_params(op) == 32 + 8 + 60 + 8 + 32 + 16


def test_official_attention_by_hand() -> None:
    """One head at full width, queries and keys at 1/8 (16 -> 2 channels); at half resolution
    (the official head's SAHead) the attention runs on a quarter of the tokens."""
    import torch

    op = EfficientSelfAttention(16, 16, 1, heads=1, ratio=1.0, qk_ratio=0.125)
    assert (op.q.out_channels, op.k.out_channels, op.v.out_channels) == (2, 2, 16)
    n = 8 * 6
    convs = 16 * 16 * n + 2 * 16 * 2 * n + 16 * 16 * n + 16 * 16 * n  # reduce, q and k, v, expand
    assert count_macs(op, (8, 6), in_chs=16) == convs + n * n * (2 + 16)
    half = EfficientSelfAttention(16, 16, 1, heads=1, ratio=1.0, qk_ratio=0.125, half_res=True)
    m = 4 * 3
    assert count_macs(half, (8, 6), in_chs=16) == 2 * 16 * 16 * n + (2 * 16 * 2 + 16 * 16) * m + m * m * (2 + 16)
    x = torch.randn(2, 16, 8, 6, requires_grad=True)
    half.train()
    y = half(x)
    y.sum().backward()
    assert y.shape == x.shape and x.grad is not None and half.q.weight.grad is not None


def test_official_head_predicts_at_full_size_and_trains() -> None:
    """The official head (attention, stride-4 fusion, zoomed double conv) in a whole network."""
    import torch

    from hyctas_core.network import HyCTASNet
    from hyctas_core.presets import preset_model

    net = HyCTASNet(get_preset("hyctas-s"), preset_model("hyctas-s", base_channels=4, num_classes=5)).train()
    out = net(torch.randn(2, 3, 64, 128))["out"]
    assert out.shape == (2, 5, 64, 128)
    out.mean().backward()
    grads = [p.grad for n, p in net.named_parameters() if ".attention." in n]
    assert grads and all(g is not None for g in grads), "the head's attention must be on the graph"


def test_network_counts_grow_with_size_and_width() -> None:
    conv_only = Arch.from_official(
        {"ops": [[1, 2, 3, 1, 2, 1]], "downs": [[0, 1, 0, 1, 0, 0]], "widths": [[1.0] * 5], "lasts": [2]}
    )
    net = build(conv_only, base_channels=4)
    # Convs are linear in pixels, except the squeeze-excitation convs on pooled 1x1 features.
    se = sum(m.in_channels * m.out_channels for m in net.ffm.se if isinstance(m, nn.Conv2d))
    assert se > 0
    assert (count_macs(net, (128, 256)) - se) * 4 + se == count_macs(net, (256, 512))
    m = build(get_preset("hyctas-m"), base_channels=4)
    assert count_macs(m, (128, 256)) * 4 < count_macs(m, (256, 512))  # attention: quadratic
    wide = build(get_preset("hyctas-m"), base_channels=8)
    assert 3.0 < count_params(wide) / count_params(m) < 4.2


def test_measure_latency_reports_a_distribution() -> None:
    net = build(get_preset("hyctas-s"), base_channels=4).eval()
    stats = measure_latency(net, (64, 128), duration_s=0.2, min_runs=5)
    assert stats.runs >= 5
    assert 0 < stats.p10_ms <= stats.median_ms <= stats.p90_ms
    assert stats.fps == 1000.0 / stats.median_ms
    assert stats.device == "cpu"


def test_params_of_a_retrained_network_leave_out_the_training_only_head() -> None:
    from hyctas_core.config import ModelConfig
    from hyctas_core.network import HyCTASNet
    from hyctas_core.presets import get_preset
    from hyctas_core.profile import count_training_head_params

    cfg = ModelConfig(base_channels=4, num_layers=20)
    arch = get_preset("hyctas-s")
    plain, with_aux = HyCTASNet(arch, cfg), HyCTASNet(arch, cfg, aux=True)
    aux = sum(p.numel() for p in with_aux.aux_head.parameters())  # type: ignore[union-attr]
    assert aux > 0 and count_training_head_params(with_aux) == aux and count_training_head_params(plain) == 0
    assert count_params(with_aux) == count_params(plain)  # what inference runs: the same network
    assert count_params(with_aux, training_heads=True) == count_params(plain) + aux


# The official model (MarvinYu1995/HyCTAS @ f915c8d, semantic.yaml, model_type 1) instantiated and
# counted: params without ffm16/ffm32 (computed at inference, then thrown away: they feed only
# the training-only auxiliary heads), and GMACs at 512x1024 the same way (convolutions plus the
# attention matmuls N^2 (C/8 + C)). From the official-code memo, section 12.
OFFICIAL_COUNTS = {
    ("hyctas-s", 12): (7_558_925, 15.505),
    ("hyctas-m", 12): (5_799_062, 18.972),
    ("hyctas-l", 12): (24_632_903, 62.361),
    ("hyctas-s", 16): (13_417_510, 26.933),
    ("hyctas-m", 16): (10_276_867, 32.665),
    ("hyctas-l", 16): (43_741_239, 106.076),
}


def test_presets_are_the_official_networks_and_lite_presets_lighter() -> None:
    """hyctas-s/m/l count the official params within 1 % at F=12 and F=16, and its MACs at F=12;
    the -lite presets have the same cells with the light modules, and cost less."""
    from hyctas_core.network import HyCTASNet
    from hyctas_core.presets import preset_model

    for (name, f), (params, gmacs) in OFFICIAL_COUNTS.items():
        net = HyCTASNet(get_preset(name), preset_model(name, base_channels=f)).eval()
        assert abs(count_params(net) / params - 1) < 0.01, (name, f, count_params(net))
        if f == 12:
            ours = count_macs(net, (512, 1024)) / 1e9
            assert abs(ours / gmacs - 1) < 0.01, (name, f, ours)
            lite = HyCTASNet(get_preset(name + "-lite"), preset_model(name + "-lite", base_channels=f)).eval()
            assert get_preset(name + "-lite") == get_preset(name)
            assert lite.cfg.output_stride == 8 and lite.cfg.head == "light"
            assert count_params(lite) < count_params(net) and count_macs(lite, (256, 512)) < count_macs(net, (256, 512))
