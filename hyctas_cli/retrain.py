"""CLI command that retrains a chosen architecture from scratch (``hyctas retrain``)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from hyctas_cli.parallel import UseGpuOpt, WorkersOpt, read_training_yaml, resolve_spec, run_parallel
from hyctas_cli.utils import cli_progress, fail, load_arch

if TYPE_CHECKING:
    from hyctas_core.config import ModelConfig
    from hyctas_core.data.cityscapes import CityscapesDataset
    from hyctas_core.data.transforms import SegTransform
    from hyctas_core.retrain import RetrainConfig, RetrainProgress
    from hyctas_core.search_space import Arch

__all__ = ["retrain"]


def _dataset(root: Path, split: str, transform: SegTransform, seed: int, instances: bool = False) -> CityscapesDataset:
    from hyctas_core.data.base import DatasetError
    from hyctas_core.data.cityscapes import CityscapesDataset

    try:
        return CityscapesDataset(root, split, transform=transform, seed=seed, return_instances=instances)
    except DatasetError as e:
        fail(str(e))


def _config(
    path: Path | None, base: RetrainConfig | None, epochs: int | None, task: str | None
) -> tuple[RetrainConfig, dict[str, Any]]:
    """The YAML config at ``path`` (else ``base``, else the defaults) with ``--epochs`` / ``--task``
    applied, and the YAML's ``parallel:`` section."""
    from hyctas_core.retrain import TASKS, RetrainConfig

    if task is not None and task not in TASKS:
        fail(f"--task must be one of {', '.join(TASKS)}, got {task!r}")
    try:
        section: dict[str, Any] = {}
        if path is not None:
            fields, section = read_training_yaml(path)
            cfg = RetrainConfig.from_mapping(fields)
        else:
            cfg = base if base is not None else RetrainConfig()
        overrides = {k: v for k, v in (("epochs", epochs), ("task", task)) if v is not None}
        if overrides:
            cfg = RetrainConfig.from_dict({**cfg.to_dict(), **overrides})
        return cfg, section
    except (OSError, ValueError) as e:
        fail(str(e).splitlines()[0])


def _with_modules(cfg: RetrainConfig, source: ModelConfig) -> RetrainConfig:
    """``cfg`` with ``source``'s modules (head, attention, SE: see ``OFFICIAL_MODEL``) wherever
    the config left a module field at its default."""
    from hyctas_core.config import ModelConfig
    from hyctas_core.presets import modules_of

    defaults = modules_of(ModelConfig())
    given = {k: v for k, v in modules_of(cfg.model).items() if v != defaults[k]}
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **{**modules_of(source), **given}))


def _arch(arch_file: Path | None, preset: str | None, resumed: Arch | None) -> Arch:
    """The arch from ``--arch`` / ``--preset``; on resume it defaults to (and must match) the run's."""

    if arch_file is not None and preset is not None:
        fail("give only one of --arch FILE or --preset NAME")
    if arch_file is None and preset is None:
        if resumed is None:
            fail("give the architecture to retrain: --arch FILE (official JSON) or --preset NAME")
        return resumed
    chosen = load_arch(preset, arch_file)
    if resumed is not None and chosen.hash != resumed.hash:
        fail(f"the run to resume trains arch {resumed.hash}, not the given arch {chosen.hash}")
    return chosen


def _bar_fields(p: RetrainProgress) -> dict[str, Any]:
    miou = "-" if p.miou is None else f"{100 * p.miou:.2f}"
    best = "" if p.best_miou is None else f" (best {100 * p.best_miou:.2f})"
    pq = "" if p.pq is None else f"  PQ {100 * p.pq:.2f}"
    loss = 0.0 if math.isnan(p.loss) else p.loss
    return {"epoch": p.epoch + 1, "loss": loss, "rate": p.images_per_s, "miou": miou + best + pq}


def retrain(
    data: Annotated[Path, typer.Option("--data", help="dataset root in the Cityscapes layout")],
    out: Annotated[Path, typer.Option("--out", help="run directory (checkpoints, log)")],
    arch: Annotated[Path | None, typer.Option("--arch", help="arch to retrain, official JSON format")] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="or a shipped arch: hyctas-s, -m, -l")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="YAML retraining config")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue the run in --out")] = False,
    epochs: Annotated[int | None, typer.Option(min=1, help="override the config's epochs")] = None,
    task: Annotated[
        str | None, typer.Option(help="semantic, or panoptic (centre/offset heads, PQ); overrides the config's")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda[:N]")] = "cpu",
    workers: WorkersOpt = None,
    use_gpu: UseGpuOpt = False,
) -> None:
    """Retrain an architecture from scratch: poly LR, scheduled drop path, best/last checkpoints.

    With --resume, the arch and config default to the run's in --out; any given must match it.
    --task panoptic also needs the *_gtFine_instanceIds.png files and reports PQ.
    With --workers N > 1 the run is data-parallel on Ray Train (see ``hyctas train --help``).
    """
    import yaml
    from rich.progress import BarColumn, TextColumn, TimeRemainingColumn

    from hyctas_core.data.transforms import SegTransform
    from hyctas_core.retrain import Retrainer, RetrainProgress, read_checkpoint

    if config is not None and not config.is_file():
        fail(f"config file {str(config)!r} does not exist")
    if not data.is_dir():
        fail(f"data directory {str(data)!r} does not exist")
    last = out / "last.pt"
    if last.exists() and not resume:
        fail(f"{out} already holds a run (last.pt): pass --resume to continue it, or choose another --out")
    if resume and not last.exists():
        fail(f"--resume: no checkpoint {last} to resume from")
    resumed_cfg: RetrainConfig | None = None
    resumed_arch: Arch | None = None
    if resume:
        try:
            resumed_cfg, resumed_arch, _ = read_checkpoint(last)
        except (FileNotFoundError, ValueError) as e:
            fail(str(e))
    candidate = _arch(arch, preset, resumed_arch)
    cfg, section = _config(config, resumed_cfg, epochs, task)
    if resumed_cfg is not None:  # a config file given with --resume keeps the run's modules
        cfg = _with_modules(cfg, resumed_cfg.model)
    elif preset is not None:  # hyctas-s/m/l train the official modules, -lite the light ones
        from hyctas_core.presets import preset_model

        cfg = _with_modules(cfg, preset_model(preset))
    spec = resolve_spec(section, workers, use_gpu, batch_size=cfg.batch_size)
    if device != "cpu":
        import torch

        if not torch.cuda.is_available():
            fail(f"device {device!r} requested but CUDA is not available here")
    train_tf = SegTransform(crop_size=cfg.crop_size, scale_range=cfg.scale_range, base_size=cfg.base_size)
    panoptic = cfg.task == "panoptic"
    train_set = _dataset(data, "train", train_tf, cfg.seed, panoptic)
    val_tf = SegTransform(crop_size=None, train=False, base_size=cfg.base_size)
    val_set = _dataset(data, "val", val_tf, cfg.seed, panoptic)
    if cfg.model.num_classes != train_set.num_classes:
        fail(f"model.num_classes is {cfg.model.num_classes}; Cityscapes has {train_set.num_classes} train classes")
    try:
        trainer = Retrainer(cfg, candidate, train_set, val_set, out, device=device)
        if resume:
            trainer.resume()
    except ValueError as e:  # ArchError included
        fail(str(e).splitlines()[0])
    if trainer.finished:
        typer.echo(f"the run in {out} already finished ({trainer.step} steps); nothing to do")
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    (out / "arch.json").write_text(json.dumps(trainer.arch.to_official()) + "\n")
    columns = [
        TextColumn("epoch {task.fields[epoch]}/" + str(cfg.epochs)),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("loss {task.fields[loss]:.3f}  {task.fields[rate]:.1f} img/s  mIoU {task.fields[miou]}"),
        TimeRemainingColumn(),
    ]
    start_miou = "-" if trainer.last_miou is None else f"{100 * trainer.last_miou:.2f}"
    with cli_progress(*columns, transient=False) as bar:
        bar_task = bar.add_task(
            "retrain",
            total=trainer.total_steps,
            completed=trainer.step,
            epoch=min(trainer.epoch + 1, cfg.epochs),
            loss=0.0,
            rate=0.0,
            miou=start_miou,
        )
        if spec.workers > 1:
            job = {"config": cfg.to_dict(), "data_dir": str(data.resolve()), "arch": trainer.arch.to_official()}

            names = [f.name for f in dataclasses.fields(RetrainProgress)]

            def show(p: dict[str, Any]) -> None:
                bar.update(bar_task, completed=p["step"], **_bar_fields(RetrainProgress(**{k: p[k] for k in names})))

            summary = run_parallel("retrain", job, out, spec=spec, on_progress=show)
            typer.echo(json.dumps(summary))
            return
        try:
            summary = trainer.fit(progress=lambda p: bar.update(bar_task, completed=p.step, **_bar_fields(p)))
        except KeyboardInterrupt:
            bar.stop()
            typer.echo(f"interrupted at step {trainer.step}; continue from the last checkpoint with --resume", err=True)
            raise typer.Exit(130) from None
    typer.echo(json.dumps(summary))
