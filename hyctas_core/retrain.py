"""Retraining a chosen architecture from scratch: the last step of the HyCTAS pipeline.

Recipe (paper, with the official code where the paper is silent): SGD with momentum 0.9 and
weight decay 5e-4; a poly learning-rate schedule ``lr * (1 - i / N) ** 0.9`` updated every
iteration ``i`` of the ``N`` iterations of the run, optionally after a linear warm-up; top-k
cross-entropy on the main output plus ``aux_weight`` times the same loss on the auxiliary
head; scheduled drop path, its probability growing linearly from 0 in the first epoch to
``drop_path_max`` in the last one (updated once per epoch, at its start; see
:mod:`hyctas_core.network` for which branches are dropped). The paper gives a base LR of
0.005, the official code 0.05; the default here, 0.01, lies between them.

Checkpoints: ``last.pt`` (weights, optimiser, position, drop-path and torch RNG states, best
mIoU so far) is written atomically every ``checkpoint_every`` steps, at every epoch end and
when stopping; ``best.pt`` (weights only) whenever the validation mIoU improves. Both hold the
configuration and the architecture (official JSON), so :func:`load_model` rebuilds the network
from a checkpoint alone. Resume is exact: the data order of an epoch and each sample's
augmentation are pure functions of (seed, epoch, index), the LR is a pure function of the
step, and drop path draws from its own generator whose state is checkpointed, so a run stopped
and resumed ends with bit-identical weights on CPU (``tests/core/test_retrain.py``).

Panoptic retraining (``task: panoptic``): the network gets the instance branch of
:mod:`hyctas_core.panoptic` (centre heatmap and offsets on the fused features), the training
items get Gaussian-centre / offset targets computed from their instance maps, the loss adds
centre MSE and offset L1 to the (small-instance weighted) top-k cross-entropy, and validation
reports PQ / SQ / RQ (all, things, stuff) alongside mIoU; ``best.pt`` then keeps the weights
with the best PQ. Checkpoints and configs written before the ``task`` key existed load as
semantic runs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from hyctas_core.config import PanopticConfig
from hyctas_core.engine import EpochTrainer, StepProgress, TrainingConfig, atomic_save, read_checkpoint_file
from hyctas_core.evaluate import evaluate_miou, subset_indices
from hyctas_core.losses import build_loss
from hyctas_core.network import HyCTASNet
from hyctas_core.panoptic import (
    TARGET_KEYS,
    PanopticEvaluation,
    PanopticLoss,
    PanopticTargetDataset,
    evaluate_panoptic,
)
from hyctas_core.parallel import DataParallel
from hyctas_core.search_space import Arch, ArchError

__all__ = [
    "CHECKPOINT_FORMAT",
    "TASKS",
    "RetrainConfig",
    "RetrainProgress",
    "Retrainer",
    "drop_path_at",
    "load_model",
    "poly_lr",
    "read_checkpoint",
]

CHECKPOINT_FORMAT = "hyctas-retrain/1"
TASKS = ("semantic", "panoptic")


def poly_lr(step: int, total_steps: int, base_lr: float, power: float = 0.9, warmup_iters: int = 0) -> float:
    """The learning rate of iteration ``step`` (0-based) of ``total_steps``.

    ``base_lr * (1 - step / total_steps) ** power``, times ``(step + 1) / warmup_iters`` during
    the first ``warmup_iters`` iterations; 0 from ``total_steps`` on.

    Raises:
        ValueError: ``step < 0`` or ``total_steps < 1``.
    """
    if step < 0 or total_steps < 1:
        raise ValueError(f"need step >= 0 and total_steps >= 1, got {step}, {total_steps}")
    lr = base_lr * float(max(0.0, 1.0 - step / total_steps) ** power)
    if step < warmup_iters:
        lr *= (step + 1) / warmup_iters
    return lr


def drop_path_at(epoch: int, epochs: int, max_p: float) -> float:
    """Scheduled drop-path probability of ``epoch`` (0-based): linear from 0 to ``max_p``.

    Epoch 0 gets 0 and the last epoch (``epochs - 1``) exactly ``max_p``; a one-epoch run gets 0.
    """
    if epochs <= 1:
        return 0.0
    return max_p * min(max(epoch, 0), epochs - 1) / (epochs - 1)


@dataclass(frozen=True)
class RetrainConfig(TrainingConfig):
    """Everything a retraining run depends on (stored in every checkpoint)."""

    config_name: ClassVar[str] = "retraining config"

    epochs: int = 300
    lr: float = 0.01  # paper 0.005, official code 0.05
    loss: str = "topk"  # the official DeepLabCE, top 20 %
    aux_weight: float = 0.4  # 0 builds no auxiliary head
    crop_size: tuple[int, int] = (512, 1024)
    # grad_clip None: off for semantic runs, 1.0 (official) for panoptic ones, whose centre loss
    # (x 200) diverges under SGD without it; 0: off.
    checkpoint_every: int = 100  # steps
    lr_power: float = 0.9  # poly schedule, per iteration
    warmup_iters: int = 0  # linear LR warm-up iterations
    drop_path_max: float = 0.2  # reached in the last epoch, linearly from 0
    eval_every: int = 1  # epochs between validations (the last epoch is always validated)
    val_images: int | None = None  # a fixed, seeded subset of the validation set; None = all
    task: str = "semantic"  # or "panoptic": adds the centre / offset heads, targets, loss and PQ
    panoptic: PanopticConfig = field(default_factory=PanopticConfig)  # used when task is panoptic

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eval_every < 1:
            raise ValueError(f"eval_every must be >= 1, got {self.eval_every}")
        if self.lr_power < 0:
            raise ValueError(f"lr_power must be >= 0, got {self.lr_power}")
        if self.warmup_iters < 0:
            raise ValueError(f"warmup_iters must be >= 0, got {self.warmup_iters}")
        if not 0.0 <= self.drop_path_max <= 1.0:
            raise ValueError(f"drop_path_max must be in [0, 1], got {self.drop_path_max}")
        if self.val_images is not None and self.val_images < 1:
            raise ValueError(f"val_images must be >= 1 or null, got {self.val_images}")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.task == "panoptic":
            if self.loss == "ohem":
                raise ValueError("task panoptic trains with the weighted top-k loss: loss must be topk or ce, not ohem")
            if self.class_weighting != "none":
                raise ValueError("task panoptic weights pixels by instance size: class_weighting must be none")
            outside = [t for t in self.panoptic.thing_ids if t >= self.model.num_classes]
            if outside:
                raise ValueError(
                    f"panoptic.thing_ids {outside} are not train ids of a model with {self.model.num_classes} classes"
                )

    @property
    def effective_grad_clip(self) -> float | None:
        """The clipping norm used in training (see ``grad_clip``); None = no clipping."""
        if self.grad_clip is None:
            return 1.0 if self.task == "panoptic" else None
        return self.grad_clip or None


@dataclass(frozen=True)
class RetrainProgress(StepProgress):
    """Reported after every step (and again after each validation, with the new mIoU)."""

    drop_path: float
    miou: float | None  # the latest validation mIoU (0-1), None before the first
    best_miou: float | None
    pq: float | None = None  # panoptic runs: the latest validation PQ (0-1)
    best_pq: float | None = None


class Retrainer(EpochTrainer[RetrainConfig, RetrainProgress]):
    """Trains a freshly initialised :class:`HyCTASNet` for one architecture.

    Args:
        cfg: the run configuration.
        arch: the architecture to train.
        train_set: items are dicts with ``"image"`` (float 3xHxW) and ``"label"`` (int64 HxW,
            255 = ignore), all of one size (random crops); ``set_epoch(e)`` is called if present.
            Panoptic runs also need ``"instances"`` (0 = none, 1..K); the targets are added here.
        val_set: validation items (any size, batch 1), or None for no validation (and no
            ``best.pt``); with ``"instances"`` for panoptic runs.
        run_dir: ``last.pt``, ``best.pt`` and ``train_log.jsonl`` go here.
        device: ``"cpu"`` or a CUDA device.

    Raises:
        ArchError: the arch does not fit ``cfg.model``.
        ValueError: the training set holds less than one batch, or a panoptic run's items
            have no instance maps.
    """

    checkpoint_format = CHECKPOINT_FORMAT
    config_type = RetrainConfig

    def __init__(
        self,
        cfg: RetrainConfig,
        arch: Arch,
        train_set: Dataset[dict[str, Any]],
        val_set: Dataset[dict[str, Any]] | None,
        run_dir: Path,
        *,
        device: str = "cpu",
        parallel: DataParallel | None = None,
    ) -> None:
        self.arch = arch.canonical()
        self.panoptic = cfg.task == "panoptic"
        if self.panoptic:
            for items, role in ((train_set, "training"), (val_set, "validation")):
                if items is not None and len(items) and "instances" not in items[0]:  # type: ignore[arg-type]
                    raise ValueError(
                        f"panoptic retraining needs instance maps in the {role} items (return_instances=True)"
                    )
            if not isinstance(train_set, PanopticTargetDataset):
                train_set = PanopticTargetDataset(train_set, cfg.panoptic)
        super().__init__(cfg, train_set, run_dir, device=device, parallel=parallel)
        self.val_set = val_set
        with torch.random.fork_rng(devices=[]):  # seeded initialisation, global RNG left alone
            torch.manual_seed(cfg.seed)
            model = HyCTASNet(self.arch, cfg.model, aux=cfg.aux_weight > 0, panoptic=self.panoptic).to(self.device)
        self.model = self.prepare_model(model)
        # Drop path draws per sample: each rank of a parallel run draws for its own samples.
        rank_stream = [6] if not self.parallel.active else [6, self.parallel.rank]
        drop_seed = int(np.random.default_rng([cfg.seed, *rank_stream]).integers(2**62))
        self.drop_rng = torch.Generator().manual_seed(drop_seed)
        self.model.set_drop_path(0.0, generator=self.drop_rng)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        self.criterion = build_loss(cfg.loss, top_k=cfg.top_k, class_weights=self.class_weights())
        self.panoptic_loss: PanopticLoss | None = None
        if self.panoptic:
            self.panoptic_loss = PanopticLoss(cfg.panoptic, top_k=cfg.top_k if cfg.loss == "topk" else 1.0)
        self.val_indices: list[int] = []
        if val_set is not None:
            n_val = len(val_set)  # type: ignore[arg-type]
            k = n_val if cfg.val_images is None else cfg.val_images
            self.val_indices = subset_indices(n_val, k, cfg.seed, stream=5)
        self.best_miou: float | None = None
        self.last_miou: float | None = None
        self.best_pq: float | None = None
        self.last_pq: float | None = None
        self._loss_parts: dict[str, float] = {}

    def lr_at(self, step: int) -> float:
        """The learning rate of global iteration ``step`` (0-based)."""
        return poly_lr(step, self.total_steps, self.cfg.lr, self.cfg.lr_power, self.cfg.warmup_iters)

    def drop_path_at(self, epoch: int) -> float:
        """The drop-path probability used throughout ``epoch``."""
        return drop_path_at(epoch, self.cfg.epochs, self.cfg.drop_path_max)

    # -- checkpoints ----------------------------------------------------------------------
    def _header(self, kind: str) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "kind": kind,
            "config": self.cfg.to_dict(),
            "arch": self.arch.to_official(),
            "model": self.model.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
        }

    def run_state(self) -> dict[str, Any]:
        return {
            "kind": "last",
            "arch": self.arch.to_official(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "best_miou": self.best_miou,
            "last_miou": self.last_miou,
            "best_pq": self.best_pq,
            "last_pq": self.last_pq,
        }

    def rank_state(self) -> dict[str, Any]:
        return {**super().rank_state(), "drop_rng": self.drop_rng.get_state()}

    def load_rank_state(self, state: dict[str, Any]) -> None:
        super().load_rank_state(state)
        self.drop_rng.set_state(state["drop_rng"])

    def _save_best(self, miou: float | None, pq: float | None = None) -> Path:
        """Write ``best.pt`` (rank 0; every rank validates the same weights and agrees on the best)."""
        path = self.run_dir / "best.pt"
        extra: dict[str, Any] = {"miou": miou} if pq is None else {"miou": miou, "pq": pq}
        if self.parallel.is_main:
            atomic_save({**self._header("best"), **extra}, path)
        return path

    def check_checkpoint(self, ckpt: dict[str, Any], path: Path) -> None:
        if ckpt.get("format") == CHECKPOINT_FORMAT and ckpt.get("kind") != "last":
            raise ValueError(f"{path}: holds weights only ({ckpt.get('kind')!r}); resume needs last.pt")
        super().check_checkpoint(ckpt, path)
        if ckpt["arch"] != self.arch.to_official():
            raise ValueError(f"{path}: checkpoint was trained for another architecture")

    def load_run_state(self, ckpt: dict[str, Any], path: Path) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.best_miou, self.last_miou = ckpt["best_miou"], ckpt["last_miou"]
        self.best_pq, self.last_pq = ckpt.get("best_pq"), ckpt.get("last_pq")

    # -- training -------------------------------------------------------------------------
    def train_step(self, batch: dict[str, Any]) -> tuple[float, float]:
        """One SGD step at the scheduled LR of the current step; returns (loss, lr)."""
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        images = batch["image"].to(self.device, non_blocking=True)
        labels = batch["label"].to(self.device, non_blocking=True)
        weight = self.loss_weight(labels)  # this rank's share of the global batch (1 alone)
        out = self.model(images)
        if self.panoptic_loss is not None:
            targets = {k: batch[k].to(self.device, non_blocking=True) for k in ("label", *TARGET_KEYS)}
            parts = self.panoptic_loss.parts(out, targets)
            loss = self.panoptic_loss.combine(parts)
            if "aux" in out and self.cfg.aux_weight > 0:
                loss = loss + self.cfg.aux_weight * self.panoptic_loss.semantic(out["aux"], targets)
            self._loss_parts = {f"loss_{k}": float(v.detach()) for k, v in parts.items()}
        else:
            loss = self.criterion(out["out"], labels)
            if "aux" in out and self.cfg.aux_weight > 0:
                loss = loss + self.cfg.aux_weight * self.criterion(out["aux"], labels)
        self.optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss * weight)  # the same as loss.backward(), which torch leaves untyped
        mean_loss = self.sync_gradients(self.model.parameters(), float(loss.detach()) * weight)
        clip = self.cfg.effective_grad_clip
        if clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.optimizer.step()
        return mean_loss, lr

    def validate(self) -> float | None:
        """mIoU (0-1) of the current weights on the validation subset; None without one."""
        if self.val_set is None or not self.val_indices:
            return None
        cm = evaluate_miou(self.model, self.val_set, self.val_indices, self.cfg.model.num_classes, device=self.device)
        miou = cm.miou
        return None if math.isnan(miou) else miou

    def validate_panoptic(self) -> PanopticEvaluation | None:
        """PQ / SQ / RQ and mIoU of the current weights on the validation subset (panoptic runs).

        Raises:
            ValueError: the run is not a panoptic one.
        """
        if not self.panoptic:
            raise ValueError("validate_panoptic needs a run with task panoptic")
        if self.val_set is None or not self.val_indices:
            return None
        num_classes = self.cfg.model.num_classes
        names = getattr(self.val_set, "class_names", None)
        return evaluate_panoptic(
            self.model,
            self.val_set,
            cfg=self.cfg.panoptic,
            num_classes=num_classes,
            indices=self.val_indices,
            class_names=names if names is not None and len(names) == num_classes else None,
            device=self.device,
        )

    def start_epoch(self) -> None:
        self.model.set_drop_path(self.drop_path_at(self.epoch))

    def progress_of(self, loss: float, extra: Any, images_per_s: float) -> RetrainProgress:
        return RetrainProgress(
            self.step,
            self.total_steps,
            self.epoch,
            loss,
            float(extra),
            images_per_s,
            self.model.drop_path_p,
            self.last_miou,
            self.best_miou,
            self.last_pq,
            self.best_pq,
        )

    def step_record(self, info: RetrainProgress) -> dict[str, Any]:
        record = dataclasses.asdict(info)
        if not self.panoptic:
            del record["pq"], record["best_pq"]
        return {**record, **self._loss_parts}

    def end_epoch(self, last: RetrainProgress | None, progress: Callable[[RetrainProgress], None] | None) -> None:
        """Validate when due (``eval_every``, and after the last epoch), log the epoch, checkpoint."""
        info = last
        due = self.epoch % self.cfg.eval_every == 0 or self.finished
        record: dict[str, Any] = {"event": "epoch", "epoch": self.epoch, "step": self.step}
        record["drop_path"] = self.drop_path_at(self.epoch - 1)
        validated = False
        if due:
            validated = self._validate_panoptic(record) if self.panoptic else self._validate_semantic(record)
        self.log(record)
        self.save()
        if validated and progress is not None:
            if info is None:  # resumed exactly at an epoch end: no step ran in this call
                dp = self.drop_path_at(self.epoch - 1)
                info = RetrainProgress(self.step, self.total_steps, self.epoch - 1, math.nan, 0.0, 0.0, dp, None, None)
            progress(
                dataclasses.replace(
                    info, miou=self.last_miou, best_miou=self.best_miou, pq=self.last_pq, best_pq=self.best_pq
                )
            )

    def _validate_semantic(self, record: dict[str, Any]) -> bool:
        """Validate mIoU; keep the best weights; returns whether a score came out."""
        miou = self.validate()
        if miou is None:
            return False
        self.last_miou = miou
        record["miou"] = miou
        if self.best_miou is None or miou > self.best_miou:
            self.best_miou = miou
            self._save_best(miou)
            record["best"] = True
        return True

    def _validate_panoptic(self, record: dict[str, Any]) -> bool:
        """Validate PQ and mIoU; ``best.pt`` follows PQ; returns whether a score came out."""
        evaluation = self.validate_panoptic()
        if evaluation is None:
            return False
        miou = evaluation.confusion.miou
        summary = evaluation.to_dict()
        self.last_miou = None if math.isnan(miou) else miou
        if self.last_miou is not None:
            record["miou"] = self.last_miou
            self.best_miou = self.last_miou if self.best_miou is None else max(self.best_miou, self.last_miou)
        pq = evaluation.pq
        self.last_pq = None if math.isnan(pq) else pq
        record.update({k: summary[k] for k in ("pq", "sq", "rq")})
        record.update({f"{k}_{part}": summary[part][k] for part in ("things", "stuff") for k in ("pq", "sq", "rq")})
        if self.last_pq is not None and (self.best_pq is None or self.last_pq > self.best_pq):
            self.best_pq = self.last_pq
            self._save_best(self.last_miou, self.last_pq)
            record["best"] = True
        return True

    def summary_extra(self) -> dict[str, Any]:
        scores = {"best_miou": self.best_miou, "last_miou": self.last_miou}
        return {**scores, "best_pq": self.best_pq, "last_pq": self.last_pq} if self.panoptic else scores


def _read(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    return read_checkpoint_file(path, CHECKPOINT_FORMAT, "retraining", device)


def read_checkpoint(path: Path) -> tuple[RetrainConfig, Arch, dict[str, Any]]:
    """Config, arch and bookkeeping (``kind``, ``epoch``, ``step``, mIoU) of a checkpoint.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a HyCTAS retraining checkpoint.
    """
    ckpt = _read(Path(path))
    try:
        cfg = RetrainConfig.from_dict(ckpt["config"])
        arch = Arch.from_official(ckpt["arch"])
    except (KeyError, ArchError) as e:
        raise ValueError(f"{path}: damaged retraining checkpoint ({e})") from None
    keys = ("kind", "epoch", "step", "best_miou", "last_miou", "miou", "best_pq", "last_pq", "pq")
    info = {k: ckpt.get(k) for k in keys}
    return cfg, arch, info


def load_model(path: Path, *, device: str = "cpu") -> tuple[HyCTASNet, Arch, RetrainConfig]:
    """Rebuild the trained network of a ``last.pt`` or ``best.pt`` checkpoint (eval mode).

    A panoptic checkpoint gives a network with its instance branch (``net.panoptic``), whose
    output has ``"center"`` and ``"offset"`` besides ``"out"``; post-process it with
    ``cfg.panoptic`` (:func:`hyctas_core.panoptic.postprocess_batch`).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a HyCTAS retraining checkpoint.
    """
    path = Path(path)
    ckpt = _read(path, device)
    try:
        cfg = RetrainConfig.from_dict(ckpt["config"])
        arch = Arch.from_official(ckpt["arch"])
        state = ckpt["model"]
    except (KeyError, ArchError) as e:
        raise ValueError(f"{path}: damaged retraining checkpoint ({e})") from None
    aux = any(k.startswith("aux_head.") for k in state)
    panoptic = any(k.startswith("instance_head.") for k in state)
    net = HyCTASNet(arch, cfg.model, aux=aux, panoptic=panoptic).to(device)
    net.load_state_dict(state)
    return net.eval(), net.arch, cfg
