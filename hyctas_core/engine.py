"""The one training engine: epochs of seeded batches, checkpoints, exact resume, a JSON-lines log.

Supernet training (:class:`hyctas_core.train.SupernetTrainer`) and retraining
(:class:`hyctas_core.retrain.Retrainer`) are both an :class:`EpochTrainer`: the engine owns the
loop, the position in the run, the checkpoint file and its checks, the log and the summary; a
subclass says what one step does, what its progress report holds, and what it keeps in a
checkpoint besides the engine's own state.

Exact resume: the data order of an epoch is a pure function of (seed, epoch), each sample's
augmentation one of (seed, epoch, index); a checkpoint holds the torch RNG, the position in the
epoch and whatever state the subclass draws from, so a run stopped and resumed ends with
bit-identical weights on CPU. ``last.pt`` is written atomically every ``checkpoint_every``
steps, at each epoch end and when stopping early; log lines written after it are dropped on
resume (they will be written again).

Data parallel: when a ``torch.distributed`` process group is initialised (Ray Train's
``TorchTrainer`` does it; see :mod:`hyctas_core.parallel`) every rank runs this same loop on its
slice of each global batch, gradients are averaged over the ranks before the optimiser step,
and BatchNorm layers use the global batch's statistics, so N ranks train like one process with
the configured ``batch_size``. Rank 0 alone writes ``last.pt`` and the log; each rank's RNG
state goes into the checkpoint, so that resume stays exact.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from hyctas_core.config import ModelConfig
from hyctas_core.configbase import ConfigBase
from hyctas_core.data.base import label_frequencies
from hyctas_core.losses import CLASS_WEIGHTINGS, LOSSES, ClassWeighting, log_class_weights
from hyctas_core.parallel import DataParallel, convert_sync_batchnorm

__all__ = [
    "EpochTrainer",
    "StepProgress",
    "TrainingConfig",
    "read_checkpoint_file",
    "read_checkpoint_step",
    "atomic_save",
    "atomic_write_text",
    "epoch_batches",
    "epoch_order",
    "steps_per_epoch",
]

P = TypeVar("P")  # the progress report of one step
C = TypeVar("C", bound="TrainingConfig")
M = TypeVar("M", bound=torch.nn.Module)


@dataclass(frozen=True)
class StepProgress:
    """What every run reports after a step; supernet training and retraining add their own fields."""

    step: int
    total_steps: int
    epoch: int
    loss: float
    lr: float
    images_per_s: float


@dataclass(frozen=True)
class TrainingConfig(ConfigBase):
    """What every training run shares (supernet training and retraining extend it)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    epochs: int = 30
    batch_size: int = 16
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 5e-4
    loss: str = "ce"  # "ce", "topk" (the official DeepLabCE, top ``top_k``) or "ohem"
    top_k: float = 0.2
    # "log": ENet's class weights 1 / ln(class_weight_c + share), the shares read from the
    # training labels; "none": every pixel counts the same.
    class_weighting: ClassWeighting = "none"
    class_weight_c: float = 1.1
    aux_weight: float = 0.2  # weight of the auxiliary head's loss
    crop_size: tuple[int, int] = (256, 512)
    scale_range: tuple[float, float] = (0.5, 2.0)
    # Resize every image to this size first (e.g. half resolution); None keeps them.
    base_size: tuple[int, int] | None = None
    seed: int = 0
    num_workers: int = 0
    grad_clip: float | None = None  # global gradient-norm clipping
    steps_per_epoch: int | None = None  # cap; None = one pass over the training set
    checkpoint_every: int = 50  # steps
    log_every: int = 10  # steps

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be topk, ohem or ce, got {self.loss!r}")
        if self.class_weighting not in CLASS_WEIGHTINGS:
            choices = ", ".join(CLASS_WEIGHTINGS)
            raise ValueError(f"class_weighting must be one of {choices}, got {self.class_weighting!r}")
        if self.class_weight_c <= 1.0:
            raise ValueError(f"class_weight_c must be > 1, got {self.class_weight_c}")
        if self.aux_weight < 0:
            raise ValueError(f"aux_weight must be >= 0, got {self.aux_weight}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1 or null, got {self.steps_per_epoch}")


def _torch_load(path: Path, device: torch.device | str) -> Any:
    """``torch.load`` of a checkpoint; any unpickling failure is a ValueError naming the file."""
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as e:  # any unpickling failure means "not a checkpoint"
        raise ValueError(f"{path}: cannot be read as a checkpoint ({type(e).__name__})") from None


def read_checkpoint_file(path: Path, fmt: str, what: str, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint dict of format ``fmt``, loaded on ``device``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a checkpoint, or one of another format (``what`` names the kind).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} checkpoint {str(path)!r} does not exist")
    ckpt = _torch_load(path, device)
    if not isinstance(ckpt, dict) or ckpt.get("format") != fmt:
        raise ValueError(f"{path}: not a HyCTAS {what} checkpoint")
    return ckpt


def read_checkpoint_step(path: Path) -> int:
    """The global step a ``last.pt`` (of any run kind) was written at.

    Raises:
        ValueError: the file is not a checkpoint.
    """
    ckpt = _torch_load(Path(path), "cpu")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("step"), int):
        raise ValueError(f"{path}: not a HyCTAS training checkpoint")
    return int(ckpt["step"])


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file through a temporary file and a rename (readers never see half of it)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename: a crash never leaves a torn checkpoint."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def steps_per_epoch(dataset: Sized, batch_size: int, cap: int | None) -> int:
    """Full batches per epoch (``drop_last``), at most ``cap``.

    Raises:
        ValueError: the dataset holds less than one batch.
    """
    n = len(dataset)
    full = n // batch_size
    if full < 1:
        raise ValueError(f"the training set has {n} images, fewer than one batch of {batch_size}")
    return min(full, cap) if cap else full


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled sample order of ``epoch``."""
    return np.random.default_rng([seed, 1, epoch]).permutation(n)


def epoch_batches(
    dataset: Dataset[dict[str, Any]],
    *,
    seed: int,
    epoch: int,
    first_step: int,
    steps: int,
    batch_size: int,
    num_workers: int = 0,
    parallel: DataParallel | None = None,
) -> Iterator[dict[str, Any]]:
    """Batches ``first_step .. steps - 1`` of ``epoch`` (calls ``dataset.set_epoch`` if it has one).

    With ``parallel``, this rank's slice of each global batch of ``batch_size``.
    """
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    order = epoch_order(len(dataset), seed, epoch)  # type: ignore[arg-type]
    parallel = parallel or DataParallel()
    indices = parallel.shard(order.tolist(), first_step, steps, batch_size)
    local = parallel.local_batch(batch_size)
    loader = DataLoader(dataset, batch_size=local, sampler=indices, drop_last=True, num_workers=num_workers)
    yield from loader


class EpochTrainer(abc.ABC, Generic[C, P]):
    """The loop, checkpoints and log of a training run; subclasses define one step.

    Args:
        cfg: the run's configuration (stored in every checkpoint; a resume needs the same).
        train_set: items are dicts with ``"image"`` and ``"label"`` (all of one size);
            ``set_epoch(e)`` is called if present.
        run_dir: ``last.pt`` and ``train_log.jsonl`` go here (and whatever the subclass writes).
        device: ``"cpu"`` or a CUDA device.
        parallel: this process's rank in a data-parallel run; by default the initialised
            process group's, or a single process.
    """

    checkpoint_format: ClassVar[str]
    config_type: ClassVar[type[ConfigBase]]

    def __init__(
        self,
        cfg: C,
        train_set: Dataset[dict[str, Any]],
        run_dir: Path,
        *,
        device: str = "cpu",
        parallel: DataParallel | None = None,
    ) -> None:
        self.cfg = cfg
        self.train_set = train_set
        self.run_dir = Path(run_dir)
        self.device = torch.device(device)
        self.parallel = parallel if parallel is not None else DataParallel.from_process_group()
        self.parallel.local_batch(cfg.batch_size)  # raises unless the batch splits over the ranks
        self.steps_per_epoch = steps_per_epoch(train_set, cfg.batch_size, cfg.steps_per_epoch)  # type: ignore[arg-type]
        self.epoch = 0
        self.step_in_epoch = 0
        self.step = 0
        self._log_lines = 0
        # Called on every rank after each checkpoint, with the path rank 0 wrote (None elsewhere).
        self.checkpoint_callbacks: list[Callable[[Path | None], None]] = []

    @property
    def total_steps(self) -> int:
        return self.cfg.epochs * self.steps_per_epoch

    @property
    def finished(self) -> bool:
        return self.epoch >= self.cfg.epochs

    # -- what a subclass defines -------------------------------------------------------------
    @abc.abstractmethod
    def train_step(self, batch: dict[str, Any]) -> tuple[float, Any]:
        """One optimiser step on ``batch``; (loss, what :meth:`progress_of` needs besides it)."""

    @abc.abstractmethod
    def progress_of(self, loss: float, extra: Any, images_per_s: float) -> P:
        """The progress report of the step just taken."""

    @abc.abstractmethod
    def run_state(self) -> dict[str, Any]:
        """What ``last.pt`` holds besides the engine's position, config, torch RNG and log length."""

    @abc.abstractmethod
    def load_run_state(self, ckpt: dict[str, Any], path: Path) -> None:
        """Restore :meth:`run_state` from a checkpoint (already checked by :meth:`check_checkpoint`)."""

    def check_checkpoint(self, ckpt: dict[str, Any], path: Path) -> None:
        """Raise ValueError unless ``ckpt`` continues this run: its format and its config (normalised)."""
        if ckpt.get("format") != self.checkpoint_format:
            raise ValueError(f"{path}: not a {self.checkpoint_format} checkpoint (format {ckpt.get('format')!r})")
        mine = self.cfg.to_dict()
        try:  # normalised: checkpoints from before a config key existed hold its default
            theirs = self.config_type.from_mapping(ckpt["config"]).to_dict()
        except (KeyError, ValueError):
            theirs = ckpt.get("config", {})
        if theirs != mine:
            diff = sorted(k for k in set(mine) | set(theirs) if theirs.get(k) != mine.get(k))
            raise ValueError(f"{path}: checkpoint was trained with a different config (differs in {diff})")

    def start_epoch(self) -> None:
        """Called before the batches of an epoch (e.g. a per-epoch schedule)."""

    def end_epoch(self, last: P | None, progress: Callable[[P], None] | None) -> None:
        """Called after an epoch (``self.epoch`` already counts it): log it, checkpoint."""
        self.log({"event": "epoch", "epoch": self.epoch, "step": self.step})
        self.save()

    def finish(self) -> None:
        """Called once when the last epoch is done (e.g. write the final weights)."""

    def class_weights(self) -> torch.Tensor | None:
        """The loss's per-class weights (``cfg.class_weighting``), on the device; None = unweighted.

        Read from the training set's label maps (a fixed subset of at most 256), so every rank
        and every resumed run computes the same weights.
        """
        if self.cfg.class_weighting == "none":
            return None
        freq = label_frequencies(self.train_set, self.cfg.model.num_classes, seed=self.cfg.seed)
        return log_class_weights(freq, self.cfg.class_weight_c).to(self.device)

    def step_record(self, info: P) -> dict[str, Any]:
        """The log line of a step (every ``log_every`` steps)."""
        return dataclasses.asdict(info)  # type: ignore[call-overload,no-any-return]

    def summary_extra(self) -> dict[str, Any]:
        """What :meth:`fit`'s summary adds to the engine's own keys."""
        return {}

    def rank_state(self) -> dict[str, Any]:
        """What differs between the ranks of a data-parallel run (RNG states); each rank's is kept."""
        return {"torch_rng": torch.get_rng_state()}

    def load_rank_state(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch_rng"])

    # -- data parallel --------------------------------------------------------------------
    def prepare_model(self, model: M) -> M:
        """Make ``model`` ready for this run's ranks: BatchNorm over the global batch and rank 0's
        weights on every rank (nothing changes in a single process)."""
        if self.parallel.active:
            if self.parallel.sync_batchnorm:
                convert_sync_batchnorm(model)
            self.parallel.broadcast_module(model)
        return model

    def loss_weight(self, labels: torch.Tensor) -> float:
        """Scale this rank's mean loss by its share of the global batch's labelled pixels."""
        return self.parallel.loss_weight(labels)

    def sync_gradients(self, parameters: Any, loss: float) -> float:
        """Average the gradients over the ranks (after backward, before clipping); the global loss."""
        return self.parallel.all_reduce_grads(parameters, loss, self.step)

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The checkpoint (on every rank: gathering the ranks' states is collective)."""
        ranks = self.parallel.gather(self.rank_state())
        return {
            "format": self.checkpoint_format,
            "config": self.cfg.to_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "step": self.step,
            "log_lines": self._log_lines,
            **ranks[0],
            "rank_states": ranks if self.parallel.active else None,
            **self.run_state(),
        }

    def save(self) -> Path:
        """Write ``last.pt`` atomically (a crash mid-write leaves the previous one intact).

        In a data-parallel run every rank calls it and rank 0 writes; then the
        :attr:`checkpoint_callbacks` run on every rank.
        """
        path = self.run_dir / "last.pt"
        state = self.state_dict()
        if self.parallel.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_save(state, path)
        self.parallel.barrier()
        for callback in self.checkpoint_callbacks:
            callback(path if self.parallel.is_main else None)
        return path

    def load(self, path: Path) -> None:
        """Restore a ``last.pt`` written by :meth:`save` and cut the log back to it.

        Raises:
            ValueError: not a checkpoint of this kind of run, or one of another config.
        """
        path = Path(path)
        ckpt = _torch_load(path, self.device)
        if not isinstance(ckpt, dict):
            raise ValueError(f"{path}: not a {self.checkpoint_format} checkpoint")
        self.check_checkpoint(ckpt, path)
        self.load_run_state(ckpt, path)
        ranks = ckpt.get("rank_states") or []
        same_ranks = len(ranks) == self.parallel.world_size
        self.load_rank_state(ranks[self.parallel.rank] if same_ranks else ckpt)
        self.epoch, self.step_in_epoch, self.step = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["step"]
        lines = ckpt.get("log_lines")
        self._log_lines = int(lines) if lines is not None else self._lines_up_to_step()
        self._truncate_log()

    def resume(self) -> bool:
        """Load ``run_dir/last.pt`` if it exists; returns whether it did."""
        path = self.run_dir / "last.pt"
        if not path.exists():
            return False
        self.load(path)
        return True

    # -- the loop -------------------------------------------------------------------------
    def epoch_order(self, epoch: int) -> np.ndarray:
        """The shuffled sample order of ``epoch``: a pure function of (seed, epoch)."""
        return epoch_order(len(self.train_set), self.cfg.seed, epoch)  # type: ignore[arg-type]

    def batches(self) -> Iterator[dict[str, Any]]:
        """The rest of the current epoch's batches (this rank's slice of each, in a parallel run)."""
        return epoch_batches(
            self.train_set,
            seed=self.cfg.seed,
            epoch=self.epoch,
            first_step=self.step_in_epoch,
            steps=self.steps_per_epoch,
            batch_size=self.cfg.batch_size,
            num_workers=self.cfg.num_workers,
            parallel=self.parallel,
        )

    def fit(
        self,
        *,
        max_steps: int | None = None,
        progress: Callable[[P], None] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> dict[str, Any]:
        """Train until the configured epochs are done (or ``max_steps`` global steps); a summary.

        Checkpoints every ``checkpoint_every`` steps, at each epoch end and when stopping.
        ``stop`` is asked after every step (on every rank; the ranks stop together when any
        says so): a true answer checkpoints and returns with ``stopped`` set.
        """
        if self.parallel.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._truncate_log()  # a fresh run starts a fresh log; a resumed one is already cut
        t_start, images_seen = time.perf_counter(), 0
        info: P | None = None
        while not self.finished:
            self.start_epoch()
            for batch in self.batches():
                t0 = time.perf_counter()
                loss, extra = self.train_step(batch)
                self.step += 1
                self.step_in_epoch += 1
                images_seen += self.cfg.batch_size
                info = self.progress_of(loss, extra, self.cfg.batch_size / max(time.perf_counter() - t0, 1e-9))
                if progress is not None:
                    progress(info)
                if self.step % self.cfg.log_every == 0:
                    self.log({"event": "step", **self.step_record(info)})
                halt = max_steps is not None and self.step >= max_steps
                if stop is not None:
                    halt = self.parallel.any(halt or stop())
                if self.step % self.cfg.checkpoint_every == 0 or halt:
                    self.save()
                if halt:
                    return self._summary(t_start, images_seen, stopped=True)
                if self.step_in_epoch >= self.steps_per_epoch:
                    break
            self.epoch += 1
            self.step_in_epoch = 0
            self.end_epoch(info, progress)
        self.finish()
        return self._summary(t_start, images_seen, stopped=False)

    def _summary(self, t_start: float, images: int, *, stopped: bool) -> dict[str, Any]:
        elapsed = time.perf_counter() - t_start
        return {
            "step": self.step,
            "epoch": self.epoch,
            "stopped": stopped,
            **self.summary_extra(),
            "seconds": round(elapsed, 3),
            "images_per_s": round(images / elapsed, 3) if elapsed > 0 else None,
            "run_dir": str(self.run_dir),
        }

    # -- log ------------------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        return self.run_dir / "train_log.jsonl"

    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON line (with the wall time) to ``train_log.jsonl`` (rank 0 only)."""
        self._log_lines += 1
        if not self.parallel.is_main:
            return
        with self.log_path.open("a") as f:
            f.write(json.dumps({"time": time.time(), **record}) + "\n")

    def _lines_up_to_step(self) -> int:
        """For checkpoints that predate ``log_lines``: the lines logged at or before this step."""
        if not self.log_path.exists():
            return 0
        lines = self.log_path.read_text().splitlines()
        return sum(1 for ln in lines if ln and json.loads(ln).get("step", 0) <= self.step)

    def _truncate_log(self) -> None:
        """Keep the log lines the current state has written (later ones will be redone)."""
        if not self.parallel.is_main or not self.log_path.exists():
            return
        lines = self.log_path.read_text().splitlines(keepends=True)
        if len(lines) != self._log_lines:
            self.log_path.write_text("".join(lines[: self._log_lines]))
