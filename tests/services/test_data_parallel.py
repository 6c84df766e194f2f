"""Data-parallel training on Ray Train (``services.worker.data_parallel``): two CPU workers (gloo)
train like one process with the whole batch, a killed worker costs nothing but time, and a stop
continues where it left off.

Tolerance (see ``tests/core/test_parallel.py``, which also checks float64 to 1e-10): in float32
the step losses agree to 1e-5 relative and the weights to 1e-4 absolute after 4 steps.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

ray = pytest.importorskip("ray")

from hyctas_core.config import ModelConfig  # noqa: E402
from hyctas_core.train import SupernetTrainConfig  # noqa: E402
from services.worker.data_parallel import KILL_ONCE_ENV, ParallelSpec, build_trainer, fit_data_parallel  # noqa: E402
from tests.fixtures import write_cityscapes  # noqa: E402

pytestmark = pytest.mark.slow  # a Ray session and four Ray Train runs: about a minute

CFG = SupernetTrainConfig(
    model=ModelConfig(base_channels=4, num_layers=4, num_classes=19),
    epochs=2,
    batch_size=4,
    crop_size=(32, 64),
    checkpoint_every=1,
    log_every=1,
)
TWO = ParallelSpec(workers=2, max_failures=1)


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


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
    summary = fit_data_parallel("supernet", job, tmp_path / "run", TWO, storage_path=tmp_path / "ray")
    assert (tmp_path / "marker" / "killed").exists()  # the worker did die, after step 3
    assert summary["restored_from"] == "ray_train"  # run_dir/last.pt was lost with it
    assert summary["step"] == 4
    # Resume is exact: the run ends as if nothing had happened.
    one, two = _weights(straight / "run" / "supernet.pt"), _weights(tmp_path / "run" / "supernet.pt")
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert _losses(tmp_path / "run") == _losses(straight / "run")


def test_a_stopped_run_continues_where_it_stopped(straight: Path, job: dict[str, Any], tmp_path: Path) -> None:
    stopped = fit_data_parallel(
        "supernet", job, tmp_path / "run", TWO, storage_path=tmp_path / "ray", should_stop=lambda: True
    )
    assert stopped["stopped"] and stopped["step"] < 4
    assert not (tmp_path / "run" / "supernet.pt").exists()
    done = fit_data_parallel("supernet", job, tmp_path / "run", TWO, storage_path=tmp_path / "ray")
    assert done["step"] == 4 and not done["stopped"] and done["restored_from"] is not None
    one, two = _weights(straight / "run" / "supernet.pt"), _weights(tmp_path / "run" / "supernet.pt")
    assert all(torch.equal(one[k], two[k]) for k in one)


def test_bad_parallel_specs_are_refused() -> None:
    with pytest.raises(ValueError, match="workers must be >= 1"):
        ParallelSpec(workers=0)
    with pytest.raises(ValueError, match="unknown parallel option"):
        ParallelSpec.from_mapping({"workers": 2, "gpus": 1})
    with pytest.raises(ValueError, match="resources_per_worker"):
        ParallelSpec(workers=2, resources_per_worker={"CPU": -1})
