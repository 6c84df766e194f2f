"""Epoch bookkeeping shared by the supernet trainer and the retrainer.

The data order of an epoch is a pure function of (seed, epoch), so a run resumed in the
middle of an epoch sees exactly the batches it would have seen.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sized
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

__all__ = ["atomic_save", "epoch_batches", "epoch_order", "steps_per_epoch"]


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
) -> Iterator[dict[str, Any]]:
    """Batches ``first_step .. steps - 1`` of ``epoch`` (calls ``dataset.set_epoch`` if it has one)."""
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    order = epoch_order(len(dataset), seed, epoch)  # type: ignore[arg-type]
    indices = order[first_step * batch_size : steps * batch_size].tolist()
    loader = DataLoader(dataset, batch_size=batch_size, sampler=indices, drop_last=True, num_workers=num_workers)
    yield from loader
