"""CLI commands for supernet training, candidate evaluation and latency tables."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from hyctas_cli.parallel import UseGpuOpt, WorkersOpt, read_training_yaml, resolve_spec, run_parallel
from hyctas_cli.utils import cli_progress, fail, load_arch, parse_size

if TYPE_CHECKING:
    from hyctas_core.data.cityscapes import CityscapesDataset
    from hyctas_core.train import SupernetTrainConfig

__all__ = ["evaluate", "latency_app", "train_supernet"]

latency_app = typer.Typer(help="Latency lookup tables (per device, per input size).", no_args_is_help=True)


def _dataset(root: Path, split: str, **kwargs: Any) -> CityscapesDataset:
    from hyctas_core.data.base import DatasetError
    from hyctas_core.data.cityscapes import CityscapesDataset

    if not root.is_dir():
        fail(f"data directory {str(root)!r} does not exist")
    try:
        return CityscapesDataset(root, split, **kwargs)
    except DatasetError as e:
        fail(str(e))


def _load_config(config: Path | None, overrides: dict[str, Any]) -> tuple[SupernetTrainConfig, dict[str, Any]]:
    """The training config (with the overrides) and the YAML's ``parallel:`` section."""
    from hyctas_core.train import SupernetTrainConfig

    try:
        fields, parallel = read_training_yaml(config) if config is not None else ({}, {})
        cfg = SupernetTrainConfig.from_mapping(fields)
        data = cfg.to_dict()
        data.update({k: v for k, v in overrides.items() if v is not None})
        return SupernetTrainConfig.from_dict(data), parallel
    except (OSError, ValueError) as e:
        fail(str(e).splitlines()[0])


def train_supernet(
    data: Annotated[Path, typer.Option("--data", help="dataset root in the Cityscapes layout")],
    out: Annotated[Path, typer.Option("--out", help="run directory (checkpoints, log)")],
    config: Annotated[Path | None, typer.Option("--config", help="YAML training config")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue the run in --out")] = False,
    epochs: Annotated[int | None, typer.Option(min=1, help="override the config's epochs")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda[:N]")] = "cpu",
    workers: WorkersOpt = None,
    use_gpu: UseGpuOpt = False,
) -> None:
    """Train the weight-sharing supernet, sampling one sub-network per step.

    With --workers N > 1 the run is data-parallel on Ray Train (a local Ray, or RAY_ADDRESS's
    cluster): every worker trains the same sub-network on its slice of each batch, and the result
    matches one process with the same batch.
    """
    import yaml
    from rich.progress import BarColumn, TextColumn, TimeRemainingColumn

    from hyctas_core.data.transforms import SegTransform
    from hyctas_core.train import SupernetTrainer

    if config is not None and not config.is_file():
        fail(f"config file {str(config)!r} does not exist")
    cfg, section = _load_config(config, {"epochs": epochs})
    spec = resolve_spec(section, workers, use_gpu, batch_size=cfg.batch_size)
    has_ckpt = (out / "last.pt").exists()
    if has_ckpt and not resume:
        fail(f"{out} already holds a run (last.pt): pass --resume to continue it, or choose another --out")
    if resume and not has_ckpt:
        fail(f"--resume: no checkpoint {out / 'last.pt'} to resume from")
    transform = SegTransform(crop_size=cfg.crop_size, scale_range=cfg.scale_range, base_size=cfg.base_size)
    dataset = _dataset(data, "train", transform=transform, seed=cfg.seed)
    try:
        trainer = SupernetTrainer(cfg, dataset, out, device=device)
        if resume:
            trainer.resume()
    except ValueError as e:
        fail(str(e))
    if trainer.finished:
        typer.echo(f"the run in {out} already finished ({trainer.step} steps); nothing to do")
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    columns = [
        TextColumn("epoch {task.fields[epoch]}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("loss {task.fields[loss]:.3f}  {task.fields[rate]:.1f} img/s"),
        TimeRemainingColumn(),
    ]
    with cli_progress(*columns, transient=False) as bar:
        task = bar.add_task(
            "train", total=trainer.total_steps, completed=trainer.step, epoch=trainer.epoch, loss=0.0, rate=0.0
        )
        if spec.workers > 1:
            job = {"config": cfg.to_dict(), "data_dir": str(data.resolve())}

            def show(p: dict[str, Any]) -> None:
                bar.update(task, completed=p["step"], epoch=p["epoch"], loss=p["loss"], rate=p["images_per_s"])

            summary = run_parallel("supernet", job, out, spec=spec, on_progress=show)
        else:
            summary = trainer.fit(
                progress=lambda p: bar.update(task, completed=p.step, epoch=p.epoch, loss=p.loss, rate=p.images_per_s)
            )
    typer.echo(json.dumps(summary))


def evaluate(
    data: Annotated[Path, typer.Option("--data", help="dataset root in the Cityscapes layout")],
    supernet: Annotated[
        Path | None, typer.Option("--supernet", help="supernet checkpoint (supernet.pt or last.pt)")
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", help="or a retrained network (best.pt / last.pt of hyctas retrain)")
    ] = None,
    task: Annotated[str, typer.Option(help="semantic (mIoU) or panoptic (PQ/SQ/RQ; needs --checkpoint)")] = "semantic",
    predictions: Annotated[
        Path | None, typer.Option("--predictions", help="--task panoptic: keep the COCO panoptic PNGs + JSON here")
    ] = None,
    arch: Annotated[Path | None, typer.Option("--arch", help="arch in the official JSON format")] = None,
    preset: Annotated[str | None, typer.Option("--preset")] = None,
    calib_images: Annotated[int, typer.Option(min=0, help="training images for BN recalibration (0: none)")] = 64,
    val_images: Annotated[int, typer.Option(min=1, help="validation images scored")] = 32,
    eval_size: Annotated[str | None, typer.Option(help="resize images to HxW before scoring")] = None,
    input_size: Annotated[str | None, typer.Option(help="HxW for latency and FLOPs (default: image size)")] = None,
    latency_table: Annotated[Path | None, typer.Option(help="predict latency from this table")] = None,
    latency_seconds: Annotated[float, typer.Option(min=0.05, help="measurement duration")] = 2.0,
    seed: Annotated[int, typer.Option(help="fixes the calibration / validation subsets")] = 0,
    device: Annotated[str, typer.Option(help="cpu or cuda[:N]")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Score one architecture with the supernet's weights: BN recalibration, mIoU, latency, FLOPs.

    With --checkpoint instead, score a retrained network: mIoU, or with --task panoptic PQ / SQ /
    RQ (all, things, stuff, per class) and mIoU.
    """
    from hyctas_core.retrain import TASKS

    if task not in TASKS:
        fail(f"--task must be one of {', '.join(TASKS)}, got {task!r}")
    if supernet is not None and checkpoint is not None:
        fail("give only one of --supernet FILE (an arch with supernet weights) or --checkpoint FILE (a retrained net)")
    if checkpoint is not None:
        if arch is not None or preset is not None:
            fail("--checkpoint holds its own architecture: drop --arch / --preset")
        _evaluate_checkpoint(checkpoint, data, task, predictions, val_images, eval_size, seed, device, as_json)
        return
    if supernet is None:
        fail("give --supernet FILE (with --arch or --preset), or --checkpoint FILE of a retrained network")
    if task == "panoptic":
        fail("--task panoptic scores a retrained network: give --checkpoint FILE from hyctas retrain --task panoptic")
    if predictions is not None:
        fail("--predictions is for --task panoptic with --checkpoint")
    from hyctas_core.data.transforms import SegTransform
    from hyctas_core.evaluate import CandidateEvaluator
    from hyctas_core.latency import LatencyModel, LatencyTable, LookupTableLatency, MeasuredLatency
    from hyctas_core.search_space import ArchError
    from hyctas_core.train import load_supernet

    candidate = load_arch(preset, arch)
    try:
        net = load_supernet(supernet, device=device)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    if candidate.num_layers > net.cfg.num_layers:
        fail(f"the arch has {candidate.num_layers} cells per branch; the supernet has {net.cfg.num_layers}")
    base = parse_size(eval_size) if eval_size else None
    transform = SegTransform(crop_size=None, train=False, base_size=base)
    calib = _dataset(data, "train", transform=transform, seed=seed)
    val = _dataset(data, "val", transform=transform, seed=seed)
    size: tuple[int, int] = (
        parse_size(input_size) if input_size else (int(val[0]["image"].shape[-2]), int(val[0]["image"].shape[-1]))
    )
    latency: LatencyModel
    if latency_table is not None:
        try:
            table = LatencyTable.load(latency_table)
        except (FileNotFoundError, ValueError) as e:
            fail(str(e))
        if tuple(table.input_size) != size or table.model != net.cfg.to_dict():
            fail(f"latency table {latency_table} was built for input {table.input_size} and another model config")
        latency = LookupTableLatency(table)
    else:
        latency = MeasuredLatency(net.cfg, size, duration_s=latency_seconds, device=device)
    evaluator = CandidateEvaluator(
        net,
        calib,
        val,
        latency,
        input_size=size,
        calib_images=max(calib_images, 1),
        val_images=val_images,
        seed=seed,
        device=device,
    )
    try:
        result = evaluator.evaluate(candidate, recalibrate=calib_images > 0)
    except ArchError as e:
        fail(str(e))
    out = {"arch": candidate.to_official(), **result.to_dict(), "input_size": list(size)}
    if as_json:
        typer.echo(json.dumps(out))
        return
    typer.echo(
        f"arch {result.arch_hash}: mIoU {100 * result.miou:.2f}  latency {result.latency_ms:.2f} ms "
        f"({result.latency_source})  {result.gmacs:.2f} GMACs  {result.params_m:.3f} M params  "
        f"[{result.calib_images} calibration / {result.val_images} validation images, {result.seconds:.1f} s]"
    )


def _evaluate_checkpoint(
    checkpoint: Path,
    data: Path,
    task: str,
    predictions: Path | None,
    val_images: int,
    eval_size: str | None,
    seed: int,
    device: str,
    as_json: bool,
) -> None:
    """``hyctas evaluate --checkpoint``: mIoU, or PQ / SQ / RQ and mIoU, of a retrained network."""
    from hyctas_core.data.labels import train_id_to_id
    from hyctas_core.data.transforms import SegTransform
    from hyctas_core.evaluate import evaluate_miou, subset_indices
    from hyctas_core.metrics import MetricsError
    from hyctas_core.panoptic import evaluate_panoptic
    from hyctas_core.retrain import load_model

    if device != "cpu":
        import torch

        if not torch.cuda.is_available():
            fail(f"device {device!r} requested but CUDA is not available here")
    if predictions is not None and task != "panoptic":
        fail("--predictions is for --task panoptic")
    if predictions is not None and predictions.exists() and not predictions.is_dir():
        fail(f"--predictions {str(predictions)!r} exists and is not a directory")
    try:
        net, arch, cfg = load_model(checkpoint, device=device)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    panoptic = task == "panoptic"
    if panoptic and not net.panoptic:
        fail(f"{checkpoint} holds a semantic network; --task panoptic needs one from hyctas retrain --task panoptic")
    base = parse_size(eval_size) if eval_size else cfg.base_size  # default: as the run validated
    transform = SegTransform(crop_size=None, train=False, base_size=base)
    val = _dataset(data, "val", transform=transform, seed=seed, return_instances=panoptic)
    num_classes = cfg.model.num_classes
    if num_classes != val.num_classes:
        fail(f"the checkpoint predicts {num_classes} classes; Cityscapes has {val.num_classes} train classes")
    indices = subset_indices(len(val), val_images, seed, stream=4)
    from hyctas_core.profile import count_params, count_training_head_params

    head = {
        "task": task,
        "checkpoint": str(checkpoint),
        "arch_hash": arch.hash,
        "params_m": count_params(net) / 1e6,  # the network inference runs
        "training_head_params_m": count_training_head_params(net) / 1e6,  # auxiliary head, training only
    }
    if panoptic:
        try:
            evaluation = evaluate_panoptic(
                net,
                val,
                cfg=cfg.panoptic,
                num_classes=num_classes,
                indices=indices,
                class_names=val.class_names,
                category_ids=[train_id_to_id(t) for t in range(num_classes)],  # Cityscapes label ids
                device=device,
                out_dir=predictions,
            )
        except (MetricsError, OSError) as e:
            fail(str(e).splitlines()[0])
        out = {**head, **evaluation.to_dict(), "val_images": len(indices)}
    else:
        cm = evaluate_miou(net, val, indices, num_classes, device=device)
        out = {**head, **cm.to_dict(val.class_names), "val_images": len(indices)}
    if as_json:
        typer.echo(json.dumps(out))
        return
    if panoptic:
        typer.echo(
            f"{checkpoint}: PQ {_pct(out['pq'])} (things {_pct(out['things']['pq'])}, stuff {_pct(out['stuff']['pq'])})"
            f"  SQ {_pct(out['sq'])}  RQ {_pct(out['rq'])}  mIoU {_pct(out['miou'])}  "
            f"[{len(indices)} validation images, post-processing {out['postprocess_ms']:.1f} ms/image]"
        )
    else:
        typer.echo(
            f"{checkpoint}: mIoU {_pct(out.get('miou'))}  {out['params_m']:.3f} M params  "
            f"[{len(indices)} validation images]"
        )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


@latency_app.command("build-table")
def build_table_cmd(
    out: Annotated[Path, typer.Option("--out", help="table file (JSON)")],
    input_size: Annotated[str, typer.Option("--input-size", help="HxW the table is for")] = "512x1024",
    device: Annotated[str, typer.Option(help="cpu or cuda[:N]; part of the table's identity")] = "cpu",
    supernet: Annotated[Path | None, typer.Option(help="take the model config from this checkpoint")] = None,
    base_channels: Annotated[int, typer.Option(min=1, max=256)] = 12,
    output_stride: Annotated[int, typer.Option(help="8 or 4")] = 8,
    seconds_per_entry: Annotated[float, typer.Option(min=0.001)] = 0.1,
    calibrate: Annotated[
        int, typer.Option(min=0, max=1000, help="also measure N sampled networks and fit per-op scales to them")
    ] = 0,
    device_class: Annotated[
        str | None,
        typer.Option(help="the device class this machine stands for (cpu, V100, RTX3090...): searches choose by it"),
    ] = None,
) -> None:
    """Time every op configuration of the search space at one input size on one device.

    Keep one table per device class in a directory and give the directory as a search's latency
    table: the search uses the table of its device class.
    """

    from hyctas_core.config import ModelConfig
    from hyctas_core.latency import build_table

    size = parse_size(input_size)
    if device_class is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", device_class):
        fail(f"--device-class {device_class!r}: letters, digits, '_', '.', '-' (1-64)")
    if not out.parent.is_dir():
        fail(f"output directory {str(out.parent)!r} does not exist")
    if device != "cpu":
        import torch

        if not torch.cuda.is_available():
            fail(f"device {device!r} requested but CUDA is not available here")
    if supernet is not None:
        from hyctas_core.train import load_supernet

        try:
            cfg = load_supernet(supernet).cfg
        except (FileNotFoundError, ValueError) as e:
            fail(str(e))
    else:
        try:
            cfg = ModelConfig(base_channels=base_channels, output_stride=output_stride)
        except ValueError as e:
            fail(str(e))
    with cli_progress() as bar:
        task = bar.add_task("timing ops", total=None)
        table = build_table(
            cfg,
            size,
            device=device,
            duration_s=seconds_per_entry,
            calibration_archs=calibrate,
            progress=lambda d, t, k: bar.update(task, completed=d, total=t),
            device_class=device_class,
        )
    table.save(out)
    fitted = f", calibrated on {calibrate} networks" if calibrate else ""
    typer.echo(f"wrote {len(table.entries)} entries for {table.device_name} at {size[0]}x{size[1]}{fitted} to {out}")
