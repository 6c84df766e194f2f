"""``hyctas metrics``: semantic (mIoU) and panoptic (PQ) metrics of prediction files.

Malformed inputs print one line ``error: ...`` on stderr and exit with status 2.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, cast

import typer

from hyctas_cli.utils import cli_console, fail

if TYPE_CHECKING:
    from hyctas_core.metrics import PanopticResult, SemsegDataset, SemsegResult

__all__ = ["app"]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Segmentation metrics: mIoU (Cityscapes / ADE20K PNGs) and panoptic quality (COCO panoptic format).",
)

_DATASETS = ("cityscapes", "ade20k")
JsonFlag = Annotated[bool, typer.Option("--json", help="print one JSON object")]


def _pct(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.2f}"


R = TypeVar("R", "SemsegResult", "PanopticResult")


def _report(compute: Callable[[], R], as_json: bool, show: Callable[[R], None]) -> None:
    """Compute the metric (a MetricsError exits 2 with its one line), then print it as one JSON
    object or as ``show`` draws it."""
    from hyctas_core.metrics import MetricsError

    try:
        result = compute()
    except MetricsError as e:
        fail(str(e))
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
    else:
        show(result)


@app.command()
def semseg(
    dataset: Annotated[str, typer.Option("--dataset", help="cityscapes or ade20k")] = "",
    gt: Annotated[
        list[Path] | None, typer.Option("--gt", help="ground-truth PNG file or directory (repeatable)")
    ] = None,
    pred: Annotated[
        list[Path] | None, typer.Option("--pred", help="prediction PNG file or directory (repeatable)")
    ] = None,
    pred_ids: Annotated[
        str,
        typer.Option(
            "--pred-ids",
            help="train: train ids (Cityscapes 0..18, ADE20K 0..149); label: the official submission "
            "encoding (Cityscapes label ids, ADE20K 1..150). Other values (255, void) count as misses.",
        ),
    ] = "train",
    as_json: JsonFlag = False,
) -> None:
    """Per-class IoU and mIoU of prediction PNGs against Cityscapes or ADE20K ground truth."""
    from hyctas_core.metrics import PRED_IDS, PredIds, evaluate_semseg_files

    if dataset not in _DATASETS:
        fail(f"--dataset must be cityscapes or ade20k, got {dataset!r}")
    if pred_ids not in PRED_IDS:
        fail(f"--pred-ids must be train or label, got {pred_ids!r}")
    if not gt:
        fail("give at least one --gt FILE_OR_DIR")
    if not pred:
        fail("give at least one --pred FILE_OR_DIR")
    _report(
        lambda: evaluate_semseg_files(cast("SemsegDataset", dataset), gt, pred, cast("PredIds", pred_ids)),
        as_json,
        _print_semseg,
    )


def _print_semseg(result: SemsegResult) -> None:
    from rich.table import Table

    data = result.to_dict()
    table = Table(title=f"{result.dataset}: {result.num_images} image(s)")
    table.add_column("class", justify="left")
    table.add_column("IoU %", justify="right")
    present = {name: iou for name, iou in data["per_class"].items() if iou is not None}
    for name, iou in present.items():
        table.add_row(name, _pct(iou))
    absent = len(data["per_class"]) - len(present)
    if absent:
        table.caption = f"{absent} absent class(es) not shown"
    console = cli_console()
    console.print(table)
    console.print(
        f"mIoU: {_pct(data['miou'])} % over {len(present)} class(es)   pixel accuracy: {_pct(data['pixel_accuracy'])} %"
    )
    if data["void_predictions"]:
        console.print(f"{data['void_predictions']} pixel(s) predicted outside the classes, counted as misses")


@app.command()
def panoptic(
    gt_json: Annotated[Path | None, typer.Option("--gt-json", help="ground-truth COCO panoptic JSON")] = None,
    gt_folder: Annotated[Path | None, typer.Option("--gt-folder", help="folder of ground-truth PNGs")] = None,
    pred_json: Annotated[Path | None, typer.Option("--pred-json", help="prediction COCO panoptic JSON")] = None,
    pred_folder: Annotated[Path | None, typer.Option("--pred-folder", help="folder of prediction PNGs")] = None,
    as_json: JsonFlag = False,
) -> None:
    """PQ / SQ / RQ (All, Things, Stuff and per class) with the panopticapi matching rules."""
    from hyctas_core.metrics import pq_compute

    given = {"--gt-json": gt_json, "--gt-folder": gt_folder, "--pred-json": pred_json, "--pred-folder": pred_folder}
    missing = [name for name, value in given.items() if value is None]
    if missing:
        fail(f"missing option(s) {', '.join(missing)}; all of --gt-json, --gt-folder, --pred-json, --pred-folder")
    assert gt_json is not None and gt_folder is not None and pred_json is not None and pred_folder is not None
    _report(lambda: pq_compute(gt_json, gt_folder, pred_json, pred_folder), as_json, _print_panoptic)


def _print_panoptic(result: PanopticResult) -> None:
    from rich.table import Table

    data: dict[str, Any] = result.to_dict()
    console = cli_console()
    summary = Table(title=f"panoptic quality: {result.num_images} image(s)")
    for name in ("", "PQ %", "SQ %", "RQ %", "N"):
        summary.add_column(name, justify="left" if not name else "right")
    for key, label in (("all", "All"), ("things", "Things"), ("stuff", "Stuff")):
        s = data[key]
        summary.add_row(label, _pct(s["pq"]), _pct(s["sq"]), _pct(s["rq"]), str(s["n"]))
    console.print(summary)
    per_class = Table(title="per class")
    for name in ("class", "kind", "PQ %", "SQ %", "RQ %", "TP", "FP", "FN"):
        per_class.add_column(name, justify="left" if name in ("class", "kind") else "right")
    shown = 0
    for name, s in data["per_class"].items():
        if s["pq"] is None:
            continue
        shown += 1
        kind = "thing" if s["isthing"] else "stuff"
        per_class.add_row(
            name, kind, _pct(s["pq"]), _pct(s["sq"]), _pct(s["rq"]), str(s["tp"]), str(s["fp"]), str(s["fn"])
        )
    if shown < len(data["per_class"]):
        per_class.caption = f"{len(data['per_class']) - shown} absent category(ies) not shown"
    console.print(per_class)
