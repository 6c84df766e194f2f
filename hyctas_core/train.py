"""Supernet training: one sampled sub-network per step, exact checkpoint / resume.

Paper recipe (section "Supernet training" of DESIGN.md): each step samples a sub-network
with P(1, 2, 3 branches) = 0.2 / 0.3 / 0.5, everything else uniform; SGD momentum 0.9 with
weight decay, LR 0.02 decayed by 0.992 per epoch; cross-entropy plus the auxiliary head (the
paper's top-k or OHEM cross-entropy are options: plain cross-entropy measured best, see
``loss``). Parameters a step's sub-network does not use get no gradient, so SGD leaves them
(and their momentum) untouched.

Options from the one-shot literature, each a config field (``benchmarks/supernet_ranking.py``
measures how well each ranks sub-networks against standalone training):

- ``sampling="sandwich"`` (BigNAS / slimmable networks' sandwich rule): each step trains a
  largest sub-network (3 branches, full width, no skip), a smallest one (1 branch, narrowest,
  skip wherever allowed) and ``sandwich_random`` prior-sampled ones; their gradients are summed
  into one SGD step.
- ``distill=True`` (in-place distillation): the largest sub-network of a step learns from the
  labels, the others from its softened predictions (detached); with ``sampling="prior"`` a
  largest sub-network is added to each step as the teacher.
- ``warmup_steps=N``: the first N steps train only largest sub-networks, with the LR ramped
  linearly from 0, so that the shared weights are useful before small networks share them.

Resume is exact: a checkpoint holds the weights, optimiser, scheduler, the arch sampler's
RNG, the torch RNG and the position in the epoch; the data order of an epoch and each
sample's augmentation are pure functions of (seed, epoch, index). A run stopped and resumed
ends with bit-identical weights on CPU (``tests/core/test_train.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from hyctas_core.engine import EpochTrainer, StepProgress, TrainingConfig, atomic_save, read_checkpoint_file
from hyctas_core.losses import build_loss
from hyctas_core.parallel import DataParallel
from hyctas_core.search_space import BRANCH_PRIOR, Arch, sample_arch, sample_largest, sample_smallest
from hyctas_core.supernet import Supernet

__all__ = [
    "CHECKPOINT_FORMAT",
    "SAMPLINGS",
    "Sampling",
    "SupernetTrainConfig",
    "SupernetTrainer",
    "TrainProgress",
    "load_supernet",
]

CHECKPOINT_FORMAT = "hyctas-supernet/1"
Sampling = Literal["prior", "sandwich"]
SAMPLINGS: tuple[Sampling, ...] = get_args(Sampling)


@dataclass(frozen=True)
class SupernetTrainConfig(TrainingConfig):
    """Everything a supernet training run depends on (stored in every checkpoint)."""

    config_name: ClassVar[str] = "training config"

    lr_decay: float = 0.992  # ExponentialLR gamma, per epoch (paper)
    # The LR of the last epoch as a fraction of ``lr``: the per-epoch gamma becomes
    # lr_final ** (1 / (epochs - 1)), overriding lr_decay. The paper's 0.992 leaves a 60-epoch
    # run at 62 % of its LR. In benchmarks/supernet_ranking.py annealing to 5 % or 0.7 % ranked
    # better on two seeds of three and worse on the third, within the supernet's own run-to-run
    # noise (see the README), so the default stays None: lr_decay.
    lr_final: float | None = None
    # loss "ce" (the default) ranks sub-networks best in benchmarks/supernet_ranking.py (Kendall tau
    # 0.55 and 0.52 on seeds 0 and 1, against 0.30 and 0.12 for "topk"); "ohem" as in FasterSeg.
    # The paper's P(1, 2, 3 branches). In benchmarks/supernet_ranking.py flatter priors ranked
    # worse (uniform: mean tau 0.41 over 6 trainings, against 0.57 over 7) and steeper ones
    # (0.1/0.2/0.7: 0.60, 0.05/0.15/0.8: 0.53) within the noise (README).
    branch_prior: tuple[float, float, float] = BRANCH_PRIOR
    # "prior": one sub-network per step (paper); "sandwich": largest + smallest + sandwich_random.
    sampling: Sampling = "prior"
    sandwich_random: int = 2
    distill: bool = False  # in-place distillation from the largest sub-network
    distill_temperature: float = 1.0
    warmup_steps: int = 0  # largest sub-networks only, LR ramped linearly from 0

    @property
    def gamma(self) -> float:
        """The per-epoch ExponentialLR factor: ``lr_decay``, or the one that reaches ``lr_final``."""
        if self.lr_final is None or self.epochs < 2:
            return self.lr_decay
        return float(self.lr_final ** (1.0 / (self.epochs - 1)))

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"0 < lr_decay <= 1 required, got {self.lr_decay}")
        if self.lr_final is not None and not 0 < self.lr_final <= 1:
            raise ValueError(f"0 < lr_final <= 1 required, got {self.lr_final}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)}, got {self.sampling!r}")
        if self.sandwich_random < 0:
            raise ValueError(f"sandwich_random must be >= 0, got {self.sandwich_random}")
        if self.distill_temperature <= 0:
            raise ValueError(f"distill_temperature must be > 0, got {self.distill_temperature}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")


@dataclass(frozen=True)
class TrainProgress(StepProgress):
    branches: int  # of the step's last (prior-sampled) sub-network


class SupernetTrainer(EpochTrainer[SupernetTrainConfig, TrainProgress]):
    """Trains a :class:`Supernet` on a segmentation dataset; used by the CLI and by workers.

    The loop, checkpoints, resume and log are the engine's (:class:`~hyctas_core.engine.EpochTrainer`);
    this class samples the step's sub-networks and trains them. When done it also writes
    ``supernet.pt`` (config and weights, for evaluation).

    Args:
        cfg: the run configuration.
        dataset: items are dicts with ``"image"`` (float 3xHxW) and ``"label"`` (int64 HxW,
            255 = ignore), all of one size (random crops); ``set_epoch(e)`` is called if present.
        run_dir: checkpoints (``last.pt``, ``supernet.pt``) and ``train_log.jsonl`` go here.
        device: ``"cpu"`` or a CUDA device.
        parallel: the rank in a data-parallel run (default: the process group's, if any). Every
            rank draws the same sub-networks (``arch_rng`` is seeded alike) and trains them on
            its slice of the batch; see :mod:`hyctas_core.parallel`.
    """

    checkpoint_format = CHECKPOINT_FORMAT
    config_type = SupernetTrainConfig

    def __init__(
        self,
        cfg: SupernetTrainConfig,
        dataset: Dataset[dict[str, Any]],
        run_dir: Path,
        *,
        device: str = "cpu",
        parallel: DataParallel | None = None,
    ) -> None:
        super().__init__(cfg, dataset, run_dir, device=device, parallel=parallel)
        torch.manual_seed(cfg.seed)
        self.supernet = self.prepare_model(Supernet(cfg.model).to(self.device))
        self.optimizer = torch.optim.SGD(
            self.supernet.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=cfg.gamma)
        self.criterion = build_loss(cfg.loss, top_k=cfg.top_k, class_weights=self.class_weights())
        self.arch_rng = np.random.default_rng([cfg.seed, 2])

    @property
    def dataset(self) -> Dataset[dict[str, Any]]:
        return self.train_set

    # -- checkpoints ----------------------------------------------------------------------
    def run_state(self) -> dict[str, Any]:
        return {
            "model": self.supernet.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "arch_rng": self.arch_rng.bit_generator.state,
        }

    def load_run_state(self, ckpt: dict[str, Any], path: Path) -> None:
        self.supernet.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.arch_rng.bit_generator.state = ckpt["arch_rng"]

    def step_archs(self) -> tuple[list[Arch], Arch | None]:
        """The sub-networks the next step trains, and the teacher of in-place distillation.

        Drawn from ``arch_rng`` only, so that a resumed run draws the same ones. With
        distillation the teacher is the step's largest sub-network, trained on the labels
        first (with prior sampling one is added to the step); it is None without distillation.
        """
        cfg, rng, layers = self.cfg, self.arch_rng, self.cfg.model.num_layers
        if self.step < cfg.warmup_steps:
            return [sample_largest(rng, layers)], None
        if cfg.sampling == "sandwich":
            archs = [sample_largest(rng, layers), sample_smallest(rng, layers)]
            archs += [sample_arch(rng, layers, branch_prior=cfg.branch_prior) for _ in range(cfg.sandwich_random)]
            return archs, archs[0] if cfg.distill else None
        arch = sample_arch(rng, layers, branch_prior=cfg.branch_prior)
        if not cfg.distill:
            return [arch], None
        # The teacher must learn from the labels in the same step (else no label ever reaches
        # the supernet): train a largest sub-network first, then the sampled one from it.
        largest = sample_largest(rng, layers)
        return [largest, arch], largest

    def lr_factor(self) -> float:
        """The warm-up's LR multiplier of the next step (1 after the warm-up)."""
        if self.step >= self.cfg.warmup_steps:
            return 1.0
        return (self.step + 1) / self.cfg.warmup_steps

    def _seg_loss(self, out: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        loss: torch.Tensor = self.criterion(out["out"], labels)
        if "aux" in out and self.cfg.aux_weight > 0:
            loss = loss + self.cfg.aux_weight * self.criterion(out["aux"], labels)
        return loss

    def _distill_loss(self, logits: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Pixel-wise KL(teacher || student) at temperature T (times T^2), over labelled pixels."""
        t = self.cfg.distill_temperature
        log_p = F.log_softmax(logits / t, dim=1)
        q = F.softmax(teacher / t, dim=1)
        kl = (q * (torch.log(q.clamp_min(1e-8)) - log_p)).sum(dim=1)
        keep = labels != 255
        return kl[keep].mean() * t * t if keep.any() else kl.sum() * 0.0

    def train_step(self, batch: dict[str, Any]) -> tuple[float, int]:
        """One SGD step on this step's sub-networks (gradients summed); returns (mean loss, branches).

        The branch count reported is that of the last sub-network trained (the prior-sampled one).
        """
        archs, teacher_arch = self.step_archs()
        self.supernet.train()
        images = batch["image"].to(self.device, non_blocking=True)
        labels = batch["label"].to(self.device, non_blocking=True)
        weight = self.loss_weight(labels)  # this rank's share of the global batch (1 alone)
        self.optimizer.zero_grad(set_to_none=True)
        teacher: torch.Tensor | None = None  # set by the step's first (largest) sub-network
        losses = []
        for arch in archs:
            out = self.supernet(images, arch)
            loss: torch.Tensor
            if teacher is not None:
                loss = self._distill_loss(out["out"], teacher, labels)
            else:
                loss = self._seg_loss(out, labels)
                if arch is teacher_arch:  # the sandwich's largest teaches the rest of this step
                    teacher = out["out"].detach()
            torch.autograd.backward(loss * weight)  # loss.backward(), which torch leaves untyped
            losses.append(float(loss.detach()) * weight)
        mean_loss = self.sync_gradients(self.supernet.parameters(), sum(losses) / len(losses))
        if self.cfg.grad_clip:
            nn.utils.clip_grad_norm_(self.supernet.parameters(), self.cfg.grad_clip)
        factor = self.lr_factor()
        scheduled = [group["lr"] for group in self.optimizer.param_groups]
        for group in self.optimizer.param_groups:
            group["lr"] *= factor
        self.optimizer.step()
        for group, lr in zip(self.optimizer.param_groups, scheduled, strict=True):
            group["lr"] = lr  # ExponentialLR chains on the group's LR: give it back unscaled
        return mean_loss, archs[-1].num_branches

    def progress_of(self, loss: float, extra: Any, images_per_s: float) -> TrainProgress:
        lr = float(self.scheduler.get_last_lr()[0])
        return TrainProgress(self.step, self.total_steps, self.epoch, loss, lr, images_per_s, int(extra))

    def end_epoch(self, last: TrainProgress | None, progress: Callable[[TrainProgress], None] | None) -> None:
        self.scheduler.step()
        self.log({"event": "epoch", "epoch": self.epoch, "step": self.step, "lr": self.scheduler.get_last_lr()[0]})
        self.save()

    def finish(self) -> None:
        if not self.parallel.is_main:
            return
        final = {"format": CHECKPOINT_FORMAT, "config": self.cfg.to_dict(), "model": self.supernet.state_dict()}
        atomic_save({**final, "step": self.step}, self.run_dir / "supernet.pt")


def load_supernet(path: Path, *, device: str = "cpu") -> Supernet:
    """A :class:`Supernet` with the weights of a ``supernet.pt`` or ``last.pt`` checkpoint.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a HyCTAS supernet checkpoint.
    """
    ckpt = read_checkpoint_file(path, CHECKPOINT_FORMAT, "supernet", device)
    cfg = SupernetTrainConfig.from_dict(ckpt["config"])
    supernet = Supernet(cfg.model).to(device)
    supernet.load_state_dict(ckpt["model"])
    return supernet.eval()
