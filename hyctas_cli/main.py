"""The ``hyctas`` command line.

Errors a user can cause (bad preset, invalid arch JSON, bad sizes) print one line on stderr
and exit with status 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from hyctas_cli.utils import ModelOptions, cli_console, fail, model_options
from hyctas_core.config import ModelConfig

if TYPE_CHECKING:
    from hyctas_core.network import HyCTASNet

__all__ = ["app", "main"]

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="HyCTAS: hybrid conv-transformer NAS for real-time segmentation."
)


@app.command()
@model_options
def arch(
    model: ModelOptions,
    latency_seconds: Annotated[float, typer.Option(min=0.0, help="timing duration; 0 skips the latency")] = 2.0,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Show an architecture: branches, cells, params, GMACs and batch-1 latency here."""
    import torch

    from hyctas_core.network import HyCTASNet
    from hyctas_core.profile import count_macs, count_params, measure_latency

    a = model.arch()
    size = model.size()
    cfg = model.config(a)
    torch.manual_seed(0)
    net = HyCTASNet(a, cfg).eval()
    params = count_params(net)
    macs = count_macs(net, size)
    latency = measure_latency(net, size, duration_s=latency_seconds) if latency_seconds > 0 else None
    result = {
        "arch_hash": a.hash,
        "branches": a.num_branches,
        "output_scales": list(a.combination),
        "num_layers": a.num_layers,
        "base_channels": model.base_channels,
        "model": cfg.to_dict(),
        "params_m": round(params / 1e6, 4),
        "gmacs": round(macs / 1e9, 4),
        "latency_ms": round(latency.median_ms, 3) if latency else None,
        "latency_p90_ms": round(latency.p90_ms, 3) if latency else None,
        "input_size": list(size),
        "device": latency.device if latency else "cpu",
        "arch": a.to_official(),
    }
    if as_json:
        typer.echo(json.dumps(result))
        return
    _print_arch(net, result)


def _print_arch(net: HyCTASNet, result: dict[str, Any]) -> None:
    from rich.table import Table

    console = cli_console()
    ends = ", ".join(f"1/{s}" for s in result["output_scales"])
    table = Table(title=f"arch {result['arch_hash']}: {result['branches']} branch(es) ending at {ends}")
    for name, justify in (("branch", "left"), ("cell", "right"), ("op", "left"), ("scale", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    table.add_column("channels", justify="right")
    cells = {c.key: c for c in net.plan.cells}
    for br in net.plan.branches:
        for layer, key in enumerate(br.cells):
            c = cells[key]
            shared = sum(1 for b in net.plan.branches if key in b.cells) > 1
            scale = f"1/{c.in_scale}" + (f" -> 1/{c.out_scale}" if c.stride == 2 else "")
            op = c.op + (" (shared)" if shared else "")
            table.add_row(f"end 1/{br.end_scale}", str(layer), op, scale, f"{c.in_chs} -> {c.out_chs}")
        table.add_section()
    console.print(table)
    h, w = result["input_size"]
    console.print(f"params: {result['params_m']:.3f} M   GMACs @{h}x{w}: {result['gmacs']:.2f}")
    if result["latency_ms"] is not None:
        console.print(
            f"latency (batch 1, {result['device']}): {result['latency_ms']:.1f} ms median, "
            f"p90 {result['latency_p90_ms']:.1f} ms"
        )


@app.command()
@model_options
def export(
    out: Annotated[Path, typer.Option("--out", help="output file (.onnx or .pt)")],
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", help="a retrained best.pt / last.pt: export its trained network")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="onnx or torchscript")] = "onnx",
    *,
    model: ModelOptions,
) -> None:
    """Export a network to ONNX (one file) or TorchScript: a retrained checkpoint's trained
    network (--checkpoint), or a freshly initialised one for an architecture (--preset / --from-json,
    to time or inspect it)."""
    from hyctas_core.export import export_onnx, export_torchscript
    from hyctas_core.network import HyCTASNet

    size = model.size()
    if fmt not in ("onnx", "torchscript"):
        fail(f"--format must be onnx or torchscript, got {fmt!r}")
    if not out.parent.exists():
        fail(f"output directory {str(out.parent)!r} does not exist")
    if checkpoint is not None:
        if model.given:
            fail("--checkpoint holds its architecture: give no --preset / --from-json with it")
        from hyctas_core.retrain import load_model

        try:
            net, _, _ = load_model(checkpoint)
        except (FileNotFoundError, ValueError) as e:
            fail(str(e).splitlines()[0])
        what = f"the trained network of {checkpoint}"
    else:
        a = model.arch()
        net = HyCTASNet(a, model.config(a))
        what = "a freshly initialised network"
    net.eval()
    if fmt == "onnx":
        export_onnx(net, size, out)
    else:
        export_torchscript(net, size, out)
    typer.echo(f"wrote {what} to {out} ({size[0]}x{size[1]} input)")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="where every output goes")] = Path("runs/demo"),
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a previous demo in --out")] = False,
    seed: Annotated[int, typer.Option()] = 0,
    quick: Annotated[bool, typer.Option("--quick", help="a much smaller run (about a minute)")] = False,
    device: Annotated[str, typer.Option(help="cpu or cuda[:N]")] = "cpu",
) -> None:
    """The whole method end to end on a synthetic dataset: data, supernet, search, retrain, segment."""
    from dataclasses import replace

    from hyctas_cli.demo import DemoConfig, run_demo

    cfg = DemoConfig(seed=seed)
    if quick:
        cfg = replace(
            cfg,
            image_size=(64, 128),
            train_images=16,
            val_images=4,
            model=ModelConfig(base_channels=4, num_layers=6, num_classes=19),
            supernet_epochs=2,
            batch_size=4,
            pop_size=6,
            generations=2,
            calib_images=4,
            search_val_images=4,
            verify_k=2,
            verify_epochs=1,
            retrain_epochs=2,
            latency_seconds=0.2,
        )
    try:
        summary = run_demo(out, cfg, overwrite=overwrite, device=device)
    except FileExistsError as e:
        fail(str(e))
    typer.echo("\nDone in {:.0f} s. Outputs:".format(summary["seconds"]))
    rows = [*summary["outputs"].items(), ("summary", out / "demo.json")]
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        typer.echo(f"  {key:{width}s} {value}")


def _mount() -> None:
    """Sub-commands living in their own modules (their heavy imports stay inside the commands)."""
    from hyctas_cli import data as cli_data
    from hyctas_cli import metrics as cli_metrics
    from hyctas_cli import retrain as cli_retrain
    from hyctas_cli import search as cli_search
    from hyctas_cli import train as cli_train

    app.add_typer(cli_data.app, name="data", help="Datasets: the built-in synthetic street scenes.")
    app.add_typer(cli_metrics.app, name="metrics", help="mIoU and panoptic quality of prediction files.")
    app.add_typer(cli_train.latency_app, name="latency")
    app.command("train-supernet")(cli_train.train_supernet)
    app.command("evaluate")(cli_train.evaluate)
    app.command("search")(cli_search.search)
    app.command("pareto")(cli_search.pareto)
    app.command("export-arch")(cli_search.export_arch)
    app.command("retrain")(cli_retrain.retrain)
    app.add_typer(cli_search.db_app, name="db")
    try:  # the service commands need the 'services' extra
        from hyctas_cli import service as service_cli
    except ImportError:
        return
    app.command("controller")(service_cli.controller)
    app.command("worker")(service_cli.worker)
    app.command("serve")(service_cli.serve_local)
    app.command("deploy")(service_cli.deploy)
    app.add_typer(service_cli.apikey_app, name="apikey")
    cli_train.latency_app.command("fold-serving")(service_cli.fold_serving)


_mount()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
