"""Candidate ops: shapes at any size and stride, structure, slimmable equivalence."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hyctas_core.layers import copy_sliced, resize
from hyctas_core.ops import OPS, EfficientSelfAttention, LightConv, SkipOp, attn_dim, create_op
from tests.core.helpers import randomize

OP_STRIDES = [(op, s) for op in OPS for s in (1, 2) if not (op == "skip" and s == 2)]


@pytest.mark.parametrize(("op", "stride"), OP_STRIDES)
@pytest.mark.parametrize("size", [(25, 33), (16, 16), (5, 7)])  # odd sizes; 97x131 networks in test_supernet
def test_op_shapes_at_any_size(op: str, stride: int, size: tuple[int, int]) -> None:
    m = create_op(op, 12, 20, stride).train()
    x = torch.randn(2, 12, *size, requires_grad=True)
    y = m(x)
    expected = size if stride == 1 else ((size[0] + 1) // 2, (size[1] + 1) // 2)
    assert y.shape == (2, 20, *expected)
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize(("op", "stride"), OP_STRIDES)
def test_slim_op_equals_plain_op_with_sliced_weights(op: str, stride: int) -> None:
    slim = randomize(create_op(op, 24, 32, stride, slim=True, heads=2, ratio=0.5)).eval()
    for cin, cout in [(24, 32), (10, 21), (16, 16), (8, 32)]:
        plain = create_op(op, cin, cout, stride, heads=2, ratio=0.5).eval()
        copy_sliced(plain, slim)
        slim.set_out(cout)
        x = torch.randn(1, cin, 11, 13)
        torch.testing.assert_close(slim(x), plain(x), rtol=0, atol=1e-5)


def test_skip_is_identity_when_widths_match() -> None:
    m = SkipOp(16, 16)
    assert m.proj is None and not list(m.parameters())
    x = torch.randn(1, 16, 5, 5)
    assert m(x) is x
    assert SkipOp(16, 8).proj is not None
    with pytest.raises(ValueError, match="constraint 3"):
        SkipOp(16, 16, stride=2)


def test_light_conv_is_down_conv_up_plus_bypass() -> None:
    m = randomize(LightConv(8, 12, 1)).eval()
    x = torch.randn(1, 8, 9, 11)
    low = m.convs(F.interpolate(x, size=(5, 6), mode="bilinear", align_corners=False))
    expected = F.relu(resize(low, (9, 11)) + m.bypass(x))  # type: ignore[misc]
    torch.testing.assert_close(m(x), expected)
    assert low.shape[-2:] == (5, 6)
    m2 = LightConv(8, 12, 2)
    assert m2.bypass is None  # stride 2: no bypass, as in the paper's figure and the code


def test_self_attention_matches_a_manual_multi_head_computation() -> None:
    m = randomize(EfficientSelfAttention(16, 16, 1, heads=4, ratio=0.5)).eval()
    assert m.bypass is None  # identity bypass when shapes match
    x = torch.randn(2, 16, 6, 7)
    d = attn_dim(16, 0.5, 4)
    y = m.reduce(x)
    q, k, v = (t.reshape(2, 4, d // 4, 42).transpose(-1, -2) for t in (m.q(y), m.k(y), m.v(y)))
    attn = torch.softmax(q @ k.transpose(-1, -2) / (d // 4) ** 0.5, dim=-1)  # (B, h, N, N)
    a = (attn @ v).transpose(-1, -2).reshape(2, d, 6, 7)
    expected = F.relu(m.expand(F.relu(m.norm(y + a))) + x)
    torch.testing.assert_close(m(x), expected, rtol=1e-4, atol=1e-5)
    assert sum(p.numel() for name, p in m.named_parameters() if "ffn" in name or "mlp" in name) == 0


def test_self_attention_is_a_bottleneck_and_zero_initialised() -> None:
    m = EfficientSelfAttention(32, 64, 2, heads=2, ratio=0.25)
    assert m.reduce.conv.out_channels == attn_dim(64, 0.25, 2) == 16 < 32
    assert (m.expand.bn.weight == 0).all()
    assert m.bypass is not None and m.bypass.conv.stride == (2, 2)
    with pytest.raises(KeyError, match="unknown op 'mlp'"):
        create_op("mlp", 4, 4, 1)
