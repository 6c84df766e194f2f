"""Search space: presets, official JSON, constraints, canonical hash, encoding, sampling."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from hyctas_core import Arch, ArchError, Branch, Cell, MemoryBudget, VectorCodec, get_preset, sample_arch, validate
from hyctas_core.config import ModelConfig
from hyctas_core.network import plan_network
from hyctas_core.presets import PRESETS
from hyctas_core.search_space import OP_NAMES

# Per-cell (Cin, Cout) at F=16, from the official-code memo, section 7.
S_CHANNELS = [
    (128, 85), (85, 171), (171, 171), (171, 171), (171, 341), (341, 427),
    (427, 171), (171, 427), (427, 171), (171, 341), (341, 512),
]  # fmt: skip
M_CHANNELS = [
    (128, 85), (85, 128), (128, 256), (256, 213), (213, 213), (213, 171), (171, 213), (213, 171), (171, 171),
    (171, 213), (213, 213), (213, 256), (256, 256), (256, 128), (128, 171), (171, 256), (256, 512),
]  # fmt: skip


def _l_channels(downs: tuple[int, ...]) -> list[tuple[int, int]]:
    out, chs = [], 128
    for i in range(20):
        nxt = chs * 2 if i in downs else chs
        out.append((chs, nxt))
        chs = nxt
    return out


def branch_channels(name: str) -> list[list[tuple[int, int]]]:
    plan = plan_network(get_preset(name), ModelConfig(base_channels=16))
    cells = {c.key: c for c in plan.cells}
    return [[(cells[k].in_chs, cells[k].out_chs) for k in br.cells] for br in plan.branches]


def test_preset_channels_match_the_official_networks() -> None:
    assert branch_channels("hyctas-s") == [S_CHANNELS]
    assert branch_channels("hyctas-m") == [M_CHANNELS]
    assert branch_channels("hyctas-l") == [_l_channels(()), _l_channels((9,)), _l_channels((5, 11))]


def test_preset_l_shares_its_trunk_like_the_official_code() -> None:
    plan = plan_network(get_preset("hyctas-l"), ModelConfig(base_channels=16))
    b8, b16, b32 = (br.cells for br in plan.branches)
    assert b8[:4] == b16[:4] == b32[:4]  # cells 0-3 shared by all
    assert b8[4:8] == b16[4:8] and b32[4] != b8[4]  # cells 4-7 by the 1/8 and 1/16 branches
    assert b8[8] != b16[8]
    assert len(plan.cells) == 4 + 4 + 16 + 12 + 12  # trunk, b8+b16 trunk, b32 own, b8 own, b16 own


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_official_json_round_trip(name: str) -> None:
    arch = get_preset(name)
    validate(arch)
    data = json.loads(arch.to_json())
    assert Arch.from_official(data) == arch
    assert data["ops"] == PRESETS[name]["ops"]
    assert data["paths"] == PRESETS[name]["paths"]
    assert data["downs"] == PRESETS[name]["downs"]
    assert data["lasts"] == PRESETS[name]["lasts"]
    np.testing.assert_allclose(sum(data["widths"], []), sum(PRESETS[name]["widths"], []))


def test_official_json_errors_name_the_field() -> None:
    good = json.loads(get_preset("hyctas-s").to_json())
    with pytest.raises(ArchError, match="lacks key"):
        Arch.from_official({"ops": good["ops"]})
    bad = {**good, "widths": [[0.3] * 10]}
    with pytest.raises(ArchError, match="cell 0: width 0.3"):
        Arch.from_official(bad)
    bad = {**good, "paths": [[0] * 11]}
    with pytest.raises(ArchError, match="'paths'"):
        Arch.from_official(bad)
    bad = {**good, "lasts": [1]}
    with pytest.raises(ArchError, match="'lasts'"):
        Arch.from_official(bad)
    bad = {**good, "ops": [[9] + good["ops"][0][1:]]}
    with pytest.raises(ArchError, match="op code 9"):
        Arch.from_official(bad)
    with pytest.raises(ArchError, match="not valid JSON"):
        Arch.from_json("{")


def _branch(ops: str, downs: tuple[int, ...] = (), width: int = 4) -> Branch:
    names = {"-": "skip", "C": "conv", "Z": "conv_downup", "W": "conv_2x_downup", "A": "sa"}
    return Branch(
        tuple(Cell(names[o], width if i < len(ops) - 1 else 4, 2 if i in downs else 1) for i, o in enumerate(ops))
    )


def test_constraint_1_at_least_one_path() -> None:
    with pytest.raises(ArchError, match=r"constraint 1 \(at least one path\)"):
        validate(Arch(()))


def test_constraint_2_distinct_down_positions() -> None:
    arch = Arch((_branch("CCCCC", (1,)), _branch("CCCCC", (1, 3))))
    with pytest.raises(ArchError, match=r"constraint 2 .*branches 0 and 1 both down-sample at cell 1"):
        validate(arch)
    validate(Arch((_branch("CCCCC", (2,)), _branch("CCCCC", (1, 3)))))


def test_constraint_3_no_skip_at_down_sampling() -> None:
    with pytest.raises(ArchError, match=r"constraint 3 .*branch 0 cell 2 is skip with stride 2"):
        validate(Arch((_branch("CC-CC", (2,)),)))


def test_constraint_4_memory() -> None:
    big = get_preset("hyctas-l")  # attention at 1/8 of 1024x2048: a 4 GiB map per head and image
    budget = MemoryBudget(limit_bytes=16 * 2**30, base_channels=16, input_size=(1024, 2048), batch_size=2)
    with pytest.raises(ArchError, match=r"constraint 4 \(memory\).*largest cell: cell 19_0 \(sa at 1/8\)"):
        validate(big, memory=budget)
    validate(get_preset("hyctas-s"), memory=budget)


def test_structural_rules() -> None:
    with pytest.raises(ArchError, match="distinct scales"):
        validate(Arch((_branch("CCCC", (1,)), _branch("CCCC", (2,)))))
    with pytest.raises(ArchError, match="last cell cannot down-sample"):
        validate(Arch((_branch("CCCC", (3,)),)))
    with pytest.raises(ArchError, match="at most 2"):
        validate(Arch((_branch("CCCCC", (0, 1, 2)),)))
    with pytest.raises(ArchError, match="depths must match"):
        validate(Arch((_branch("CCCC"), _branch("CCC", (0,)))))
    with pytest.raises(ArchError, match="num_layers=5"):
        validate(Arch((_branch("CCCC"),)), num_layers=5)


def test_canonical_hash_ignores_branch_order() -> None:
    a = get_preset("hyctas-l")
    shuffled = Arch((a.branches[2], a.branches[0], a.branches[1]))
    assert shuffled != a
    assert shuffled.canonical() == a.canonical()
    assert shuffled.hash == a.hash
    assert Arch.from_official(shuffled.to_official()).hash == a.hash
    hashes = {get_preset(n).hash for n in PRESETS}
    assert len(hashes) == 3


def test_codec_is_a_bijection_on_valid_archs() -> None:
    rng = np.random.default_rng(0)
    codec = VectorCodec(8)
    seen: dict[str, tuple[int, ...]] = {}
    for _ in range(500):
        arch = sample_arch(rng, 8)
        x = codec.encode(arch)
        assert ((x >= codec.lower) & (x <= codec.upper)).all()
        back = codec.decode(x)
        assert back == arch.canonical()
        np.testing.assert_array_equal(codec.encode(back), x)
        # injective: distinct archs never share a vector
        assert seen.setdefault(arch.hash, tuple(x)) == tuple(x)
    assert len(set(seen.values())) == len(seen)


def test_codec_rejects_non_canonical_and_repair_fixes_any_vector() -> None:
    rng = np.random.default_rng(1)
    codec = VectorCodec(6)
    x = codec.encode(sample_arch(rng, 6, num_branches=1))
    inactive = next(i for i, (start, _) in enumerate(codec._blocks) if x[start] == 0)
    y = x.copy()
    y[codec._blocks[inactive][0] + 2] = 1
    with pytest.raises(ArchError, match="inactive"):
        codec.decode(y)
    for _ in range(300):
        raw = rng.integers(codec.lower - 1, codec.upper + 2)
        fixed = codec.repair(raw, rng)
        arch = codec.decode(fixed)  # raises if not canonical or invalid
        np.testing.assert_array_equal(codec.encode(arch), fixed)


def test_repair_keeps_valid_vectors_unchanged() -> None:
    rng = np.random.default_rng(2)
    codec = VectorCodec(10)
    for _ in range(100):
        x = codec.encode(sample_arch(rng, 10))
        np.testing.assert_array_equal(codec.repair(x, rng), x)


def test_sampler_prior_and_uniform_choices() -> None:
    rng = np.random.default_rng(3)
    archs = [sample_arch(rng, 10) for _ in range(4000)]
    counts = Counter(a.num_branches for a in archs)
    freq = np.array([counts[k] for k in (1, 2, 3)]) / len(archs)
    np.testing.assert_allclose(freq, [0.2, 0.3, 0.5], atol=0.03)
    ends = Counter(s for a in archs for s in a.last_scales)
    single = Counter(a.last_scales[0] for a in archs if a.num_branches == 1)
    assert min(single.values()) / max(single.values()) > 0.8  # end scale uniform for 1 branch
    assert ends[8] > 0 and ends[16] > 0 and ends[32] > 0
    stride1_ops = Counter(c.op for a in archs for b in a.branches for c in b.cells if c.stride == 1)
    freq_ops = np.array([stride1_ops[o] for o in OP_NAMES]) / sum(stride1_ops.values())
    np.testing.assert_allclose(freq_ops, 0.2, atol=0.01)
    down_ops = Counter(c.op for a in archs for b in a.branches for c in b.cells if c.stride == 2)
    assert "skip" not in down_ops and len(down_ops) == 4
    widths = Counter(c.width for a in archs for b in a.branches for c in b.cells[:-1])
    assert np.ptp(np.array(list(widths.values())) / sum(widths.values())) < 0.01
    for a in archs:
        validate(a, num_layers=10)


def test_sampler_is_deterministic_and_respects_options() -> None:
    a = [sample_arch(np.random.default_rng(7), 12) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    rng = np.random.default_rng(8)
    assert all(sample_arch(rng, 12, num_branches=2).num_branches == 2 for _ in range(50))
    budget = MemoryBudget(limit_bytes=int(1.2 * 2**30), base_channels=8, input_size=(256, 512), batch_size=4)
    from hyctas_core.memory import estimate_train_memory

    for _ in range(30):
        arch = sample_arch(rng, 12, memory=budget)
        est = estimate_train_memory(arch, base_channels=8, input_size=(256, 512), batch_size=4)
        assert est.total_bytes <= budget.limit_bytes
    with pytest.raises(ArchError, match="no valid architecture"):
        sample_arch(rng, 12, memory=MemoryBudget(limit_bytes=1), max_tries=20)
