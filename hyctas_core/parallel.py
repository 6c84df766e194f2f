"""Data-parallel training over ``torch.distributed``: what each rank does so that N ranks train
like one process with the whole batch.

The engine (:class:`hyctas_core.engine.EpochTrainer`) asks a :class:`DataParallel` for its rank
and uses it at four points of a step; whoever launches the ranks (Ray Train in the service,
``torchrun`` by hand) only initialises the process group first.

- **The batch.** The global batch stays the configured one: rank ``r`` of ``W`` takes the
  ``r``-th of ``W`` equal slices of every global batch (the sample order and each sample's
  augmentation are the single-process ones).
- **The loss.** Each rank's loss is a mean over its labelled pixels; :meth:`DataParallel.loss_weight`
  rescales it by its share of the labelled pixels of the global batch, so that the average over
  ranks is the single-process mean (exactly for cross-entropy; top-k and OHEM select their hard
  pixels per rank).
- **The gradients.** A step trains one sampled sub-network, the same on every rank (the
  sampler's RNG is seeded alike), so only some parameters get a gradient. Instead of DDP's
  ``find_unused_parameters`` (which hides a rank that took another path), the parameters with a
  gradient are averaged in one flat all-reduce after the rank checks that every rank has the
  same set (:meth:`DataParallel.all_reduce_grads`: a mismatch is an error naming the step).
- **Batch statistics.** :func:`convert_sync_batchnorm` swaps every BatchNorm (plain or
  slimmable) for :class:`SyncBatchNorm2d`, which computes the mean and variance over the global
  batch with a differentiable all-reduce; it works with gloo on CPU (``torch.nn.SyncBatchNorm``
  is CUDA-only) and NCCL on GPU, and keeps the parameter and buffer names, so checkpoints load
  into the plain network.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from hyctas_core.layers import SlimBatchNorm2d

__all__ = ["DataParallel", "SyncBatchNorm2d", "convert_sync_batchnorm", "IGNORE"]

IGNORE = 255  # label of unlabelled pixels


@dataclass(frozen=True)
class DataParallel:
    """This process's place among the ranks of a data-parallel run (rank 0 of 1: no parallelism)."""

    rank: int = 0
    world_size: int = 1
    # BatchNorm over the global batch (exactly one process's statistics). Off, each rank
    # normalises over its own slice: cheaper (no collective per BN layer; on gloo with 2 CPU
    # ranks it took 12.1 -> 8.2 images/s), no longer exact.
    sync_batchnorm: bool = True

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} of {self.world_size} ranks is not a rank")

    @classmethod
    def from_process_group(cls, *, sync_batchnorm: bool = True) -> DataParallel:
        """The default process group's rank and size, or a single process when none is initialised."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), sync_batchnorm)
        return cls(sync_batchnorm=sync_batchnorm)

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints and logs; every rank computes."""
        return self.rank == 0

    def local_batch(self, global_batch: int) -> int:
        """This rank's share of a global batch.

        Raises:
            ValueError: the global batch does not split evenly over the ranks.
        """
        if global_batch % self.world_size:
            raise ValueError(f"batch_size {global_batch} does not split evenly over {self.world_size} workers")
        return global_batch // self.world_size

    def shard(self, order: Iterable[int], first_step: int, steps: int, global_batch: int) -> list[int]:
        """The sample indices this rank reads for global steps ``first_step .. steps - 1``."""
        order = list(order)
        b = self.local_batch(global_batch)
        out: list[int] = []
        for s in range(first_step, steps):
            start = s * global_batch + self.rank * b
            out += order[start : start + b]
        return out

    def broadcast_module(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank (they start identical by seeding;
        this makes sure)."""
        if not self.active:
            return
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def loss_weight(self, labels: torch.Tensor, ignore_index: int = IGNORE) -> float:
        """The factor that turns this rank's per-pixel mean loss into its share of the global mean."""
        if not self.active:
            return 1.0
        local = (labels != ignore_index).sum().to(torch.float64).reshape(1)
        total = local.clone()
        dist.all_reduce(total)
        if float(total) == 0:
            return 1.0
        return float(local) * self.world_size / float(total)

    def all_reduce_grads(self, parameters: Iterable[nn.Parameter], loss: float, step: int) -> float:
        """Average the gradients of the parameters that have one over the ranks; the mean loss.

        Every rank must have the same set of parameters with a gradient (the same sub-network):
        the set's fingerprint is compared first, and a mismatch raises RuntimeError (DDP would
        hang or, with ``find_unused_parameters``, silently average unlike things).
        """
        if not self.active:
            return loss
        params = list(parameters)
        used = [i for i, p in enumerate(params) if p.grad is not None]
        fingerprint = sum((i + 1) * (i + 7) for i in used)
        check = torch.tensor([fingerprint, -fingerprint, len(used), -len(used)], dtype=torch.int64)
        dist.all_reduce(check, op=dist.ReduceOp.MAX)
        if int(check[0]) != fingerprint or -int(check[1]) != fingerprint or int(check[2]) != -int(check[3]):
            raise RuntimeError(
                f"step {step}: the ranks trained different parameters (rank {self.rank} has {len(used)} with a "
                "gradient); every rank must sample the same sub-network"
            )
        grads = [g for g in (params[i].grad for i in used) if g is not None]
        device = grads[0].device if grads else torch.device("cpu")
        flat = torch.cat([*(g.reshape(-1) for g in grads), torch.tensor([loss], device=device)])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset : offset + n].view_as(g))
            offset += n
        return float(flat[-1])

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (every rank gets the same answer)."""
        if not self.active:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (a single process: ``[obj]``)."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


class _AllReduceSum(torch.autograd.Function):
    """A sum over the ranks that gradients flow through (the backward sums the ranks' gradients)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out


class SyncBatchNorm2d(SlimBatchNorm2d):
    """Batch normalisation over the global batch of a data-parallel run (slimmable, like
    :class:`~hyctas_core.layers.SlimBatchNorm2d`).

    In training with more than one rank the per-channel mean and variance come from one
    differentiable all-reduce of (count, sum, centred sum of squares), combined in float64;
    otherwise it is the plain layer. Running statistics follow ``nn.BatchNorm2d``'s rule
    (unbiased variance, ``momentum`` or a cumulative average).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        n_local = x.numel() // c
        mean_local = x.mean(dim=(0, 2, 3))
        m2_local = ((x - mean_local.view(1, c, 1, 1)) ** 2).sum(dim=(0, 2, 3))
        n = torch.full((1,), float(n_local), dtype=torch.float64, device=x.device)
        ml = mean_local.double()
        stats = torch.cat([n, n * ml, m2_local.double() + n * ml * ml])
        stats = _AllReduceSum.apply(stats)  # type: ignore[no-untyped-call]
        total = stats[0]
        mean = stats[1 : 1 + c] / total
        var = (stats[1 + c :] / total - mean * mean).clamp_min(0)
        mean32, var32 = mean.to(x.dtype), var.to(x.dtype)
        y = (x - mean32.view(1, c, 1, 1)) * torch.rsqrt(var32 + self.eps).view(1, c, 1, 1)
        if self.weight is not None and self.bias is not None:
            y = y * self.weight[:c].view(1, c, 1, 1) + self.bias[:c].view(1, c, 1, 1)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                assert self.num_batches_tracked is not None
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var32 * (float(total) / max(float(total) - 1, 1.0))
                self.running_mean[:c].mul_(1 - factor).add_(factor * mean32.detach())
                self.running_var[:c].mul_(1 - factor).add_(factor * unbiased.detach())
        out: torch.Tensor = y
        return out


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Swap every ``nn.BatchNorm2d`` (plain or slimmable) in ``module`` for a :class:`SyncBatchNorm2d`
    holding the same tensors (same names: state dicts stay interchangeable); in place, returned."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, SyncBatchNorm2d):
            sync = SyncBatchNorm2d(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            sync.weight, sync.bias = child.weight, child.bias
            sync.running_mean, sync.running_var = child.running_mean, child.running_var
            sync.num_batches_tracked = child.num_batches_tracked
            sync.train(child.training)
            setattr(module, name, sync)
        else:
            convert_sync_batchnorm(child)
    return module
