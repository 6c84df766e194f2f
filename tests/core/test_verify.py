"""Verification of a search's front: which points, the rank correlations, resume, and a real retrain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hyctas_core.config import ModelConfig
from hyctas_core.data.cityscapes import CityscapesDataset
from hyctas_core.data.transforms import SegTransform
from hyctas_core.search import SearchConfig
from hyctas_core.search_runner import StopSearch
from hyctas_core.search_space import sample_arch
from hyctas_core.storage import GenerationRecord, IndividualRecord, SearchState
from hyctas_core.storage_memory import InMemorySearchStore
from hyctas_core.train import SupernetTrainConfig, SupernetTrainer
from hyctas_core.verify import (
    VerifyConfig,
    fidelity,
    pick_points,
    retrain_point,
    run_verification,
    verification_summary,
)
from tests.fixtures import write_cityscapes


def _ind(i: int, miou: float, latency: float) -> IndividualRecord:
    return IndividualRecord(0, f"h{i:02d}", {"i": i}, 1 + i % 3, {"miou": miou, "latency_ms": latency})


def _finished_search(storage: InMemorySearchStore, front: list[IndividualRecord]) -> int:
    config = SearchConfig(pop_size=8, generations=1, num_layers=4)
    sid = storage.create_search("s", {"search": config.to_dict(), "evaluator": {}})
    storage.set_search_state(sid, SearchState.RUNNING)
    gen = GenerationRecord(0, 0.5, [i.arch_hash for i in front], len(front), len(front), b"state")
    storage.commit_generation(sid, gen, front, [])
    storage.set_search_state(sid, SearchState.SUCCEEDED)
    return sid


def test_points_spread_over_the_front_by_cost() -> None:
    front = [_ind(i, 0.1 + 0.01 * i, 10.0 + i) for i in range(10)]
    shuffled = [front[i] for i in np.random.default_rng(0).permutation(10)]
    picked = pick_points(shuffled, 4, "latency_ms")
    assert [p.arch_hash for p in picked] == ["h00", "h03", "h06", "h09"]  # both ends, evenly spaced
    assert [p.arch_hash for p in pick_points(front[:3], 5, "latency_ms")] == ["h00", "h01", "h02"]
    assert len(pick_points(front, 10, "latency_ms")) == 10


def test_fidelity_values() -> None:
    assert fidelity([1, 2, 3, 4], [10, 20, 30, 40]) == {"kendall_tau": 1.0, "spearman": 1.0}
    assert fidelity([1, 2, 3, 4], [4, 3, 2, 1]) == {"kendall_tau": -1.0, "spearman": -1.0}
    # one swapped pair of 6: (5 - 1) / 6 concordant minus discordant pairs
    assert fidelity([1, 2, 3, 4], [1, 3, 2, 4]) == {"kendall_tau": 0.6667, "spearman": 0.8}
    assert fidelity([0.5, 0.5, 0.5], [1, 2, 3]) == {"kendall_tau": None, "spearman": None}
    assert fidelity([0.5], [1]) == {"kendall_tau": None, "spearman": None}


def test_config_bounds() -> None:
    with pytest.raises(ValueError, match="rank correlation needs 2 points"):
        VerifyConfig(k=1)
    with pytest.raises(ValueError, match="2..16"):
        VerifyConfig(k=17)
    with pytest.raises(ValueError, match="epochs"):
        VerifyConfig(k=3, epochs=0)
    with pytest.raises(ValueError, match="unknown verify config key"):
        VerifyConfig.from_dict({"k": 3, "epoch": 2})
    assert VerifyConfig.from_dict(VerifyConfig(k=3, epochs=2).to_dict()) == VerifyConfig(k=3, epochs=2)


def test_verification_stores_each_point_and_resumes_after_a_failure() -> None:
    storage = InMemorySearchStore()
    front = [_ind(i, 0.1 + 0.02 * i, 5.0 + i) for i in range(6)]
    sid = _finished_search(storage, front)
    retrained = {"h00": 0.2, "h02": 0.3, "h03": 0.25, "h05": 0.6}  # one pair swapped against the supernet
    calls: list[str] = []
    seen: list[int] = []

    def failing(row: dict[str, Any]) -> float:
        calls.append(row["arch_hash"])
        assert row["arch"] == {"i": int(row["arch_hash"][1:])}  # the stored arch travels with the row
        if len(calls) == 3:
            raise RuntimeError("out of memory\nsecond line")
        return retrained[row["arch_hash"]]

    cfg = VerifyConfig(k=4, epochs=1)
    with pytest.raises(RuntimeError):
        run_verification(storage, sid, cfg, failing, on_point=lambda r: seen.append(r["done"]))
    record = storage.get_search(sid).verification
    assert record is not None and record["state"] == "failed" and record["done"] == 2 and seen == [1, 2]
    assert record["error"] == "RuntimeError: out of memory"
    assert [r["arch_hash"] for r in record["rows"]] == ["h00", "h02", "h03", "h05"]
    assert [r["retrained_miou"] for r in record["rows"]] == [0.2, 0.3, None, None]
    assert "failed after 2/4" in verification_summary(record)

    calls.clear()

    def retrain(row: dict[str, Any]) -> float:
        calls.append(row["arch_hash"])
        return retrained[row["arch_hash"]]

    done = run_verification(storage, sid, cfg, retrain)
    assert calls == ["h03", "h05"]  # only the points still missing
    assert done == storage.get_search(sid).verification
    assert done["state"] == "succeeded" and done["done"] == 4 and done["k"] == 4 and done["error"] is None
    assert done["kendall_tau"] == 0.6667 and done["spearman"] == 0.8
    assert [r["supernet_miou"] for r in done["rows"]] == [0.1, 0.14, 0.16, 0.2]
    assert verification_summary(done) == (
        "supernet fidelity: Kendall tau +0.67 (Spearman +0.80) over 4 retrained front points"
    )


def test_a_stop_leaves_the_verification_resumable() -> None:
    storage = InMemorySearchStore()
    sid = _finished_search(storage, [_ind(i, 0.1 * (i + 1), 1.0 + i) for i in range(3)])
    stop_after = [1]

    def retrain(row: dict[str, Any]) -> float:
        if stop_after[0] == 0:
            raise StopSearch("lease lost")
        stop_after[0] -= 1
        return 0.5

    with pytest.raises(StopSearch):
        run_verification(storage, sid, VerifyConfig(k=3), retrain)
    record = storage.get_search(sid).verification
    assert record is not None and record["state"] == "running" and record["done"] == 1
    stopped = run_verification(storage, sid, VerifyConfig(k=3), lambda row: 0.5, should_stop=lambda: True)
    assert stopped["state"] == "running" and stopped["done"] == 1
    assert verification_summary(stopped) == "supernet fidelity: verification running (1/3 retrained)"


def test_a_front_of_one_point_cannot_be_verified() -> None:
    storage = InMemorySearchStore()
    sid = _finished_search(storage, [_ind(0, 0.3, 2.0)])
    with pytest.raises(ValueError, match="1 front point"):
        run_verification(storage, sid, VerifyConfig(k=3), lambda row: 0.5)


@pytest.mark.slow
def test_retrain_point_trains_the_searched_subnetwork(tmp_path: Path) -> None:
    """A real short retrain: the supernet's model and crop, one epoch; resumes from its own checkpoint."""
    root = write_cityscapes(tmp_path / "data", train=4, val=2, size=(64, 128))
    model = ModelConfig(base_channels=4, num_layers=4, num_classes=19)
    cfg = SupernetTrainConfig(model=model, epochs=1, batch_size=2, crop_size=(64, 96))
    dataset = CityscapesDataset(root, "train", transform=SegTransform(crop_size=(64, 96)))
    SupernetTrainer(cfg, dataset, tmp_path / "sn").fit()
    arch = sample_arch(np.random.default_rng(0), 4)
    steps: list[int] = []
    verify = VerifyConfig(k=2, epochs=1, batch_size=2)
    kwargs: dict[str, Any] = {"supernet": tmp_path / "sn" / "supernet.pt", "data": root, "cfg": verify}
    miou = retrain_point(
        arch.to_official(), val_images=2, run_dir=tmp_path / "r", progress=lambda p: steps.append(p.step), **kwargs
    )
    assert 0.0 <= miou <= 1.0 and steps == [1, 2, 2]  # 4 images / batch 2, then the validation report
    again = retrain_point(arch.to_official(), val_images=2, run_dir=tmp_path / "r", **kwargs)
    assert again == miou  # finished run: resumed from its checkpoint, not trained twice
