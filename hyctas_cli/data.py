"""``hyctas data``: write the built-in synthetic street-scene benchmark in the Cityscapes layout.

Bad arguments (negative counts, a too-small size, a non-empty output directory) print one line
on stderr and exit with status 2.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from hyctas_cli.utils import cli_progress, fail, parse_size

__all__ = ["app", "synth"]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Datasets: generate the built-in synthetic street-scene benchmark (Cityscapes layout).",
)


@app.callback()
def _data() -> None:
    """Datasets: generate the built-in synthetic street-scene benchmark (Cityscapes layout)."""


@app.command()
def synth(
    out: Annotated[Path, typer.Option("--out", help="output directory (created; must be empty)")],
    train: Annotated[int, typer.Option("--train", help="number of training images")] = 20,
    val: Annotated[int, typer.Option("--val", help="number of validation images")] = 5,
    size: Annotated[str, typer.Option("--size", help="HxW, at least 64x128")] = "256x512",
    seed: Annotated[int, typer.Option("--seed", help="dataset seed (>= 0)")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a previous synthetic dataset")] = False,
    color: Annotated[bool, typer.Option("--color/--no-color", help="also write *_gtFine_color.png")] = True,
) -> None:
    """Render synthetic street scenes into leftImg8bit/ and gtFine/ under --out."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    from hyctas_core.data.synth import check_generate_args, generate

    hw = parse_size(size)
    try:
        check_generate_args(out, train=train, val=val, size=hw, seed=seed, overwrite=overwrite)
    except ValueError as e:
        fail(str(e))
    start = time.perf_counter()
    columns = (TextColumn("rendering"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with cli_progress(*columns, stderr=True, transient=True) as bar:
        task = bar.add_task("synth", total=train + val)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        try:
            summary = generate(
                out, train=train, val=val, size=hw, seed=seed, progress=advance, overwrite=overwrite, write_color=color
            )
        except ValueError as e:
            fail(str(e))
    seconds = time.perf_counter() - start
    typer.echo(
        f"wrote {summary['train']} train + {summary['val']} val scenes ({hw[0]}x{hw[1]}, seed {seed}, "
        f"{summary['files']} files) to {out} in {seconds:.1f}s"
    )
