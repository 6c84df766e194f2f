"""Smoke runs of the search-quality benchmarks (`--quick`): the report's shape, never its values."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from hyctas_core.search_space import validate

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str) -> ModuleType:
    """A benchmark imported under its own name, as its worker processes (spawned) import it."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


@pytest.mark.slow
def test_supernet_ranking_quick_report_shape(tmp_path: Path) -> None:
    bench = _load("supernet_ranking")
    cache = tmp_path / "standalone.json"
    common = ["--quick", "--seed", "3", "--workdir", str(tmp_path / "w"), "--standalone-cache", str(cache)]
    report = bench.main(
        [*common, "--sampling", "sandwich", "--distill", "--supernet-class-weighting", "log", "--jobs", "1"]
        + ["--supernet-seed", "5", "--branch-prior", "1,1,2"]
    )
    json.dumps(report, allow_nan=False)  # strict JSON (an undefined correlation is null, never NaN)
    for key in ("kendall_tau", "spearman", "top3_overlap", "standalone_tau", "standalone_tau_pairs_mean"):
        assert report[key] is None or (isinstance(report[key], float) and -1.0 <= report[key] <= 1.0), key
    assert len(report["kendall_tau_per_seed"]) == 2 and report["reference_tau"] is None  # no halves of 2+ seeds
    assert set(report["proxy_tau"]) == {"gmacs", "params_m", "latency_ms"}
    assert all(v is None or -1.0 <= v <= 1.0 for v in report["proxy_tau"].values())
    matched = report["cost_matched"]
    assert matched["gmacs_ratio"] == 1.5 and 0 <= matched["pairs"] <= 66
    assert all(matched[k] is None or 0.0 <= matched[k] <= 1.0 for k in ("supernet", "gmacs"))
    within = report["kendall_tau_within_branches"]
    assert within is None or (isinstance(within, float) and -1.0 <= within <= 1.0)
    rows = report["rows"]
    assert len(rows) == 12 and len({r["arch_hash"] for r in rows}) == 12
    assert [r["branches"] for r in rows] == [1] * 4 + [2] * 4 + [3] * 4  # spread over branch counts
    for row in rows:
        assert {"arch_hash", "branches", "supernet_miou", "standalone_miou", "latency_ms"} <= row.keys()
        assert 0.0 <= row["supernet_miou"] <= 1.0 and 0.0 <= row["standalone_miou"] <= 1.0
        assert row["latency_ms"] > 0 and len(row["standalone_runs"]) == 2
    assert report["settings"]["seed"] == 3 and report["settings"]["quick"] is True
    assert report["supernet_config"]["sampling"] == "sandwich" and report["supernet_config"]["distill"] is True
    assert report["supernet_config"]["class_weighting"] == "log"
    assert report["supernet_config"]["seed"] == 5 and list(report["supernet_config"]["branch_prior"]) == [1, 1, 2]
    # the architectures are a function of --seed
    again = bench.pick_archs(
        bench.parse_args(["--quick", "--seed", "3"]),
        bench.ModelConfig(base_channels=4, num_layers=4, num_classes=19),
        (64, 128),
    )
    assert [a.hash for a in again] == [r["arch_hash"] for r in rows]
    # Standalone results do not depend on the supernet: a second option reuses them from the cache.
    # More standalone seeds: the first two come from the cache, the reference is the mean of all;
    # the new ones train in two worker processes.
    other = bench.main([*common, "--warmup-steps", "1", "--standalone-seeds", "6", "--jobs", "2"])
    assert [r["standalone_runs"][:2] for r in other["rows"]] == [r["standalone_runs"] for r in rows]
    assert all(len(r["standalone_runs"]) == 6 for r in other["rows"])
    assert len(json.loads(cache.read_text())) == 72  # 12 archs x 6 seeds, each trained once
    assert len(other["kendall_tau_per_seed"]) == 6
    assert other["reference_tau"] is None or -1.0 <= other["reference_tau"] <= 1.0  # 3 seeds against 3
    assert other["supernet_config"]["warmup_steps"] == 1 and other["supernet_config"]["sampling"] == "prior"


def test_supernet_ranking_cost_matched_pairs() -> None:
    bench = _load("supernet_ranking")
    gmacs = [1.0, 1.2, 1.4, 3.0]  # pairs within 1.5x: (0, 1), (0, 2), (1, 2); (x, 3) are not
    truth = [0.10, 0.20, 0.15, 0.90]
    score = [0.30, 0.20, 0.10, 0.00]  # orders (1, 2) as the truth does, (0, 1) and (0, 2) not
    report = bench.cost_matched(gmacs, score, truth)
    assert report == {"gmacs_ratio": 1.5, "pairs": 3, "supernet": round(1 / 3, 4), "gmacs": round(2 / 3, 4)}
    # a tie in the truth is no pair; no pair at all gives None, not a rate
    assert bench.cost_matched([1.0, 1.1], [0.1, 0.2], [0.5, 0.5])["supernet"] is None


def test_supernet_ranking_rejects_a_bad_branch_prior(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load("supernet_ranking")
    for bad in ("0.5,0.5", "a,b,c", "0,0,0", "-1,1,1"):
        with pytest.raises(SystemExit) as exc:
            bench.parse_args(["--branch-prior", bad])
        assert exc.value.code == 2 and "--branch-prior" in capsys.readouterr().err
    args = bench.parse_args(["--seed", "4", "--branch-prior", "1,1,1"])
    assert args.branch_prior == (1.0, 1.0, 1.0) and args.supernet_seed == 4  # the supernet seed follows --seed


def test_synth_separation_quick_report_shape(tmp_path: Path) -> None:
    bench = _load("synth_separation")
    cache = tmp_path / "cache.json"
    report = bench.main(["--quick", "--seed", "2", "--log-every", "0", "--cache", str(cache)])
    json.dumps(report, allow_nan=False)
    groups = report["groups"]
    assert set(groups) == {"multi_attn", "single_conv", "large", "tiny"}
    assert all(len(rows) == 1 for rows in groups.values())
    multi, single = groups["multi_attn"][0], groups["single_conv"][0]
    assert multi["branches"] == 3 and multi["attention"] is True
    assert single["branches"] == 1 and single["attention"] is False
    assert groups["large"][0]["branches"] == 3 and groups["tiny"][0]["branches"] == 1
    for rows in groups.values():
        row = rows[0]
        assert 0.0 <= row["miou"] <= 1.0 and row["latency_ms"] > 0 and row["gmacs"] > 0 and row["params"] > 0
    size = report["gap_size"]
    assert (size["large"], size["tiny"]) == (groups["large"][0]["arch_hash"], groups["tiny"][0]["arch_hash"])
    lo, hi = size["ci95_points"]
    assert lo <= size["points"] <= hi
    gap = report["gap_branches"]
    if single["latency_ms"] <= multi["latency_ms"]:  # a latency-matched rival exists
        assert gap["multi_attn"] == multi["arch_hash"] and gap["single_conv"] == single["arch_hash"]
    else:
        assert gap["points"] is None and "no single_conv network" in gap["why"]
    assert 0.0 <= report["colour_baseline"]["miou"] <= 1.0
    assert report["settings"]["seed"] == 2 and report["settings"]["quick"] is True
    # the architectures are a function of --seed
    again = bench.pick_groups(
        bench.parse_args(["--quick", "--seed", "2"]),
        bench.ModelConfig(base_channels=8, num_layers=8, num_classes=19),
        (64, 128),
    )
    assert {k: [a.hash for a in v] for k, v in again.items()} == {
        k: [r["arch_hash"] for r in v] for k, v in groups.items()
    }
    # Two shards split the networks over a shared cache: the first reports what is missing, the
    # second completes the report, equal to the plain run's.
    shared = tmp_path / "shared.json"
    args = ["--quick", "--seed", "2", "--log-every", "0", "--cache", str(shared)]
    first = bench.main([*args, "--shard", "0/2"])
    assert first["missing"] == ["single_conv[0]", "tiny[0]"]  # networks 1 and 3 of 0..3
    assert "gap_size" not in first and len(json.loads(shared.read_text())) == 2
    second = bench.main([*args, "--shard", "1/2"])

    def trained(r: dict) -> dict:  # what training decides (timings differ from run to run)
        return {g: [(row["arch_hash"], row["miou"]) for row in rows] for g, rows in r["groups"].items()}

    assert "missing" not in second and trained(second) == trained(report)
    assert second["gap_size"]["points"] == report["gap_size"]["points"]
    # A second run takes every network from the cache: the same rows and gaps, nothing retrained.
    assert len(json.loads(cache.read_text())) == 4  # one network per group
    bench.train_eval = None  # would raise if called
    rerun = bench.main(["--quick", "--seed", "2", "--log-every", "0", "--cache", str(cache)])
    assert rerun["groups"] == groups and rerun["gap_size"] == report["gap_size"]


def test_supernet_ranking_width_level_keeps_structure() -> None:
    """Each candidate gets one width level: cells within one step of it, the structure untouched."""
    bench = _load("supernet_ranking")
    rng = np.random.default_rng(0)
    levels_seen = set()
    for _ in range(40):
        arch = bench.sample_arch(rng, 8, num_branches=3)
        leveled = bench._with_width_level(arch, rng)
        assert [[(c.op, c.stride) for c in b.cells] for b in leveled.branches] == [
            [(c.op, c.stride) for c in b.cells] for b in arch.branches
        ]
        widths = [c.width for b in leveled.branches for c in b.cells[:-1]]
        assert max(widths) - min(widths) <= 2  # level - 1 .. level + 1
        assert all(b.cells[-1].width == bench.FULL_WIDTH for b in leveled.branches)
        validate(leveled)
        levels_seen.add(round(float(np.mean(widths))))
    assert len(levels_seen) >= 3  # slim and wide networks both occur
