"""Cost limits: what one request may ask the cluster for, checked before anything is stored.

Every limit is a setting (``HYCTAS_MAX_*``) and a request over one is a 422 that names it.
The defaults fit one GPU node for about a day:

- training (supernet, or each model of a retrain job): optimisation steps x batch x crop pixels,
  ``max_train_megapixels`` (3e6 MP: about 35 MP/s, a mid-range GPU on 512x1024 crops, for a day);
- a search: its population and generations (``max_population``, ``max_generations``), its
  evaluations (population x generations x branch counts), ``max_search_evaluations``,
  and evaluations x (calibration + validation images) x image pixels, ``max_search_megapixels``;
- a synthetic dataset: (train + val) x pixels, ``max_dataset_megapixels``, since it is rendered
  on first use;
- a user: queued plus running jobs, ``max_active_jobs_per_user``;
- data-parallel training: workers of one run, ``max_train_workers``.

A dataset given by path is assumed to hold the Cityscapes train split (2975 images of 1024x2048)
unless ``steps_per_epoch`` bounds the epoch.
"""

from __future__ import annotations

import math
from typing import Any

from services.storage.base import JobState, Storage

__all__ = ["LimitExceeded", "check_active_jobs", "check_dataset", "check_search", "check_training"]

CITYSCAPES_TRAIN = 2975
CITYSCAPES_SIZE = (1024, 2048)


class LimitExceeded(ValueError):
    """A request over a cost limit; the message names the limit and its setting (a 422)."""


def _over(what: str, value: float, setting: str, limit: float) -> LimitExceeded:
    return LimitExceeded(f"{what} is {value:,.0f}, over the limit of {limit:,.0f} (HYCTAS_{setting.upper()})")


SYNTHETIC_DEFAULTS = {"train": 24, "val": 8, "size": (64, 128)}  # = schemas.SyntheticDataset's


def _synthetic(dataset: dict[str, Any]) -> tuple[int, int, tuple[int, int]]:
    """(train, val, size) of a synthetic dataset reference (its schema defaults where a stored one omits them)."""
    d = {**SYNTHETIC_DEFAULTS, **dataset}
    return int(d["train"]), int(d["val"]), (int(d["size"][0]), int(d["size"][1]))


def _images_and_size(dataset: dict[str, Any] | None) -> tuple[int, tuple[int, int]]:
    """(training images, image size) of a dataset reference."""
    if dataset and dataset.get("kind") == "synthetic":
        train, _, size = _synthetic(dataset)
        return train, size
    return CITYSCAPES_TRAIN, CITYSCAPES_SIZE


def check_dataset(dataset: dict[str, Any] | None, limits: Any) -> None:
    """A synthetic dataset is rendered on first use: (train + val) x pixels is bounded."""
    if not dataset or dataset.get("kind") != "synthetic":
        return
    train, val, (h, w) = _synthetic(dataset)
    megapixels = (train + val) * h * w / 1e6
    if megapixels > limits.max_dataset_megapixels:
        raise _over("the synthetic dataset, (train + val) x pixels in MP,", megapixels, "max_dataset_megapixels",
                    limits.max_dataset_megapixels)  # fmt: skip


def check_training(
    *, epochs: int, batch_size: int, crop_size: tuple[int, int], steps_per_epoch: int | None,
    dataset: dict[str, Any] | None, limits: Any, models: int = 1, workers: int = 1,
) -> None:  # fmt: skip
    """Steps x batch x crop pixels (x models) within ``max_train_megapixels``; workers within
    ``max_train_workers``."""
    if workers > limits.max_train_workers:
        raise LimitExceeded(f"workers: at most {limits.max_train_workers} (HYCTAS_MAX_TRAIN_WORKERS), got {workers}")
    images, _ = _images_and_size(dataset)
    steps = epochs * (steps_per_epoch or math.ceil(images / batch_size))
    megapixels = models * steps * batch_size * crop_size[0] * crop_size[1] / 1e6
    if megapixels > limits.max_train_megapixels:
        raise _over("training, steps x batch x crop pixels in MP,", megapixels, "max_train_megapixels",
                    limits.max_train_megapixels)  # fmt: skip


def check_search(
    *, population: int, generations: int, branch_counts: int, calib_images: int, val_images: int,
    eval_size: tuple[int, int] | None, dataset: dict[str, Any] | None, limits: Any,
) -> None:  # fmt: skip
    """Population, generations, evaluations, and evaluations x images x pixels, within their limits."""
    if population > limits.max_population:
        raise LimitExceeded(f"population: at most {limits.max_population} (HYCTAS_MAX_POPULATION), got {population}")
    if generations > limits.max_generations:
        raise LimitExceeded(
            f"generations: at most {limits.max_generations} (HYCTAS_MAX_GENERATIONS), got {generations}"
        )
    evaluations = population * generations * branch_counts
    if evaluations > limits.max_search_evaluations:
        raise _over("the search's evaluations (population x generations x branch counts)", evaluations,
                    "max_search_evaluations", limits.max_search_evaluations)  # fmt: skip
    h, w = eval_size or _images_and_size(dataset)[1]
    megapixels = evaluations * (calib_images + val_images) * h * w / 1e6
    if megapixels > limits.max_search_megapixels:
        raise _over("the search's evaluations x (calibration + validation images) x pixels in MP,", megapixels,
                    "max_search_megapixels", limits.max_search_megapixels)  # fmt: skip


def check_active_jobs(storage: Storage, owner: str, limits: Any) -> None:
    """At most ``max_active_jobs_per_user`` queued plus running jobs per user."""
    active = sum(storage.list_jobs(owner=owner, state=s, limit=0)[1] for s in (JobState.QUEUED, JobState.RUNNING))
    if active >= limits.max_active_jobs_per_user:
        raise LimitExceeded(
            f"you have {active} queued or running jobs, the limit (HYCTAS_MAX_ACTIVE_JOBS_PER_USER) is "
            f"{limits.max_active_jobs_per_user}: wait for some to finish or cancel them"
        )
