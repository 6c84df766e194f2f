"""Data-parallel supernet training and retraining on Ray Train (``TorchTrainer``, DDP-style).

:func:`fit_data_parallel` runs one training run (``kind`` ``"supernet"`` or ``"retrain"``) on N
Ray Train workers: gloo on CPU, NCCL on GPU (Ray Train sets up the process group). Each worker
builds the same :class:`~hyctas_core.engine.EpochTrainer` and the engine does the rest (see
:mod:`hyctas_core.parallel`): every rank trains the same seeded sub-network on its slice of the
configured global batch, the gradients of the parameters used are averaged, BatchNorm sees the
global batch. So N workers train like one process with the same batch: the tests compare them
to a stated tolerance.

Checkpoints. Rank 0 writes ``run_dir/last.pt`` (atomically) every ``checkpoint_every`` steps and
at each epoch end, and each of those is also reported as a Ray Train checkpoint (kept in
``RunConfig.storage_path``, the shared artifact directory). When a worker dies, Ray Train
(``FailureConfig(max_failures)``) restarts the group, which resumes from the newer of Ray
Train's latest checkpoint and ``run_dir/last.pt``: resume is exact, so the run ends as if it had
not failed.

Progress and stopping. Ray Train keeps live metrics inside its controller, so the caller gets
them another way: rank 0 writes ``run_dir/progress.json`` at most once a second; creating
``run_dir/STOP`` makes every rank stop at the same step, checkpoint and return (the engine's
``stop`` agreement). :func:`fit_data_parallel` runs ``TorchTrainer.fit`` in a thread and calls
``on_progress`` / polls ``should_stop`` from the calling thread.

A single worker is not routed here: the one-actor path in :mod:`services.worker.jobs` (and the
plain CLI loop) stays the default and the fast path.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hyctas_core.engine import EpochTrainer, atomic_write_text, read_checkpoint_step

__all__ = [
    "ParallelSpec",
    "fit_data_parallel",
    "build_trainer",
    "retrain_datasets",
    "STOP_FILE",
    "PROGRESS_FILE",
    "KILL_ONCE_ENV",
]

STOP_FILE = "STOP"
PROGRESS_FILE = "progress.json"
# Test hook, read in the driver: "<marker dir>:<step>" makes the last rank delete ``run_dir/last.pt``
# and exit hard once, right after that step (as if its node and the run's disk were lost), to
# show that Ray Train restarts the group and the run resumes from Ray Train's last checkpoint.
KILL_ONCE_ENV = "HYCTAS_TEST_KILL_RANK_ONCE"
Kind = Literal["supernet", "retrain"]


@dataclass(frozen=True)
class ParallelSpec:
    """How many Ray Train workers, and what each holds.

    Attributes:
        workers: data-parallel ranks (the global batch is split over them).
        use_gpu: one GPU per worker (NCCL); CPU workers use gloo.
        resources_per_worker: Ray resources per worker, e.g. ``{"CPU": 4, "GPU": 1}`` or a
            custom node label such as ``{"accelerator_type:V100": 0.001}``; by default 1 CPU
            (and 1 GPU with ``use_gpu``).
        max_failures: restarts of the worker group after a worker dies (Ray Train's
            ``FailureConfig``); each resumes from the last checkpoint.
        threads_per_worker: torch threads in each CPU worker (default: its CPU resource).
        sync_batchnorm: BatchNorm over the global batch (exact; one collective per BN layer).
            Off, each worker normalises over its own slice: faster where collectives are
            slow (gloo on CPU), no longer equal to one process.
    """

    workers: int = 1
    use_gpu: bool = False
    resources_per_worker: dict[str, float] | None = None
    max_failures: int = 3
    threads_per_worker: int | None = None
    sync_batchnorm: bool = True

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.max_failures < 0:
            raise ValueError(f"max_failures must be >= 0, got {self.max_failures}")
        for key, value in (self.resources_per_worker or {}).items():
            if not isinstance(value, int | float) or value < 0:
                raise ValueError(f"resources_per_worker[{key!r}] must be a number >= 0, got {value!r}")

    @classmethod
    def from_mapping(cls, data: dict[str, Any] | None) -> ParallelSpec:
        data = dict(data or {})
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown parallel option(s): {', '.join(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def cpus_per_worker(self) -> float:
        return float((self.resources_per_worker or {}).get("CPU", 1))


# -- worker side -----------------------------------------------------------------------------
def retrain_datasets(data_dir: Path, cfg: Any) -> tuple[Any, Any]:
    """Training and validation sets of a retraining run (``hyctas retrain``'s transforms; instance
    maps for a panoptic run).

    Raises:
        DatasetError: a split is missing or malformed.
    """
    from hyctas_core.data.cityscapes import CityscapesDataset
    from hyctas_core.data.transforms import SegTransform

    train_tf = SegTransform(crop_size=cfg.crop_size, scale_range=cfg.scale_range, base_size=cfg.base_size)
    val_tf = SegTransform(crop_size=None, train=False, base_size=cfg.base_size)
    instances = cfg.task == "panoptic"
    train_set = CityscapesDataset(data_dir, "train", transform=train_tf, return_instances=instances, seed=cfg.seed)
    val_set = CityscapesDataset(data_dir, "val", transform=val_tf, return_instances=instances, seed=cfg.seed)
    return train_set, val_set


def build_trainer(
    kind: Kind, job: dict[str, Any], run_dir: Path, device: str, *, sync_batchnorm: bool = True
) -> EpochTrainer[Any, Any]:
    """The trainer of ``job`` (``config``, ``data_dir``; ``arch`` for retraining) on this rank."""
    from hyctas_core.parallel import DataParallel

    parallel = DataParallel.from_process_group(sync_batchnorm=sync_batchnorm)
    data_dir = Path(job["data_dir"])
    if kind == "supernet":
        from hyctas_core.data.cityscapes import CityscapesDataset
        from hyctas_core.data.transforms import SegTransform
        from hyctas_core.train import SupernetTrainConfig, SupernetTrainer

        cfg = SupernetTrainConfig.from_dict(job["config"])
        tf = SegTransform(crop_size=cfg.crop_size, scale_range=cfg.scale_range, base_size=cfg.base_size)
        dataset = CityscapesDataset(data_dir, "train", transform=tf, seed=cfg.seed)
        return SupernetTrainer(cfg, dataset, run_dir, device=device, parallel=parallel)
    from hyctas_core.retrain import RetrainConfig, Retrainer
    from hyctas_core.search_space import Arch

    rcfg = RetrainConfig.from_dict(job["config"])
    train_set, val_set = retrain_datasets(data_dir, rcfg)
    return Retrainer(
        rcfg, Arch.from_official(job["arch"]), train_set, val_set, run_dir, device=device, parallel=parallel
    )


def _restore(trainer: EpochTrainer[Any, Any], checkpoint: Any) -> str | None:
    """Load the furthest of Ray Train's latest checkpoint and ``run_dir/last.pt``; which one, or None."""
    local = trainer.run_dir / "last.pt"
    best: tuple[int, Path, str] | None = (read_checkpoint_step(local), local, "run_dir") if local.exists() else None
    if checkpoint is None:
        if best is not None:
            trainer.load(best[1])
        return None if best is None else best[2]
    with checkpoint.as_directory() as ckpt_dir:
        remote = Path(ckpt_dir) / "last.pt"
        if remote.exists() and (best is None or read_checkpoint_step(remote) > best[0]):
            best = (read_checkpoint_step(remote), remote, "ray_train")
        if best is not None:
            trainer.load(best[1])
    return None if best is None else best[2]


def _train_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: build the trainer, restore, fit; report every checkpoint."""
    import ray.train
    import ray.train.torch
    import torch

    run_dir = Path(config["run_dir"])
    device = str(ray.train.torch.get_device()) if config["use_gpu"] else "cpu"
    if device == "cpu":
        torch.set_num_threads(int(config["threads"]))
    trainer = build_trainer(config["kind"], config["job"], run_dir, device, sync_batchnorm=config["sync_batchnorm"])
    rank = trainer.parallel.rank
    restored = _restore(trainer, ray.train.get_checkpoint())

    def report(path: Path | None) -> None:
        metrics = {"step": trainer.step, "epoch": trainer.epoch, "restored_from": restored}
        if path is None:
            ray.train.report(metrics, checkpoint=None)
            return
        with tempfile.TemporaryDirectory(dir=run_dir) as staging:
            os.link(path, Path(staging) / "last.pt")
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(staging))

    trainer.checkpoint_callbacks.append(report)
    last_write = 0.0
    stop_path = run_dir / STOP_FILE

    kill_once = config.get("kill_once")

    def on_progress(p: Any) -> None:
        nonlocal last_write
        if kill_once and rank == trainer.parallel.world_size - 1:
            _kill_once(kill_once, trainer.step, run_dir)
        now = time.monotonic()
        if rank != 0 or now - last_write < 1.0:
            return
        last_write = now
        record = {**_jsonable(p), "total_steps": trainer.total_steps, "workers": trainer.parallel.world_size}
        atomic_write_text(run_dir / PROGRESS_FILE, json.dumps({**record, "restored_from": restored}))

    summary = trainer.fit(progress=on_progress, stop=stop_path.exists)
    if rank == 0:
        atomic_write_text(run_dir / "summary.json", json.dumps({**summary, "restored_from": restored}))


def _jsonable(p: Any) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(p).items() if v is None or isinstance(v, int | float | str)}


def _kill_once(spec: str, step: int, run_dir: Path) -> None:
    """The :data:`KILL_ONCE_ENV` hook: lose ``last.pt`` and exit hard after step ``<step>``, once."""
    marker_dir, _, at = spec.rpartition(":")
    marker = Path(marker_dir) / "killed"
    if step >= int(at) and not marker.exists():
        Path(marker_dir).mkdir(parents=True, exist_ok=True)
        marker.write_text(f"killed after step {step}\n")
        (run_dir / "last.pt").unlink(missing_ok=True)
        os._exit(1)


# -- driver side -----------------------------------------------------------------------------
def fit_data_parallel(
    kind: Kind,
    job: dict[str, Any],
    run_dir: Path,
    spec: ParallelSpec,
    *,
    storage_path: Path,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    poll_s: float = 0.5,
) -> dict[str, Any]:
    """Train ``job`` on ``spec.workers`` Ray Train workers; the run's summary.

    Args:
        kind: ``"supernet"`` or ``"retrain"``.
        job: ``config`` (the training config as a dict), ``data_dir``; ``arch`` (official JSON)
            for retraining.
        run_dir: ``last.pt``, the log and the final weights (a shared file system across nodes).
        spec: workers and their resources.
        storage_path: Ray Train's storage for its checkpoints (shared across nodes).
        on_progress: called with the latest ``progress.json`` record whenever it changes.
        should_stop: polled; when true the ranks stop together at the next step and the
            summary says ``stopped``.

    Raises:
        RuntimeError: the run failed (after ``max_failures`` restarts); one line with the cause.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / STOP_FILE).unlink(missing_ok=True)
    (run_dir / "summary.json").unlink(missing_ok=True)
    resources = dict(spec.resources_per_worker or {"CPU": 1.0})
    if spec.use_gpu:
        resources.setdefault("GPU", 1.0)
    threads = spec.threads_per_worker or max(1, int(spec.cpus_per_worker))
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={
            "kind": kind,
            "job": job,
            "run_dir": str(run_dir),
            "use_gpu": spec.use_gpu,
            "threads": threads,
            "kill_once": os.environ.get(KILL_ONCE_ENV),
            "sync_batchnorm": spec.sync_batchnorm,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=spec.workers, use_gpu=spec.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=f"{kind}-{run_dir.name}",
            storage_path=str(Path(storage_path).resolve()),
            failure_config=ray.train.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as e:  # noqa: BLE001 - handed to the calling thread
            outcome["error"] = e

    thread = threading.Thread(target=run, name=f"ray-train-{run_dir.name}", daemon=True)
    thread.start()
    seen = ""
    stop_sent = False
    while thread.is_alive():
        thread.join(poll_s)
        text = _read(run_dir / PROGRESS_FILE)
        if text and text != seen and on_progress is not None:
            seen = text
            on_progress(json.loads(text))
        if not stop_sent and should_stop is not None and should_stop():
            (run_dir / STOP_FILE).write_text("stop\n")
            stop_sent = True
    if "error" in outcome:
        cause = outcome["error"]
        raise RuntimeError(f"data-parallel {kind} training failed: {_one_line(cause)}") from cause
    summary_text = _read(run_dir / "summary.json")
    if not summary_text:
        raise RuntimeError(f"data-parallel {kind} training ended without a summary in {run_dir}")
    summary: dict[str, Any] = json.loads(summary_text)
    return {**summary, "workers": spec.workers}


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    for line in reversed(text):  # the innermost cause is usually last
        if line.strip() and ("Error" in line or "error" in line):
            return line.strip()[:300]
    return (text[0] if text else type(e).__name__)[:300]
