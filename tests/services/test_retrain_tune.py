"""Retraining a job's models as Ray Tune trials: storage updates, skip and resume, retries, ASHA, cancel."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from hyctas_core.config import ModelConfig  # noqa: E402
from hyctas_core.retrain import RetrainConfig, Retrainer, load_model  # noqa: E402
from hyctas_core.search_space import Arch, sample_arch  # noqa: E402
from services.storage.base import JobState  # noqa: E402
from services.storage.sql import SQLStorage  # noqa: E402
from services.worker.data_parallel import retrain_datasets  # noqa: E402
from services.worker.retrain_tune import FAIL_ONCE_ENV, RetrainCancelled, run_retrain_job  # noqa: E402
from tests.fixtures import write_cityscapes  # noqa: E402
from tests.services.sqlite import sqlite_storage  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]  # about a minute: Ray, seven Tune runs

MODEL = ModelConfig(base_channels=4, num_layers=6, num_classes=19)
METRICS = ("epoch", "miou", "best_miou", "params_m", "gmacs", "fps", "early_stopped", "retries")


def _cfg(epochs: int) -> RetrainConfig:
    return RetrainConfig(
        model=MODEL,
        epochs=epochs,
        batch_size=2,
        lr=0.2,  # high enough that archs differ after two epochs of three steps
        loss="ce",
        aux_weight=0.0,
        crop_size=(32, 64),
        scale_range=(0.75, 1.25),
        steps_per_epoch=3,
        checkpoint_every=100,
        log_every=100,
    )


def _archs(n: int, seed: int = 0) -> list[Arch]:
    rng = np.random.default_rng(seed)
    return [sample_arch(rng, MODEL.num_layers) for _ in range(n)]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cityscapes(tmp_path_factory.mktemp("data"), train=8, val=2, size=(64, 128))


def _epoch_mious(data: Path, cfg: RetrainConfig, arch: Arch, run_dir: Path) -> list[float]:
    """Validation mIoU after each epoch of an in-process run (the reference for the trials)."""
    trainer = Retrainer(cfg, arch, *retrain_datasets(data, cfg), run_dir)
    mious: list[float] = []
    trainer.fit(progress=lambda p: mious.append(p.miou) if trainer.step_in_epoch == 0 and p.miou is not None else None)
    return mious


def _job(storage: SQLStorage, archs: list[Arch]) -> tuple[int, list[int]]:
    job_id = storage.create_job("retrain", {"archs": [a.hash for a in archs]})
    ids = [storage.create_model(f"m{i}", a.to_official(), a.hash, job_id=job_id) for i, a in enumerate(archs)]
    return job_id, ids


def _path(uri: str) -> Path:
    assert uri.startswith("file://")
    return Path(urlparse(uri).path)


def test_retrains_every_model_then_skips_finished_ones(ray_session: None, data: Path, tmp_path: Path) -> None:
    cfg, archs = _cfg(2), _archs(2)
    storage = sqlite_storage()
    job_id, ids = _job(storage, archs)
    run_root = tmp_path / "runs"
    # Model 2 was half-trained by an earlier worker that crashed: its trial continues from last.pt.
    Retrainer(cfg, archs[1], *retrain_datasets(data, cfg), run_root / f"model-{ids[1]}").fit(max_steps=4)
    events: list[dict[str, Any]] = []
    summary = run_retrain_job(storage, job_id, data_dir=data, run_root=run_root, config=cfg, on_progress=events.append)

    reference = [_epoch_mious(data, cfg, a, tmp_path / f"ref-{i}") for i, a in enumerate(archs)]
    for model_id, arch, mious in zip(ids, archs, reference, strict=True):
        model = storage.get_model(model_id)
        assert model.state == JobState.SUCCEEDED and model.error is None
        assert set(METRICS) <= set(model.metrics)
        assert model.metrics["epoch"] == 2 and model.metrics["early_stopped"] is False and model.metrics["retries"] == 0
        assert model.metrics["params_m"] > 0 and model.metrics["gmacs"] > 0 and model.metrics["fps"] > 0
        # same numbers as an uninterrupted in-process run: trials and resume are exact
        assert model.metrics["best_miou"] == max(mious) and model.metrics["miou"] == mious[-1]
        assert model.checkpoint_uri is not None and model.checkpoint_uri.endswith("/best.pt")
        net, loaded_arch, loaded_cfg = load_model(_path(model.checkpoint_uri))
        assert loaded_arch.hash == model.arch_hash == arch.hash and loaded_cfg == cfg
        assert summary["models"][model_id]["state"] == "succeeded"
    assert summary["best_model_id"] in ids
    firsts = {e["model_id"]: e for e in reversed(events) if e["state"] == "running"}
    assert firsts[ids[0]]["restored_from"] is None and firsts[ids[0]]["resumed_from_epoch"] == 0
    assert firsts[ids[1]]["restored_from"] == "run_dir" and firsts[ids[1]]["resumed_from_epoch"] == 1
    assert {e["model_id"] for e in events if e["state"] == "succeeded"} == set(ids)

    # Run again (another worker takes the job over): nothing is retrained.
    files = [run_root / f"model-{i}" / name for i in ids for name in ("last.pt", "best.pt")]
    mtimes = [f.stat().st_mtime_ns for f in files]
    events.clear()
    again = run_retrain_job(storage, job_id, data_dir=data, run_root=run_root, config=cfg, on_progress=events.append)
    assert again == summary and events == []
    assert [f.stat().st_mtime_ns for f in files] == mtimes


def test_failed_trial_is_retried_from_its_tune_checkpoint(
    ray_session: None, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, archs = _cfg(2), _archs(1)
    storage = sqlite_storage()
    job_id, (model_id,) = _job(storage, archs)
    markers = tmp_path / "markers"
    monkeypatch.setenv(FAIL_ONCE_ENV, str(markers))  # fails after epoch 1's report, deleting its run dir
    events: list[dict[str, Any]] = []
    run_retrain_job(storage, job_id, data_dir=data, run_root=tmp_path / "runs", config=cfg, on_progress=events.append)

    assert (markers / f"model-{model_id}.failed").exists()
    model = storage.get_model(model_id)
    assert model.state == JobState.SUCCEEDED and model.metrics["retries"] == 1 and model.metrics["epoch"] == 2
    restored = [e for e in events if e["restored_from"] == "tune"]
    assert restored and all(e["resumed_from_epoch"] == 1 and e["retries"] == 1 for e in restored)
    assert [e["epoch"] for e in events if e["state"] == "running"] == [1, 2]
    # bit-identical to a run that never failed
    assert model.metrics["best_miou"] == max(_epoch_mious(data, cfg, archs[0], tmp_path / "ref"))
    assert model.checkpoint_uri is not None and _path(model.checkpoint_uri).is_file()


def test_asha_stops_a_weak_model_early(ray_session: None, data: Path, tmp_path: Path) -> None:
    cfg = _cfg(3)
    candidates = _archs(8)
    curves = [_epoch_mious(data, cfg, a, tmp_path / f"ref-{i}") for i, a in enumerate(candidates)]
    order = sorted(range(len(candidates)), key=lambda i: curves[i][1], reverse=True)
    strong, weak = order[:3], order[-1]
    # Precondition: ASHA's rung at epoch 2 sees strong results first (two trials run at a
    # time, in order), and the weak model trails all of them there.
    assert curves[weak][1] < min(curves[i][1] for i in strong), curves
    archs = [candidates[i] for i in (*strong, weak)]
    storage = sqlite_storage()
    job_id, ids = _job(storage, archs)
    summary = run_retrain_job(storage, job_id, data_dir=data, run_root=tmp_path / "runs", config=cfg, asha=True)

    models = [storage.get_model(i) for i in ids]
    assert all(m.state == JobState.SUCCEEDED for m in models)
    for m in models:
        assert m.metrics["early_stopped"] is (m.metrics["epoch"] < cfg.epochs)
        assert m.checkpoint_uri is not None and _path(m.checkpoint_uri).is_file()
    assert models[-1].metrics["early_stopped"] is True and models[-1].metrics["epoch"] < cfg.epochs
    assert models[0].metrics["early_stopped"] is False and models[0].metrics["epoch"] == cfg.epochs
    assert summary["best_model_id"] != ids[-1]


def test_should_stop_cancels_the_unfinished_models(ray_session: None, data: Path, tmp_path: Path) -> None:
    cfg = _cfg(4)
    storage = sqlite_storage()
    job_id, ids = _job(storage, _archs(2, seed=1))
    events: list[dict[str, Any]] = []
    with pytest.raises(RetrainCancelled, match="cancelled") as info:
        run_retrain_job(
            storage,
            job_id,
            data_dir=data,
            run_root=tmp_path / "runs",
            config=cfg,
            should_stop=lambda: bool(events),  # stop at the first epoch result
            on_progress=events.append,
        )
    assert [storage.get_model(i).state for i in ids] == [JobState.CANCELLED] * 2
    assert all(info.value.summary["models"][i]["state"] == "cancelled" for i in ids)


def test_a_driver_error_stops_the_job_and_a_rerun_resumes(ray_session: None, data: Path, tmp_path: Path) -> None:
    cfg, archs = _cfg(2), _archs(1)
    storage = sqlite_storage()
    job_id, (model_id,) = _job(storage, archs)
    run_root = tmp_path / "runs"

    def lease_lost(event: dict[str, Any]) -> None:
        raise RuntimeError("lease lost")

    with pytest.raises(RuntimeError, match="lease lost"):  # as raised, not wrapped in a TuneError
        run_retrain_job(storage, job_id, data_dir=data, run_root=run_root, config=cfg, on_progress=lease_lost)
    model = storage.get_model(model_id)
    assert model.state == JobState.RUNNING and model.metrics["epoch"] == 1  # as after a crash

    events: list[dict[str, Any]] = []
    run_retrain_job(storage, job_id, data_dir=data, run_root=run_root, config=cfg, on_progress=events.append)
    model = storage.get_model(model_id)
    assert model.state == JobState.SUCCEEDED and model.metrics["epoch"] == 2
    assert events[0]["restored_from"] == "run_dir" and events[0]["resumed_from_epoch"] >= 1
    assert model.metrics["best_miou"] == max(_epoch_mious(data, cfg, archs[0], tmp_path / "ref"))


def test_bad_data_arch_or_device_fail_before_tune(ray_session: None, data: Path, tmp_path: Path) -> None:
    cfg = _cfg(1)
    storage = sqlite_storage()
    job_id, ids = _job(storage, _archs(2))
    with pytest.raises(ValueError, match="does not exist"):
        run_retrain_job(storage, job_id, data_dir=tmp_path / "nowhere", run_root=tmp_path / "runs", config=cfg)
    for i in ids:
        model = storage.get_model(i)
        assert model.state == JobState.FAILED and model.error is not None and "does not exist" in model.error

    too_deep = sample_arch(np.random.default_rng(0), MODEL.num_layers + 2)
    job_id, (model_id,) = _job(storage, [too_deep])
    summary = run_retrain_job(storage, job_id, data_dir=data, run_root=tmp_path / "runs", config=cfg)
    model = storage.get_model(model_id)
    assert model.state == JobState.FAILED and model.error is not None and model.error.startswith("ArchError")
    assert summary == {"models": {model_id: {"state": "failed"}}, "best_model_id": None}

    job_id, (model_id,) = _job(storage, _archs(1))
    with pytest.raises(ValueError, match="no GPU"):  # the test cluster has none: Tune would wait forever
        run_retrain_job(storage, job_id, data_dir=data, run_root=tmp_path / "runs", config=cfg, device="cuda")
    assert storage.get_model(model_id).state == JobState.QUEUED
