"""Retraining a search's verification points in this process, behind a progress bar.

Shared by ``hyctas search --verify`` and the demo's verification stage; each draws its own bar
and passes the fields its bar shows for the point being retrained.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from hyctas_core.evaluate import EvaluatorSpec
    from hyctas_core.storage import SearchStore
    from hyctas_core.verify import VerifyConfig

__all__ = ["verify_search"]


def verify_search(
    storage: SearchStore,
    search_id: int,
    cfg: VerifyConfig,
    spec: EvaluatorSpec,
    run_root: Path,
    *,
    bar: Progress,
    task: TaskID,
    val_images: int | None,
    device: str,
    fields: Callable[[dict[str, Any]], dict[str, Any]] = lambda row: {"arch": row["arch_hash"]},
) -> None:
    """Retrain the points :func:`~hyctas_core.verify.run_verification` still needs, one at a time.

    ``bar``'s ``task`` restarts for every point with ``fields(row)`` and a ``loss`` field, and
    follows its training steps.

    Raises:
        NothingToVerify: the front has fewer than 2 points (the stored record says so too).
    """
    from hyctas_core.verify import retrain_point, run_verification

    def retrain(row: dict[str, Any]) -> float:
        bar.reset(task, total=None, loss=0.0, **fields(row))
        return retrain_point(
            row["arch"],
            supernet=Path(spec.supernet),
            data=Path(spec.data),
            cfg=cfg,
            val_images=val_images,
            run_dir=run_root / row["arch_hash"],
            device=device,
            progress=lambda p: bar.update(task, completed=p.step, total=p.total_steps, loss=p.loss),
        )

    run_verification(storage, search_id, cfg, retrain)
