"""Can a front be trusted? Retrain some of its points briefly and compare the two rankings.

A one-shot search ranks sub-networks by their mIoU *inside the supernet* (shared weights, BN
statistics recalibrated). Verification takes ``k`` points spread over a finished search's
Pareto front, trains each from scratch with one short budget, and reports the rank agreement
of the two scores (Kendall tau and Spearman) next to every point's two mIoUs: the
"supernet fidelity" of this search, on this dataset.

The record lives with the search (:meth:`SearchStore.set_search_verification`) and is
rewritten after every retrained point, so a verification that is interrupted resumes with
the points still missing::

    {"state": "running" | "succeeded" | "failed", "k": 4, "done": 2, "epochs": 8,
     "rows": [{"arch_hash", "num_branches", "supernet_miou", "cost", "retrained_miou"}],
     "kendall_tau": None, "spearman": None, "error": None}

:func:`run_verification` holds the logic; the caller passes how one point is retrained
(:func:`retrain_point` in one process here, a Ray actor in the service's worker).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from scipy import stats

from hyctas_core.configbase import ConfigBase
from hyctas_core.search import SearchConfig
from hyctas_core.search_runner import StopSearch
from hyctas_core.storage import IndividualRecord, SearchRecord, SearchStore

__all__ = [
    "MAX_VERIFY_K",
    "NothingToVerify",
    "VerifyConfig",
    "fidelity",
    "pick_points",
    "retrain_point",
    "run_verification",
    "verification_summary",
]

MAX_VERIFY_K = 16


class NothingToVerify(ValueError):
    """The front has fewer than 2 points: there is no ranking to compare."""


@dataclass(frozen=True)
class VerifyConfig(ConfigBase):
    """How many front points to retrain, and the short budget each gets (the same for all)."""

    config_name: ClassVar[str] = "verify config"

    k: int
    epochs: int = 8
    lr: float = 0.05
    batch_size: int = 8
    loss: str = "ce"  # plain cross-entropy: at short budgets top-k ranked nets by noise
    seed: int = 0

    def __post_init__(self) -> None:
        if not 2 <= self.k <= MAX_VERIFY_K:
            raise ValueError(f"verify k must be in 2..{MAX_VERIFY_K} (a rank correlation needs 2 points), got {self.k}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(
                f"verify epochs >= 1, batch_size >= 1 and lr > 0 required, got {self.epochs}, {self.batch_size}, "
                f"{self.lr}"
            )


def pick_points(front: Sequence[IndividualRecord], k: int, cost_key: str) -> list[IndividualRecord]:
    """``k`` points spread evenly over the front ordered by cost, both ends included (all if fewer).

    Spread, not the top ``k`` by mIoU: neighbours on a front differ by less than training
    noise, so only a spread tests whether the supernet orders networks as training does.
    """
    ordered = sorted(front, key=lambda ind: (float(ind.objectives[cost_key]), ind.arch_hash))
    if len(ordered) <= k:
        return ordered
    spots = np.linspace(0, len(ordered) - 1, k)
    chosen: list[IndividualRecord] = []
    for spot in spots:
        ind = ordered[int(round(float(spot)))]
        if ind not in chosen:
            chosen.append(ind)
    return chosen


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 4)


def fidelity(supernet: Sequence[float], retrained: Sequence[float]) -> dict[str, float | None]:
    """Kendall tau and Spearman rho of two score lists; None where undefined (fewer than 2, or constant)."""
    if len(supernet) < 2 or len(set(supernet)) < 2 or len(set(retrained)) < 2:
        return {"kendall_tau": None, "spearman": None}
    return {
        "kendall_tau": _finite(float(stats.kendalltau(supernet, retrained).statistic)),
        "spearman": _finite(float(stats.spearmanr(supernet, retrained).statistic)),
    }


def _new_record(search: SearchRecord, front: list[IndividualRecord], cfg: VerifyConfig) -> dict[str, Any]:
    cost_key = SearchConfig.from_dict(search.config["search"]).cost_key
    points = pick_points(front, cfg.k, cost_key)
    if len(points) < 2:
        raise NothingToVerify(f"search {search.name!r} has {len(points)} front point(s): nothing to rank")
    rows = [
        {
            "arch_hash": ind.arch_hash,
            "num_branches": ind.num_branches,
            "supernet_miou": float(ind.objectives["miou"]),
            "cost": float(ind.objectives[cost_key]),
            "retrained_miou": None,
        }
        for ind in points
    ]
    return {
        "state": "running",
        "k": len(rows),
        "requested_k": cfg.k,
        "epochs": cfg.epochs,
        "cost_key": cost_key,
        "done": 0,
        "rows": rows,
        "kendall_tau": None,
        "spearman": None,
        "error": None,
    }


def run_verification(
    storage: SearchStore,
    search_id: int,
    cfg: VerifyConfig,
    retrain: Callable[[dict[str, Any]], float],
    *,
    on_point: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Retrain the chosen front points of a finished search (resuming a stored, unfinished record).

    Args:
        retrain: given a row (``arch_hash`` ...) and the arch from the search, returns its
            val mIoU after the short budget; called once per point not yet retrained.
        on_point: called with the record after each stored point.
        should_stop: checked before each point; when true the record stays ``running``
            (resumable) and is returned as it is. A :class:`StopSearch` from ``retrain``
            leaves it the same way.

    Returns:
        The stored record. On an exception from ``retrain`` the record is stored as
        ``failed`` with the message and the exception propagates.

    Raises:
        NothingToVerify: the front has fewer than 2 points (stored as a failed record too).
    """
    search = storage.get_search(search_id)
    front = storage.pareto_front(search_id)
    record = search.verification
    if not record or record.get("state") not in ("running", "failed") or not record.get("rows"):
        try:
            fresh = _new_record(search, front, cfg)
        except NothingToVerify as exc:
            failed = {"state": "failed", "k": 0, "done": 0, "rows": [], "error": str(exc)}
            storage.set_search_verification(search_id, {**(record or {}), **failed})
            raise
        record = {**(record or {}), **fresh}  # keeps e.g. the job id
    record = {**record, "state": "running", "error": None}
    storage.set_search_verification(search_id, record)
    arch_of = {ind.arch_hash: ind.arch for ind in front}
    try:
        for row in record["rows"]:
            if row["retrained_miou"] is not None:
                continue
            if should_stop is not None and should_stop():
                return record
            row["retrained_miou"] = float(retrain({**row, "arch": arch_of[row["arch_hash"]]}))
            record["done"] = sum(r["retrained_miou"] is not None for r in record["rows"])
            storage.set_search_verification(search_id, record)
            if on_point is not None:
                on_point(record)
    except StopSearch:
        raise  # stopped on purpose (cancelled, or another worker took over): the record stays resumable
    except BaseException as exc:
        record["state"] = "failed"
        record["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        storage.set_search_verification(search_id, record)
        raise
    rows = record["rows"]
    record.update(fidelity([r["supernet_miou"] for r in rows], [r["retrained_miou"] for r in rows]))
    record["state"] = "succeeded"
    storage.set_search_verification(search_id, record)
    return record


def verification_summary(record: dict[str, Any] | None) -> str:
    """One line for a table caption or a log: the fidelity figure with its k, or the state."""
    if not record:
        return "supernet fidelity: not verified"
    k = record.get("k", 0)
    if record.get("state") == "succeeded":
        tau, rho = record.get("kendall_tau"), record.get("spearman")
        if tau is None:
            return f"supernet fidelity: undefined over {k} retrained front points (constant scores)"
        return f"supernet fidelity: Kendall tau {tau:+.2f} (Spearman {rho:+.2f}) over {k} retrained front points"
    if record.get("state") == "failed":
        return f"supernet fidelity: verification failed after {record.get('done', 0)}/{k}: {record.get('error')}"
    return f"supernet fidelity: verification {record.get('state', 'queued')} ({record.get('done', 0)}/{k} retrained)"


def retrain_point(
    arch_json: dict[str, Any],
    *,
    supernet: Path,
    data: Path,
    cfg: VerifyConfig,
    val_images: int | None,
    run_dir: Path,
    device: str = "cpu",
    progress: Callable[[Any], None] | None = None,
) -> float:
    """Train one architecture from scratch with the verification budget; its val mIoU.

    The model (base channels, layers, classes) and the crop size come from the supernet's
    training config, so the retrained network is the sub-network the search scored.
    """
    import torch

    from hyctas_core.data.cityscapes import CityscapesDataset
    from hyctas_core.data.transforms import SegTransform
    from hyctas_core.retrain import RetrainConfig, Retrainer
    from hyctas_core.search_space import Arch
    from hyctas_core.train import SupernetTrainConfig

    ckpt = torch.load(Path(supernet), map_location="cpu", weights_only=False)
    train_cfg = SupernetTrainConfig.from_dict(ckpt["config"])
    retrain_cfg = RetrainConfig(
        model=train_cfg.model,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        loss=cfg.loss,
        crop_size=train_cfg.crop_size,
        scale_range=train_cfg.scale_range,
        base_size=train_cfg.base_size,
        eval_every=cfg.epochs,
        val_images=val_images,
        seed=cfg.seed,
        checkpoint_every=10**6,
        log_every=10**6,
    )
    train_set = CityscapesDataset(
        data,
        "train",
        transform=SegTransform(
            crop_size=train_cfg.crop_size, scale_range=train_cfg.scale_range, base_size=train_cfg.base_size
        ),
        seed=cfg.seed,
    )
    val_set = CityscapesDataset(
        data, "val", transform=SegTransform(crop_size=None, train=False, base_size=train_cfg.base_size), seed=cfg.seed
    )
    retrainer = Retrainer(retrain_cfg, Arch.from_official(arch_json), train_set, val_set, run_dir, device=device)
    retrainer.resume()
    retrainer.fit(progress=progress)
    if retrainer.last_miou is None:
        raise RuntimeError(f"retraining {retrainer.arch.hash} produced no validation mIoU")
    return float(retrainer.last_miou)
