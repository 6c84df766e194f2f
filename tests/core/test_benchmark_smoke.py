"""Smoke runs of the search-quality benchmarks (`--quick`): the report's shape, never its values."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_supernet_ranking_quick_report_shape(tmp_path: Path) -> None:
    bench = _load("supernet_ranking")
    cache = tmp_path / "standalone.json"
    common = ["--quick", "--seed", "3", "--workdir", str(tmp_path / "w"), "--standalone-cache", str(cache)]
    report = bench.main([*common, "--sampling", "sandwich", "--distill"])
    json.dumps(report, allow_nan=False)  # strict JSON (an undefined correlation is null, never NaN)
    for key in ("kendall_tau", "spearman", "top3_overlap", "standalone_tau"):
        assert report[key] is None or (isinstance(report[key], float) and -1.0 <= report[key] <= 1.0), key
    rows = report["rows"]
    assert len(rows) == 12 and len({r["arch_hash"] for r in rows}) == 12
    assert [r["branches"] for r in rows] == [1] * 4 + [2] * 4 + [3] * 4  # spread over branch counts
    for row in rows:
        assert {"arch_hash", "branches", "supernet_miou", "standalone_miou", "latency_ms"} <= row.keys()
        assert 0.0 <= row["supernet_miou"] <= 1.0 and 0.0 <= row["standalone_miou"] <= 1.0
        assert row["latency_ms"] > 0 and len(row["standalone_runs"]) == 2
    assert report["settings"]["seed"] == 3 and report["settings"]["quick"] is True
    assert report["supernet_config"]["sampling"] == "sandwich" and report["supernet_config"]["distill"] is True
    # the architectures are a function of --seed
    again = bench.pick_archs(
        bench.parse_args(["--quick", "--seed", "3"]),
        bench.ModelConfig(base_channels=4, num_layers=4, num_classes=19),
        (64, 128),
    )
    assert [a.hash for a in again] == [r["arch_hash"] for r in rows]
    # Standalone results do not depend on the supernet: a second option reuses them from the cache.
    other = bench.main([*common, "--warmup-steps", "1"])
    assert [r["standalone_runs"] for r in other["rows"]] == [r["standalone_runs"] for r in rows]
    assert len(json.loads(cache.read_text())) == 24  # 12 archs x 2 seeds, each trained once
    assert other["supernet_config"]["warmup_steps"] == 1 and other["supernet_config"]["sampling"] == "prior"
