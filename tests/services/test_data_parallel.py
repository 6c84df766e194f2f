"""Data-parallel training on Ray Train (``services.worker.data_parallel``): two CPU workers (gloo)
train like one process with the whole batch, a killed worker costs nothing but time, and a stop
continues where it left off.

Tolerance (see ``tests/core/test_parallel.py``, which also checks float64 to 1e-10): in float32
the step losses agree to 1e-5 relative and the weights to 1e-4 absolute after 4 steps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")

from hyctas_core.config import ModelConfig  # noqa: E402
from hyctas_core.retrain import RetrainConfig, Retrainer  # noqa: E402
from hyctas_core.search_space import sample_arch  # noqa: E402
from hyctas_core.train import SupernetTrainConfig  # noqa: E402
from services.storage.base import JobState  # noqa: E402
from services.worker.data_parallel import (  # noqa: E402
    KILL_ONCE_ENV,
    ParallelSpec,
    build_trainer,
    fit_data_parallel,
    retrain_datasets,
)
from services.worker.retrain_tune import run_retrain_job  # noqa: E402
from tests.fixtures import write_cityscapes  # noqa: E402
from tests.services.sqlite import sqlite_storage  # noqa: E402

pytestmark = pytest.mark.slow  # a Ray session and six Ray Train runs: about three minutes

CFG = SupernetTrainConfig(
    model=ModelConfig(base_channels=4, num_layers=4, num_classes=19),
    epochs=2,
    batch_size=4,
    crop_size=(32, 64),
    checkpoint_every=50,  # checkpoints (each one reported to Ray Train) at the epoch ends: steps 2 and 4
    log_every=1,
)
TWO = ParallelSpec(workers=2, max_failures=1)


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    data = write_cityscapes(tmp_path_factory.mktemp("data"), train=8, val=2, size=(32, 64))
    return {"config": CFG.to_dict(), "data_dir": str(data)}


@pytest.fixture(scope="module")
def straight(ray_session: None, job: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted two-worker run."""
    root = tmp_path_factory.mktemp("straight")
    seen: list[dict[str, Any]] = []
    summary = fit_data_parallel("supernet", job, root / "run", TWO, storage_path=root / "ray", on_progress=seen.append)
    assert summary["step"] == 4 and not summary["stopped"] and summary["workers"] == 2
    assert seen and seen[-1]["workers"] == 2  # live progress reached the caller
    return root


def _losses(run_dir: Path) -> list[float]:
    records = [json.loads(ln) for ln in (run_dir / "train_log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["event"] == "step"]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=False)["model"]


def test_two_workers_match_one_process_with_the_whole_batch(
    straight: Path, job: dict[str, Any], tmp_path: Path
) -> None:
    torch.set_num_threads(1)
    single = build_trainer("supernet", job, tmp_path / "single", "cpu")
    assert single.parallel.world_size == 1
    single.fit()
    assert _losses(tmp_path / "single") == pytest.approx(_losses(straight / "run"), rel=1e-5)
    one, two = _weights(tmp_path / "single" / "supernet.pt"), _weights(straight / "run" / "supernet.pt")
    assert max(float((one[k].double() - two[k].double()).abs().max()) for k in one) < 1e-4
    # Ray Train kept its own checkpoints in the storage path (the copies a restart resumes from).
    assert list((straight / "ray").rglob("checkpoint_*/last.pt"))


def test_a_killed_worker_resumes_from_ray_trains_checkpoint(
    straight: Path, job: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KILL_ONCE_ENV, f"{tmp_path / 'marker'}:3")
    # A checkpoint every step: Ray Train registers a reported checkpoint a moment after the
    # report, so the run must have reported some before the kill (steps 1 and 2 here).
    every_step = {**job, "config": {**job["config"], "checkpoint_every": 1}}
    summary = fit_data_parallel("supernet", every_step, tmp_path / "run", TWO, storage_path=tmp_path / "ray")
    assert (tmp_path / "marker" / "killed").exists()  # the worker did die, after step 3
    assert summary["restored_from"] == "ray_train"  # run_dir/last.pt was lost with it
    assert summary["step"] == 4
    # Resume is exact: the run ends as if nothing had happened.
    one, two = _weights(straight / "run" / "supernet.pt"), _weights(tmp_path / "run" / "supernet.pt")
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert _losses(tmp_path / "run") == _losses(straight / "run")


def test_a_stopped_run_continues_where_it_stopped_from_the_cli(
    straight: Path, job: dict[str, Any], tmp_path: Path
) -> None:
    """A stop checkpoints every rank at one step; `hyctas train-supernet --resume --workers 2`
    continues it to the weights of an uninterrupted run."""
    from typer.testing import CliRunner

    from hyctas_cli.main import app

    out = tmp_path / "run"
    stopped = fit_data_parallel("supernet", job, out, TWO, storage_path=out / "ray_train", should_stop=lambda: True)
    assert stopped["stopped"] and stopped["step"] < 4
    assert not (out / "supernet.pt").exists()
    config = tmp_path / "train.yaml"
    config.write_text(json.dumps(CFG.to_dict()))  # JSON is YAML
    args = ["train-supernet", "--data", job["data_dir"], "--out", str(out), "--config", str(config), "--resume"]
    result = CliRunner().invoke(app, [*args, "--workers", "2"])
    assert result.exit_code == 0, result.output
    done = json.loads(result.output.strip().splitlines()[-1])
    assert done["step"] == 4 and not done["stopped"] and done["workers"] == 2 and done["restored_from"] is not None
    one, two = _weights(straight / "run" / "supernet.pt"), _weights(out / "supernet.pt")
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert _losses(out) == _losses(straight / "run")


def test_bad_parallel_specs_are_refused() -> None:
    with pytest.raises(ValueError, match="workers must be >= 1"):
        ParallelSpec(workers=0)
    with pytest.raises(ValueError, match="unknown parallel option"):
        ParallelSpec.from_mapping({"workers": 2, "gpus": 1})
    with pytest.raises(ValueError, match="resources_per_worker"):
        ParallelSpec(workers=2, resources_per_worker={"CPU": -1})


def test_a_retrain_job_trains_each_model_on_all_workers(ray_session: None, job: dict[str, Any], tmp_path: Path) -> None:
    cfg = RetrainConfig(
        model=ModelConfig(base_channels=4, num_layers=4, num_classes=19),
        epochs=2,
        batch_size=4,
        crop_size=(32, 64),
        loss="ce",
        checkpoint_every=2,
    )
    arch = sample_arch(np.random.default_rng(0), 4, num_branches=2)
    storage = sqlite_storage()
    job_id = storage.create_job("retrain", {})
    model_id = storage.create_model("m", arch.to_official(), arch.hash, job_id=job_id)
    events: list[dict[str, Any]] = []
    data = Path(job["data_dir"])
    summary = run_retrain_job(
        storage, job_id, data_dir=data, run_root=tmp_path / "runs", config=cfg, on_progress=events.append, parallel=TWO
    )
    model = storage.get_model(model_id)
    assert model.state == JobState.SUCCEEDED and summary["best_model_id"] == model_id
    assert model.metrics["workers"] == 2 and model.metrics["epoch"] == 2 and model.metrics["fps"] > 0
    assert model.checkpoint_uri is not None and model.checkpoint_uri.endswith("/best.pt")
    assert [e["state"] for e in events][-1] == "succeeded" and any(e["state"] == "running" for e in events)
    # The same as one process with the whole batch: the validation mIoU agrees.
    torch.set_num_threads(1)
    single = Retrainer(cfg, arch, *retrain_datasets(data, cfg), tmp_path / "single")
    single.fit()
    assert model.metrics["best_miou"] == pytest.approx(single.best_miou, abs=1e-3)
    with pytest.raises(ValueError, match="asha needs one worker"):
        storage2 = sqlite_storage()
        job2 = storage2.create_job("retrain", {})
        storage2.create_model("m", arch.to_official(), arch.hash, job_id=job2)
        run_retrain_job(storage2, job2, data_dir=data, run_root=tmp_path / "r2", config=cfg, asha=True, parallel=TWO)


def test_the_cli_refuses_a_batch_that_does_not_split(job: dict[str, Any], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from hyctas_cli.main import app

    config = tmp_path / "train.yaml"
    config.write_text(json.dumps(CFG.to_dict()))  # JSON is YAML
    out = tmp_path / "run"
    args = ["train-supernet", "--data", job["data_dir"], "--out", str(out), "--config", str(config)]
    uneven = CliRunner().invoke(app, [*args, "--workers", "3"])
    assert uneven.exit_code == 2
    assert uneven.output.strip() == "error: --workers 3: batch_size 4 does not split evenly over 3 workers"
    assert not out.exists()  # refused before anything was written (a --workers 2 run: the test above)
    # The workers may come from the YAML's `parallel:` section; the flags win over it.
    config.write_text(json.dumps({**CFG.to_dict(), "parallel": {"workers": 3}}))
    from_yaml = CliRunner().invoke(app, args)
    assert from_yaml.exit_code == 2 and "--workers 3: batch_size 4 does not split" in from_yaml.output
    config.write_text(json.dumps({**CFG.to_dict(), "parallel": {"workers": 2, "gpus": 1}}))
    bad = CliRunner().invoke(app, args)
    assert bad.exit_code == 2 and bad.output.strip() == "error: parallel: unknown parallel option(s): gpus"
    from hyctas_cli.parallel import resolve_spec

    section = {"workers": 3, "sync_batchnorm": False}
    assert resolve_spec(section, 2, False, batch_size=4) == ParallelSpec(workers=2, sync_batchnorm=False)
    gpus = ParallelSpec(workers=3, use_gpu=True, sync_batchnorm=False)
    assert resolve_spec(section, None, True, batch_size=6) == gpus
    assert resolve_spec({}, None, False, batch_size=4) == ParallelSpec()  # one worker: the in-process fast path


def test_the_supernet_job_trains_on_its_workers(ray_session: None, job: dict[str, Any], tmp_path: Path) -> None:
    """The worker's handler: a job with ``parallel.workers: 2`` runs on Ray Train and reports progress."""
    from services.settings import Settings
    from services.worker.context import JobContext
    from services.worker.jobs import run_train_supernet

    storage = sqlite_storage()
    payload = {
        "name": "dp",
        "dataset": {"kind": "cityscapes", "path": Path(job["data_dir"]).name},
        "train": CFG.to_dict(),
        "device": "cpu",
        "parallel": {"workers": 2, "use_gpu": False, "resources_per_worker": None},
    }
    job_id = storage.create_job("train_supernet", payload)
    storage.start_job(job_id, "w")
    settings = Settings(artifact_dir=tmp_path / "artifacts", data_dir=Path(job["data_dir"]).parent)
    ctx = JobContext(storage.get_job(job_id), "w", storage, None, settings)
    result = run_train_supernet(ctx)
    assert result["workers"] == 2 and result["steps"] == 4 and Path(result["checkpoint"]).exists()
    assert ctx.progress["workers"] == 2 and ctx.progress["finished"] is True
    assert list((tmp_path / "artifacts" / "ray_train").rglob("checkpoint_*/last.pt"))  # Ray Train's copies
