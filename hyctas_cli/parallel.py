"""``--workers N``: ``hyctas train`` and ``hyctas retrain`` on N data-parallel Ray Train workers.

The command checks its inputs and builds the run in this process as usual (so every error is
the same one-line error as for one worker), then hands the run to
:func:`services.worker.data_parallel.fit_data_parallel` on a local Ray (or ``RAY_ADDRESS``'s
cluster) and drives the same progress bar from rank 0's progress records.

The workers can also come from the training YAML: a top-level ``parallel:`` mapping beside the
training fields (``workers``, ``use_gpu``, ``resources_per_worker``, ``sync_batchnorm``,
``max_failures``, ``threads_per_worker``); ``--workers`` / ``--use-gpu`` win over it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from hyctas_cli.utils import fail

__all__ = ["UseGpuOpt", "WorkersOpt", "read_training_yaml", "resolve_spec", "run_parallel"]

WorkersOpt = Annotated[
    int | None,
    typer.Option(min=1, help="data-parallel workers on Ray Train; the batch is split over them (default 1)"),
]
UseGpuOpt = Annotated[bool, typer.Option("--use-gpu", help="with --workers: one GPU per worker (NCCL)")]


def read_training_yaml(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the training fields, the ``parallel:`` mapping) of a training YAML.

    Raises:
        ValueError: not valid YAML, not a mapping, or ``parallel`` is not a mapping.
    """
    from hyctas_core.configbase import read_yaml_mapping

    data = read_yaml_mapping(path)
    parallel = data.pop("parallel", None) or {}
    if not isinstance(parallel, dict):
        raise ValueError(f"{path}: parallel must be a mapping (workers, use_gpu, ...)")
    return data, parallel


def resolve_spec(section: dict[str, Any], workers: int | None, use_gpu: bool, *, batch_size: int) -> Any:
    """The :class:`~services.worker.data_parallel.ParallelSpec` of a run: the YAML's ``parallel:``
    section with ``--workers`` / ``--use-gpu`` over it. Exits 2 with one line if it is bad, or if
    the global ``batch_size`` does not split evenly over its workers."""
    from hyctas_core.parallel import DataParallel
    from services.worker.data_parallel import ParallelSpec

    data = dict(section)
    if workers is not None:
        data["workers"] = workers
    if use_gpu:
        data["use_gpu"] = True
    try:
        spec = ParallelSpec.from_mapping(data)
    except (TypeError, ValueError) as e:
        fail(f"parallel: {str(e).splitlines()[0]}")
    try:
        DataParallel(0, spec.workers).local_batch(batch_size)
    except ValueError as e:
        fail(f"--workers {spec.workers}: {e}")
    return spec


def run_parallel(
    kind: Literal["supernet", "retrain"],
    job: dict[str, Any],
    out: Path,
    *,
    spec: Any,
    on_progress: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """Train on ``spec.workers`` Ray Train workers; the summary (exit 2 with one line if the run
    fails, 130 on Ctrl-C, after which ``--resume`` continues from the last checkpoint)."""
    from services.worker.data_parallel import fit_data_parallel
    from services.worker.ray_init import RayStartError, init_ray

    try:
        init_ray(None)
    except RayStartError as e:
        fail(str(e))
    try:
        return fit_data_parallel(
            kind, job, out, spec, storage_path=out.resolve() / "ray_train", on_progress=on_progress
        )
    except RuntimeError as e:
        fail(str(e).splitlines()[0])
    except KeyboardInterrupt:
        typer.echo("interrupted; continue from the last checkpoint with --resume", err=True)
        raise typer.Exit(130) from None
