"""Retraining the models of a retrain job as Ray Tune trials, one trial per model.

:func:`run_retrain_job` reads the job's models from the storage and hands Ray Tune one trial
per model still to train. A trial (:func:`_train_trial`, in a Ray worker) runs
:class:`~hyctas_core.retrain.Retrainer` and reports after every validated epoch, with a Tune
checkpoint (a snapshot of ``last.pt``, ``best.pt`` and ``train_log.jsonl``); it gets the arch
(official JSON) and the config in its Tune config and never touches the storage. The driver
writes the storage from a Tune :class:`~ray.tune.Callback`:

==========================  ============================================================
Tune event                  model in the storage
==========================  ============================================================
trial started               RUNNING
result (an epoch end)       metrics merged: ``epoch``, ``step``, ``miou``, ``best_miou``
                            (0-1), ``params_m``, ``gmacs`` (batch 1 at the config's crop
                            size, without the auxiliary head), ``fps`` (batch 1, timed for
                            0.3 s beside the other trials: indicative only), ``retries``
trial completed             SUCCEEDED, ``early_stopped`` (ASHA stopped it before the last
                            epoch; ``epoch`` says how far it got), ``checkpoint_uri``: a
                            ``file://`` URI of ``best.pt`` (``last.pt`` if it never validated)
trial errored (no retries   FAILED, ``error``: one line, the trial's exception
left)
==========================  ============================================================

Retries and resume. ``max_failures`` lets Tune retry a failed trial; the retry restores its
last Tune checkpoint (``tune.get_checkpoint()``), or ``run_root/model-<id>/last.pt`` when that
is further along (``last.pt`` is also written every ``checkpoint_every`` steps). A job run
again (another worker took it over after a crash) skips finished models and resumes the
others from their ``last.pt``: it continues, it does not restart. Resume is exact (see
:mod:`hyctas_core.retrain`).

Early stopping. With ``asha=True`` an :class:`~ray.tune.schedulers.ASHAScheduler` (grace 1
epoch, reduction factor 2, ``max_t = config.epochs``) stops trials whose mIoU trails at a
rung. Its time attribute is the reported ``epoch``, not Tune's ``training_iteration``: a trial
resumed from ``last.pt`` by a new Tune run starts counting iterations at 1 although it is at
epoch k, and with ``eval_every > 1`` a trial reports only every ``eval_every`` epochs.

Cancelling. ``should_stop`` is polled by a Tune :class:`~ray.tune.Stopper` (every Tune step,
about 0.1 s); when it turns true Tune stops every trial, the unfinished models are set
CANCELLED and :class:`RetrainCancelled` is raised. An exception raised in the driver while
Tune runs (by ``should_stop``, ``on_progress`` or the storage, e.g. a lost job lease) also
stops every trial and is re-raised as is, not wrapped in a ``TuneError``; the unfinished
models stay RUNNING, as after a crash, so the next run of the job resumes them.

Test hook: when the environment variable ``HYCTAS_TEST_FAIL_ONCE_DIR`` is set in the driver
(it reaches the trials through their config, so it works across Ray worker processes), every
trial fails once right after its first checkpointed report: it writes the marker
``<dir>/model-<id>.failed`` (so the retry does not fail again), deletes its run directory as
if its node's disk were lost, and raises. The retry must then restore from Tune's checkpoint.

Ray Tune quirks handled here: Tune pickles the RunConfig (callbacks, stopper) into
``tuner.pkl`` and its experiment snapshots, so the driver-side objects pickle as empty shells;
Tune's new console output prints a header even with ``verbose=0``, so the legacy engine is
selected for the call (``RAY_AIR_NEW_OUTPUT=0``); trials run with the trial directory as
working directory, so every path handed to them is absolute. On a multi-node cluster
``run_root`` must be a shared file system (Tune's ``storage_path`` is ``run_root/tune``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler
from torch import nn

from hyctas_core.data.base import DatasetError
from hyctas_core.network import plan_network
from hyctas_core.profile import count_macs, count_params, measure_latency
from hyctas_core.retrain import RetrainConfig, Retrainer, RetrainProgress, load_model, read_checkpoint
from hyctas_core.search_space import Arch, ArchError
from hyctas_core.storage import IllegalTransition
from services.storage.base import JobState, ModelRecord, Storage
from services.worker.data_parallel import ParallelSpec, fit_data_parallel, retrain_datasets
from services.worker.ray_init import init_ray

__all__ = ["FAIL_ONCE_ENV", "RetrainCancelled", "run_retrain_job"]

log = logging.getLogger(__name__)

FAIL_ONCE_ENV = "HYCTAS_TEST_FAIL_ONCE_DIR"
_RUN_FILES = ("last.pt", "best.pt", "train_log.jsonl")  # what a Tune checkpoint holds
_SNAPSHOT_DIR = ".tune_checkpoint"  # in the run dir: staged for Tune, rebuilt at every report
_LATENCY_S = 0.3
_RESULT_KEYS = ("epoch", "step", "miou", "best_miou", "params_m", "gmacs", "fps")


class RetrainCancelled(RuntimeError):
    """``should_stop()`` turned true; the models left unfinished were set CANCELLED.

    Attributes:
        summary: what :func:`run_retrain_job` would have returned, at the time of cancelling.
    """

    def __init__(self, message: str, summary: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.summary = summary or {}


# -- trial side (a Ray worker; no storage) -------------------------------------------------
def _profile(model: nn.Module, input_size: tuple[int, int], device: str) -> dict[str, float]:
    """Params (M, without the auxiliary head), GMACs and batch-1 FPS of the network."""
    params = count_params(model)  # the inference network: without the auxiliary head
    # measure_latency draws its input from the global RNG, which training checkpoints: keep it.
    with torch.random.fork_rng(devices=[] if device == "cpu" else None):
        macs = count_macs(model, input_size)
        stats = measure_latency(model, input_size, duration_s=_LATENCY_S, device=device)
    model.train()
    return {"params_m": params / 1e6, "gmacs": macs / 1e9, "fps": stats.fps}


def _snapshot(run_dir: Path) -> Path:
    """Hard-link (or copy) the run's files into a fresh staging dir for a Tune checkpoint.

    ``tune.report`` copies the staged files to Tune's storage before it returns, and nothing
    writes the run dir meanwhile, so links (no copy of the weights) are enough.
    """
    staging = run_dir / _SNAPSHOT_DIR
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in _RUN_FILES:
        src = run_dir / name
        if src.exists():
            try:
                os.link(src, staging / name)
            except OSError:
                shutil.copy2(src, staging / name)
    return staging


def _restore(trainer: Retrainer, checkpoint: tune.Checkpoint | None) -> str | None:
    """Resume the furthest of Tune's checkpoint and ``run_dir/last.pt``; returns which ("tune", "run_dir") or None."""
    local = trainer.run_dir / "last.pt"
    local_step = read_checkpoint(local)[2]["step"] if local.exists() else -1
    source = "run_dir" if local.exists() else None
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            if read_checkpoint(Path(ckpt_dir) / "last.pt")[2]["step"] > local_step:
                trainer.run_dir.mkdir(parents=True, exist_ok=True)
                for name in _RUN_FILES:  # best.pt and the log must match the restored last.pt
                    src, dst = Path(ckpt_dir) / name, trainer.run_dir / name
                    if src.exists():
                        shutil.copy2(src, dst)
                    else:
                        dst.unlink(missing_ok=True)
                source = "tune"
    if source is not None:
        trainer.resume()
    return source


def _fail_once(marker_dir: Path, model_id: int, run_dir: Path) -> None:
    """The ``HYCTAS_TEST_FAIL_ONCE_DIR`` test hook (see the module docstring)."""
    marker = marker_dir / f"model-{model_id}.failed"
    if marker.exists():
        return
    marker_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text("failed once\n")
    shutil.rmtree(run_dir)  # the node is "lost": the retry has only Tune's checkpoint
    raise RuntimeError(f"{FAIL_ONCE_ENV}: injected failure of model {model_id}")


def _train_trial(config: dict[str, Any]) -> None:
    """Retrain one model in a Tune trial: report (with a checkpoint) after every validated epoch."""
    model_id = int(config["model_id"])
    cfg = RetrainConfig.from_dict(config["retrain"])
    device = str(config["device"])
    if device == "cpu":
        torch.set_num_threads(1)  # the trial holds one CPU
    run_dir = Path(config["run_root"]) / f"model-{model_id}"
    train_set, val_set = retrain_datasets(Path(config["data_dir"]), cfg)
    arch = Arch.from_official(config["archs"][str(model_id)])
    trainer = Retrainer(cfg, arch, train_set, val_set, run_dir, device=device)
    restored_from = _restore(trainer, tune.get_checkpoint())
    fixed = {
        "model_id": model_id,
        "restored_from": restored_from,
        "resumed_from_epoch": trainer.epoch,
        **_profile(trainer.model, cfg.crop_size, device),
    }
    fail_once_dir = config.get("fail_once_dir")
    reported_epoch: int | None = None

    def report() -> None:
        nonlocal reported_epoch
        miou = math.nan if trainer.last_miou is None else trainer.last_miou  # ASHA needs the key
        metrics = {**fixed, "epoch": trainer.epoch, "step": trainer.step, "miou": miou, "best_miou": trainer.best_miou}
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(_snapshot(run_dir))))
        reported_epoch = trainer.epoch
        if fail_once_dir:
            _fail_once(Path(fail_once_dir), model_id, run_dir)

    def on_progress(p: RetrainProgress) -> None:
        if trainer.step_in_epoch == 0:  # the call after an epoch end's validation (others are per step)
            report()

    trainer.fit(progress=on_progress)
    if reported_epoch is None or trainer.epoch > reported_epoch:  # last epoch not validated, or nothing to do
        report()


def _trial_dirname(trial: Trial) -> str:
    return f"model-{trial.config['model_id']}-{trial.trial_id}"


# -- driver side ---------------------------------------------------------------------------
class _DriverOnly:
    """Tune pickles its RunConfig (``tuner.pkl``, experiment snapshots) but never unpickles it
    in this flow; the storage and the callables held here cannot be pickled, so pickle an empty shell.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return (object.__new__, (type(self),))


class _CancelStopper(_DriverOnly, tune.Stopper):
    """Stops the whole experiment once ``should_stop()`` is true, or after a driver-side error.

    Attributes:
        cancelled: ``should_stop()`` returned true (latched).
        error: the first exception raised by ``should_stop``, the storage or ``on_progress``
            while Tune ran; the driver re-raises it as is (Tune would wrap it in a TuneError).
    """

    def __init__(self, should_stop: Callable[[], bool] | None) -> None:
        self.should_stop = should_stop
        self.cancelled = False
        self.error: Exception | None = None

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Record an exception and stop the experiment instead of letting it escape into Tune."""
        try:
            yield
        except Exception as e:
            log.error("retrain: stopping every trial after an error in the driver: %r", e)
            self.error = self.error or e

    def stop_all(self) -> bool:
        if not self.cancelled and self.error is None and self.should_stop is not None:
            with self.guard():
                if self.should_stop():
                    log.info("retrain: stop requested, stopping every trial")
                    self.cancelled = True
        return self.cancelled or self.error is not None


def _finite(value: Any) -> Any:
    """NaN (an unvalidated mIoU) becomes None: JSON in the storage cannot hold NaN."""
    return None if isinstance(value, float) and math.isnan(value) else value


def _one_line_error(trial: Trial) -> str:
    """The trial's exception as ``Type: message``, first line only."""
    text = ""
    with contextlib.suppress(Exception):  # unpickling an error class the driver lacks
        err = trial.get_pickled_error()
        cause = getattr(err, "cause", err)
        if isinstance(cause, BaseException):
            text = f"{type(cause).__name__}: {cause}"
    if not text:
        trace = [line for line in str(trial.get_error() or "").splitlines() if line.strip()]
        text = trace[-1] if trace else "the trial failed"
    return text.strip().splitlines()[0][:500]


class _StorageCallback(_DriverOnly, tune.Callback):
    """Mirrors the trials' lifecycle into the storage and ``on_progress`` (runs in the driver)."""

    def __init__(
        self,
        storage: Storage,
        run_root: Path,
        epochs: int,
        on_progress: Callable[[dict[str, Any]], None] | None,
        stopper: _CancelStopper,
    ) -> None:
        self.storage = storage
        self.run_root = run_root
        self.epochs = epochs
        self.on_progress = on_progress
        self.stopper = stopper  # its guard() turns our exceptions into a stopped experiment

    def _update(self, model_id: int, **kwargs: Any) -> None:
        try:
            self.storage.update_model(model_id, **kwargs)
        except IllegalTransition as e:  # finished elsewhere meanwhile (e.g. cancelled through the API)
            log.warning("retrain: model %d not updated: %s", model_id, e)

    def _emit(self, trial: Trial, state: JobState, result: dict[str, Any] | None = None, **extra: Any) -> None:
        if self.on_progress is None:
            return
        result = trial.last_result if result is None else result  # on_trial_result runs before Tune stores it
        event = {k: _finite((result or {}).get(k)) for k in (*_RESULT_KEYS, "restored_from", "resumed_from_epoch")}
        event.update(model_id=int(trial.config["model_id"]), state=state.value, epochs=self.epochs, **extra)
        self.on_progress(event)

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        with self.stopper.guard():
            self._update(int(trial.config["model_id"]), state=JobState.RUNNING)

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        log.warning(
            "retrain: model %s failed (%s); Tune retries it (failure %d of at most %d)",
            trial.config["model_id"],
            _one_line_error(trial),
            trial.num_failures,
            trial.max_failures,
        )

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        with self.stopper.guard():
            metrics = {k: _finite(result[k]) for k in _RESULT_KEYS if k in result}
            self._update(int(trial.config["model_id"]), metrics={**metrics, "retries": trial.num_failures})
            self._emit(trial, JobState.RUNNING, result, retries=trial.num_failures)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        with self.stopper.guard():
            model_id = int(trial.config["model_id"])
            result = trial.last_result or {}
            epoch = int(result.get("epoch", 0))
            run_dir = self.run_root / f"model-{model_id}"
            best = result.get("best_miou") is not None  # best.pt is written at every new best
            uri = (run_dir / ("best.pt" if best else "last.pt")).as_uri()
            metrics = {"early_stopped": epoch < self.epochs, "retries": trial.num_failures}
            self._update(model_id, state=JobState.SUCCEEDED, metrics=metrics, checkpoint_uri=uri)
            shutil.rmtree(run_dir / _SNAPSHOT_DIR, ignore_errors=True)  # Tune holds its own copy
            log.info("retrain: model %d done at epoch %d/%d (%s)", model_id, epoch, self.epochs, uri)
            self._emit(trial, JobState.SUCCEEDED, checkpoint_uri=uri, **metrics)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        with self.stopper.guard():
            model_id = int(trial.config["model_id"])
            error = _one_line_error(trial)
            retries = max(trial.num_failures - 1, 0)
            self._update(model_id, state=JobState.FAILED, error=error, metrics={"retries": retries})
            shutil.rmtree(self.run_root / f"model-{model_id}" / _SNAPSHOT_DIR, ignore_errors=True)
            log.warning("retrain: model %d failed after %d retries: %s", model_id, retries, error)
            self._emit(trial, JobState.FAILED, error=error, retries=retries)


def _job_models(storage: Storage, job_id: int) -> list[ModelRecord]:
    out: list[ModelRecord] = []
    while True:
        page, total = storage.list_models(job_id=job_id, offset=len(out))
        out += page
        if not page or len(out) >= total:
            return out


def _data_error(data_dir: Path, cfg: RetrainConfig) -> str | None:
    """Why the dataset cannot serve this config, or None (checked once, before any trial starts)."""
    if not data_dir.is_dir():
        return f"data directory {str(data_dir)!r} does not exist"
    try:
        train_set, _ = retrain_datasets(data_dir, cfg)
    except DatasetError as e:
        return str(e).splitlines()[0]
    if cfg.model.num_classes != train_set.num_classes:
        return f"model.num_classes is {cfg.model.num_classes}; Cityscapes has {train_set.num_classes} train classes"
    if len(train_set) < cfg.batch_size:
        return f"the training set has {len(train_set)} images, fewer than one batch of {cfg.batch_size}"
    return None


def _arch_error(model: ModelRecord, cfg: RetrainConfig) -> str | None:
    """Why the model's arch cannot be built under ``cfg.model``, or None (no retries for that)."""
    try:
        plan_network(Arch.from_official(model.arch), cfg.model)
    except ArchError as e:
        return f"ArchError: {str(e).splitlines()[0]}"
    return None


def _summary(storage: Storage, job_id: int) -> dict[str, Any]:
    models = {m.id: {**m.metrics, "state": m.state.value} for m in _job_models(storage, job_id)}
    scores: dict[int, float] = {}
    for i, m in models.items():
        score = m.get("best_miou") if m.get("best_miou") is not None else m.get("miou")
        if m["state"] == JobState.SUCCEEDED.value and score is not None:
            scores[i] = float(score)
    best = max(scores, key=lambda i: scores[i]) if scores else None  # ties: the lowest id
    return {"models": models, "best_model_id": best}


@contextlib.contextmanager
def _quiet_tune() -> Iterator[None]:
    """Tune's new console output prints a header even with ``verbose=0``; the legacy one is silent."""
    old = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = old


def _cancel(storage: Storage, job_id: int, model_ids: list[int], run_root: Path) -> RetrainCancelled:
    left = [m.id for m in _job_models(storage, job_id) if m.id in model_ids and not m.state.is_finished()]
    for model_id in left:
        with contextlib.suppress(IllegalTransition):
            storage.update_model(model_id, state=JobState.CANCELLED, error="retrain job cancelled")
        shutil.rmtree(run_root / f"model-{model_id}" / _SNAPSHOT_DIR, ignore_errors=True)
    return RetrainCancelled(f"retrain job {job_id} cancelled; model(s) {left} set CANCELLED", _summary(storage, job_id))


class _Stopped(Exception):
    """``should_stop()`` turned true during a data-parallel run."""


def _retrain_data_parallel(
    storage: Storage,
    model: ModelRecord,
    data_dir: Path,
    run_root: Path,
    config: RetrainConfig,
    spec: ParallelSpec,
    should_stop: Callable[[], bool] | None,
    on_progress: Callable[[dict[str, Any]], None] | None,
) -> None:
    """Retrain one model on ``spec.workers`` Ray Train workers; the storage follows each validated epoch."""
    run_dir = run_root / f"model-{model.id}"
    storage.update_model(model.id, state=JobState.RUNNING)
    seen_epoch = -1

    def emit(state: JobState, metrics: dict[str, Any], **extra: Any) -> None:
        if on_progress is not None:
            event = {k: _finite(metrics.get(k)) for k in _RESULT_KEYS}
            on_progress({**event, "model_id": model.id, "state": state.value, "epochs": config.epochs, **extra})

    def progress(record: dict[str, Any]) -> None:
        nonlocal seen_epoch
        if record.get("epoch", -1) == seen_epoch:
            return
        seen_epoch = record["epoch"]
        metrics = {k: _finite(record.get(k)) for k in ("epoch", "step", "miou", "best_miou")}
        storage.update_model(model.id, metrics={**metrics, "workers": spec.workers})
        emit(JobState.RUNNING, metrics, workers=spec.workers)

    try:
        summary = fit_data_parallel(
            "retrain",
            {"config": config.to_dict(), "data_dir": str(data_dir), "arch": model.arch},
            run_dir,
            spec,
            storage_path=run_root / "ray_train",
            on_progress=progress,
            should_stop=should_stop,
        )
    except RuntimeError as e:
        error = str(e).splitlines()[0]
        storage.update_model(model.id, state=JobState.FAILED, error=error)
        log.warning("retrain: model %d failed: %s", model.id, error)
        emit(JobState.FAILED, {}, error=error)
        return
    if summary["stopped"]:
        raise _Stopped
    best = run_dir / "best.pt"
    checkpoint = best if best.exists() else run_dir / "last.pt"
    net, _, _ = load_model(checkpoint)
    metrics = {
        "epoch": summary["epoch"],
        "step": summary["step"],
        "miou": summary.get("last_miou"),
        "best_miou": summary.get("best_miou"),
        **_profile(net.eval(), config.crop_size, "cpu"),
        "early_stopped": False,
        "retries": 0,
        "workers": spec.workers,
    }
    uri = checkpoint.as_uri()
    storage.update_model(model.id, state=JobState.SUCCEEDED, metrics=metrics, checkpoint_uri=uri)
    log.info("retrain: model %d done on %d workers (%s)", model.id, spec.workers, uri)
    emit(JobState.SUCCEEDED, metrics, checkpoint_uri=uri, workers=spec.workers)


def run_retrain_job(
    storage: Storage,
    job_id: int,
    *,
    data_dir: Path,
    run_root: Path,
    config: RetrainConfig,
    asha: bool = False,
    max_failures: int = 2,
    device: str = "cpu",
    should_stop: Callable[[], bool] | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    parallel: ParallelSpec | None = None,
) -> dict[str, Any]:
    """Retrain every model of job ``job_id`` that is not finished yet, one Ray Tune trial each
    (with ``parallel.workers > 1``: one data-parallel Ray Train run each, in turn).

    Finished models (SUCCEEDED, and FAILED / CANCELLED ones, which the storage's state machine
    keeps final) are skipped; QUEUED and RUNNING ones (left by a crashed worker) are trained,
    resuming ``run_root/model-<id>/last.pt`` where it exists. Unless Ray is already
    initialised, starts a local Ray (never a stale cluster) and shuts it down at the end.

    Args:
        storage: where the job's models live; updated as the trials progress (module docstring).
        job_id: the retrain job.
        data_dir: dataset root in the Cityscapes layout.
        run_root: artifacts: ``run_root/model-<id>/{last.pt, best.pt, train_log.jsonl}``, and
            Tune's experiment in ``run_root/tune/job-<job_id>``.
        config: the retraining config, shared by every model.
        asha: stop weak trials early (ASHA on the validation mIoU, per epoch).
        max_failures: Tune retries per trial, each from its last checkpoint.
        device: ``"cpu"`` or ``"cuda"`` (each trial then asks Tune for one GPU and uses the one
            Ray assigns it; an index such as ``"cuda:1"`` is ignored).
        should_stop: polled about every 0.1 s; true cancels the job.
        on_progress: called in the driver after every trial result, completion and final
            failure with ``{"model_id", "state", "epoch", "epochs", "step", "miou",
            "best_miou", "params_m", "gmacs", "fps", "retries", ...}`` (``miou`` 0-1 or None).
        parallel: data-parallel workers per model (:mod:`services.worker.data_parallel`); with
            more than one, the models train one after another, each on all the workers, and
            ``asha`` is not available (the trials no longer compete).

    Returns:
        ``{"models": {model_id: {**metrics, "state": "succeeded" | ...}}, "best_model_id": id}``
        over every model of the job; the best is the SUCCEEDED model with the highest
        ``best_miou`` (None if there is none).

    Raises:
        ValueError: the dataset is missing or does not fit the config (every model to train is
            set FAILED with that message first); or ``device`` is CUDA and the Ray cluster has
            no GPU (Tune would wait for one forever; the models are left as they were).
        RetrainCancelled: ``should_stop()`` turned true (unfinished models set CANCELLED).
        Exception: whatever ``should_stop``, ``on_progress`` or the storage raised while Tune
            ran, after every trial was stopped (unfinished models stay RUNNING).
    """
    data_dir, run_root = Path(data_dir).resolve(), Path(run_root).resolve()  # trials run in their own cwd
    todo = [m for m in _job_models(storage, job_id) if not m.state.is_finished()]
    todo_ids = [m.id for m in todo]
    if todo and should_stop is not None and should_stop():
        raise _cancel(storage, job_id, todo_ids, run_root)
    if todo and (problem := _data_error(data_dir, config)) is not None:
        for m in todo:
            storage.update_model(m.id, state=JobState.FAILED, error=problem)
        raise ValueError(f"retrain job {job_id}: {problem}")
    runnable = []
    for m in todo:
        if (problem := _arch_error(m, config)) is not None:
            storage.update_model(m.id, state=JobState.FAILED, error=problem)
        else:
            runnable.append(m)
    if not runnable:
        return _summary(storage, job_id)

    use_gpu = device.startswith("cuda")
    started_ray = init_ray()
    if use_gpu and not ray.cluster_resources().get("GPU", 0):  # type: ignore[no-untyped-call]
        if started_ray:
            ray.shutdown()
        raise ValueError(f"retrain job {job_id}: device {device!r} asked, but the Ray cluster has no GPU")
    if parallel is not None and parallel.workers > 1:
        if asha:
            raise ValueError(f"retrain job {job_id}: asha needs one worker per model (Tune trials)")
        spec = dataclasses.replace(parallel, use_gpu=parallel.use_gpu or use_gpu)
        try:
            for m in runnable:
                _retrain_data_parallel(storage, m, data_dir, run_root, config, spec, should_stop, on_progress)
        except _Stopped:
            raise _cancel(storage, job_id, todo_ids, run_root) from None
        finally:
            if started_ray:
                ray.shutdown()
        return _summary(storage, job_id)
    stopper = _CancelStopper(should_stop)
    callback = _StorageCallback(storage, run_root, config.epochs, on_progress, stopper)
    param_space = {
        "model_id": tune.grid_search([m.id for m in runnable]),
        "archs": {str(m.id): m.arch for m in runnable},
        "retrain": config.to_dict(),
        "data_dir": str(data_dir),
        "run_root": str(run_root),
        "device": "cuda" if use_gpu else "cpu",
        "fail_once_dir": os.environ.get(FAIL_ONCE_ENV),
    }
    scheduler = None
    if asha:
        scheduler = ASHAScheduler(
            time_attr="epoch", metric="miou", mode="max", max_t=config.epochs, grace_period=1, reduction_factor=2
        )
    tuner = tune.Tuner(
        tune.with_resources(_train_trial, {"cpu": 1, "gpu": 1 if use_gpu else 0}),
        param_space=param_space,
        tune_config=tune.TuneConfig(scheduler=scheduler, trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(
            name=f"job-{job_id}",
            storage_path=str(run_root / "tune"),
            failure_config=tune.FailureConfig(max_failures=max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[callback],
            stop=stopper,
            verbose=0,
        ),
    )
    log.info("retrain job %d: %d model(s) as Tune trials (asha=%s, device=%s)", job_id, len(runnable), asha, device)
    try:
        with _quiet_tune():
            tuner.fit()
    finally:
        if started_ray:
            ray.shutdown()
    if stopper.error is not None:  # unfinished models stay RUNNING, as after a crash: a re-run resumes them
        raise stopper.error
    if stopper.cancelled:
        raise _cancel(storage, job_id, todo_ids, run_root)
    for m in _job_models(storage, job_id):  # defensive: Tune ended a trial without telling the callback
        if m.id in todo_ids and not m.state.is_finished():
            storage.update_model(m.id, state=JobState.FAILED, error="Tune ended the trial without completing it")
    return _summary(storage, job_id)
