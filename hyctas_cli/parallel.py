"""``--workers N``: ``hyctas train`` and ``hyctas retrain`` on N data-parallel Ray Train workers.

The command checks its inputs and builds the run in this process as usual (so every error is
the same one-line error as for one worker), then hands the run to
:func:`services.worker.data_parallel.fit_data_parallel` on a local Ray (or ``RAY_ADDRESS``'s
cluster) and drives the same progress bar from rank 0's progress records.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from hyctas_cli.utils import fail

__all__ = ["UseGpuOpt", "WorkersOpt", "check_workers", "run_parallel"]

WorkersOpt = Annotated[
    int, typer.Option(min=1, help="data-parallel workers on Ray Train; the batch is split over them")
]
UseGpuOpt = Annotated[bool, typer.Option("--use-gpu", help="with --workers: one GPU per worker (NCCL)")]


def check_workers(workers: int, batch_size: int) -> None:
    """Exit 2 with one line unless the global batch splits evenly over the workers."""
    from hyctas_core.parallel import DataParallel

    try:
        DataParallel(0, workers).local_batch(batch_size)
    except ValueError as e:
        fail(f"--workers {workers}: {e}")


def run_parallel(
    kind: Literal["supernet", "retrain"],
    job: dict[str, Any],
    out: Path,
    *,
    workers: int,
    use_gpu: bool,
    on_progress: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """Train on ``workers`` Ray Train workers; the summary (exit 2 with one line if the run fails,
    130 on Ctrl-C, after which ``--resume`` continues from the last checkpoint)."""
    from services.worker.data_parallel import ParallelSpec, fit_data_parallel
    from services.worker.ray_init import RayStartError, init_ray

    try:
        init_ray(None)
    except RayStartError as e:
        fail(str(e))
    spec = ParallelSpec(workers=workers, use_gpu=use_gpu)
    try:
        return fit_data_parallel(
            kind, job, out, spec, storage_path=out.resolve() / "ray_train", on_progress=on_progress
        )
    except RuntimeError as e:
        fail(str(e).splitlines()[0])
    except KeyboardInterrupt:
        typer.echo("interrupted; continue from the last checkpoint with --resume", err=True)
        raise typer.Exit(130) from None
