"""The end-to-end demo on one machine: the whole method, small, in minutes on a laptop CPU.

1. synthesise a street-scene dataset (Cityscapes layout);
2. train a small weight-sharing supernet;
3. build the latency lookup table for this machine;
4. NSGA-II search (mIoU vs predicted latency) stored in SQLite, with the Pareto plot;
5. verify the front: retrain a few front points briefly and report the supernet's rank
   fidelity (Kendall tau of supernet mIoU against retrained mIoU);
6. retrain the front's knee point from scratch and, as a control, a random architecture of
   similar latency with the same budget;
7. evaluate them (mIoU, measured latency, FPS) and segment a validation image (overlay PNG).

Every stage uses the same library calls as the CLI commands. The sizes below are chosen to
finish in about 10 minutes on 2 CPU cores; ``DemoConfig`` scales everything.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from hyctas_core.config import ModelConfig

if TYPE_CHECKING:
    from hyctas_core.latency import LookupTableLatency
    from hyctas_core.search_space import Arch

__all__ = ["DemoConfig", "run_demo"]

MARKER = "demo.json"


@dataclass(frozen=True)
class DemoConfig:
    seed: int = 0
    image_size: tuple[int, int] = (128, 256)
    train_images: int = 160
    val_images: int = 32
    model: ModelConfig = field(default_factory=lambda: ModelConfig(base_channels=8, num_layers=10, num_classes=19))
    supernet_epochs: int = 30
    supernet_lr: float = 0.05  # higher than the paper's 0.02: a few hundred steps, not a few hundred epochs
    batch_size: int = 8
    pop_size: int = 20
    generations: int = 8
    calib_images: int = 16
    search_val_images: int = 32
    verify_k: int = 3  # front points retrained to measure the supernet's fidelity (0: skip the stage)
    verify_epochs: int = 6
    retrain_epochs: int = 20
    retrain_lr: float = 0.05
    latency_seconds: float = 1.0


class _Step:
    """Prints numbered stage headers with timings."""

    def __init__(self, say: Callable[[str], None], total: int) -> None:
        self.say, self.n, self.total, self.t = say, 0, total, time.perf_counter()
        self.start = self.t

    def __call__(self, title: str) -> None:
        self.n += 1
        self.t = time.perf_counter()
        self.say(f"\n[bold cyan][{self.n}/{self.total}] {title}[/]")

    def done(self, text: str) -> None:
        self.say(f"    {text}  [dim]({time.perf_counter() - self.t:.0f} s)[/]")


def run_demo(
    out: Path, cfg: DemoConfig | None = None, *, overwrite: bool = False, device: str = "cpu"
) -> dict[str, Any]:
    """Run every stage into ``out``; returns the summary (also written to ``out/demo.json``).

    Raises:
        FileExistsError: ``out`` exists and is not empty (and not a previous demo with ``overwrite``).
    """
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from hyctas_cli.utils import cli_console, cli_progress
    from hyctas_core.data.cityscapes import CityscapesDataset
    from hyctas_core.data.synth import generate
    from hyctas_core.data.transforms import SegTransform
    from hyctas_core.evaluate import EvaluatorSpec, LocalEvaluator, evaluate_miou
    from hyctas_core.latency import build_table
    from hyctas_core.plots import plot_pareto
    from hyctas_core.profile import count_macs, count_params, count_training_head_params, measure_latency
    from hyctas_core.retrain import RetrainConfig, Retrainer
    from hyctas_core.search import SearchConfig, knee_index
    from hyctas_core.search_runner import create_search, run_search
    from hyctas_core.segment import class_stats, overlay, predict_labels
    from hyctas_core.train import SupernetTrainConfig, SupernetTrainer
    from services.storage.sql import SQLStorage

    cfg = cfg or DemoConfig()
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not (overwrite and (out / MARKER).exists()):
            raise FileExistsError(
                f"{out} exists and is not empty"
                + ("" if overwrite else "; pass --overwrite to replace a previous demo")
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(json.dumps({"status": "running", "config": _jsonable(asdict(cfg))}))
    console = cli_console()
    step = _Step(console.print, 7 if cfg.verify_k else 6)
    torch.manual_seed(cfg.seed)

    def bar(*extra: Any) -> Any:
        return cli_progress(
            TextColumn("    "),
            BarColumn(),
            MofNCompleteColumn(),
            *extra,
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )

    # 1. data --------------------------------------------------------------------------------
    data = out / "data"
    step(f"synthesising {cfg.train_images} + {cfg.val_images} street scenes at {cfg.image_size[0]}x{cfg.image_size[1]}")
    with bar() as p:
        task = p.add_task("data", total=cfg.train_images + cfg.val_images)
        generate(
            data,
            train=cfg.train_images,
            val=cfg.val_images,
            size=cfg.image_size,
            seed=cfg.seed,
            progress=lambda done, total: p.update(task, completed=done, total=total),
        )
    step.done(f"dataset in Cityscapes layout: {data}")

    # 2. supernet ------------------------------------------------------------------------------
    step(
        f"training the supernet (F={cfg.model.base_channels}, {cfg.model.num_layers} layers) "
        f"for {cfg.supernet_epochs} epochs"
    )
    train_cfg = SupernetTrainConfig(
        model=cfg.model,
        epochs=cfg.supernet_epochs,
        batch_size=cfg.batch_size,
        lr=cfg.supernet_lr,
        crop_size=cfg.image_size,
        seed=cfg.seed,
        checkpoint_every=1000,
    )
    train_set = CityscapesDataset(data, "train", transform=SegTransform(crop_size=cfg.image_size), seed=cfg.seed)
    supernet_dir = out / "supernet"
    trainer = SupernetTrainer(train_cfg, train_set, supernet_dir, device=device)
    with bar(TextColumn("loss {task.fields[loss]:.3f}")) as p:
        task = p.add_task("supernet", total=trainer.total_steps, loss=0.0)
        trainer.fit(progress=lambda s: p.update(task, completed=s.step, loss=s.loss))
    step.done(f"checkpoint: {supernet_dir / 'supernet.pt'}")

    # 3. latency table ---------------------------------------------------------------------------
    step(f"timing every op of the space on this machine at {cfg.image_size[0]}x{cfg.image_size[1]}")
    with bar() as p:
        task = p.add_task("ops", total=None)
        table = build_table(
            cfg.model,
            cfg.image_size,
            device=device,
            duration_s=0.02,
            progress=lambda d, t, k: p.update(task, completed=d, total=t),
        )
    table_path = out / "latency_table.json"
    table.save(table_path)
    step.done(f"{len(table.entries)} entries: {table_path}")

    # 4. search --------------------------------------------------------------------------------
    step(f"NSGA-II: population {cfg.pop_size}, {cfg.generations} generations, mIoU vs latency")
    db_url = f"sqlite:///{(out / 'hyctas.db').resolve()}"
    storage = SQLStorage(db_url, create=True)
    spec = EvaluatorSpec(
        supernet=str((supernet_dir / "supernet.pt").resolve()),
        data=str(data.resolve()),
        calib_images=cfg.calib_images,
        val_images=cfg.search_val_images,
        latency_table=str(table_path.resolve()),
        seed=cfg.seed,
        device=device,
    )
    search_cfg = SearchConfig(
        objective="latency",
        pop_size=cfg.pop_size,
        generations=cfg.generations,
        seed=cfg.seed,
        num_layers=cfg.model.num_layers,
    )
    search_id = create_search(storage, "demo", search_cfg, spec.to_dict())
    evaluator = LocalEvaluator(spec)
    with bar(TextColumn("HV {task.fields[hv]:.4f}  front {task.fields[front]}  evaluated {task.fields[n]}")) as p:
        task = p.add_task("search", total=search_cfg.total_generations, hv=0.0, front=0, n=0)
        record = run_search(
            storage,
            search_id,
            evaluator,
            progress=lambda g: p.update(
                task, completed=g.generation + 1, hv=g.hypervolume, front=g.front_size, n=g.n_evaluated
            ),
        )
    front = storage.pareto_front(search_id)
    individuals = [
        {"arch_hash": i.arch_hash, "num_branches": i.num_branches, "objectives": i.objectives}
        for i in storage.list_individuals(search_id)
    ]
    latest = storage.latest_generation(search_id)
    assert latest is not None
    plot = plot_pareto(individuals, latest.front, "latency_ms", out / "pareto.png", title="demo search")
    for i, ind in enumerate(front):
        console.print(
            f"    front {i}: {ind.arch_hash}  {ind.num_branches} branch(es)  mIoU {100 * ind.objectives['miou']:5.2f}  "
            f"latency {ind.objectives['latency_ms']:6.2f} ms (LUT)  {ind.objectives['gmacs']:.3f} GMACs"
        )
    knee = front[knee_index([(i.objectives["miou"], i.objectives["latency_ms"]) for i in front])]
    (out / "knee_arch.json").write_text(json.dumps(knee.arch))
    step.done(
        f"{latest.n_evaluated} sub-networks evaluated, front of {len(front)}, hypervolume {latest.hypervolume:.4f}; "
        f"plot: {plot}; knee: {knee.arch_hash}"
    )

    # 5. verify the front -------------------------------------------------------------------------
    verification = None
    if cfg.verify_k:
        verification = _verify(step, bar, storage, search_id, cfg, spec, out, device)

    # 6. retrain -------------------------------------------------------------------------------
    from hyctas_core.latency import LookupTableLatency
    from hyctas_core.search_space import Arch

    arch = Arch.from_official(knee.arch)
    # The control: a random valid architecture of similar predicted latency, same budget.
    lut = LookupTableLatency(table)
    control = _similar_latency_arch(lut, arch, cfg.model.num_layers, np.random.default_rng([cfg.seed, 9]))
    step(
        f"retraining the knee point {knee.arch_hash} and, as a control, a random architecture "
        f"{control.hash} of similar latency from scratch for {cfg.retrain_epochs} epochs each"
    )
    retrain_cfg = RetrainConfig(
        model=cfg.model,
        epochs=cfg.retrain_epochs,
        batch_size=cfg.batch_size,
        lr=cfg.retrain_lr,
        crop_size=cfg.image_size,
        eval_every=max(1, cfg.retrain_epochs // 3),
        seed=cfg.seed,
        checkpoint_every=1000,
    )
    val_set = CityscapesDataset(data, "val", transform=SegTransform(crop_size=None, train=False), seed=cfg.seed)
    retrained: dict[str, Retrainer] = {}
    for role, which in (("knee", arch), ("random", control)):
        retrainer = Retrainer(retrain_cfg, which, train_set, val_set, out / f"retrain_{role}", device=device)
        with bar(TextColumn(f"{role:6s} loss {{task.fields[loss]:.3f}}  drop path {{task.fields[dp]:.2f}}")) as p:
            task = p.add_task("retrain", total=retrainer.total_steps, loss=0.0, dp=0.0)
            retrainer.fit(progress=functools.partial(_show_retrain, p, task))
        retrained[role] = retrainer
    step.done(f"checkpoints: {out / 'retrain_knee' / 'best.pt'}, {out / 'retrain_random' / 'best.pt'}")

    # 7. evaluate + segment --------------------------------------------------------------------
    step("evaluating the retrained network and segmenting a validation image")
    scores: dict[str, dict[str, Any]] = {}
    for role, r in retrained.items():
        net = r.model.eval()
        role_cm = evaluate_miou(net, val_set, list(range(len(val_set))), cfg.model.num_classes, device=device)
        role_latency = measure_latency(net, cfg.image_size, duration_s=cfg.latency_seconds)
        if role == "knee":  # the network the rest of the demo reports and segments with
            model, cm, latency = net, role_cm, role_latency
        scores[role] = {
            "arch_hash": r.arch.hash,
            "miou": float(role_cm.miou),
            "latency_ms": role_latency.median_ms,
            "predicted_latency_ms": lut.predict(r.arch),
            "branches": r.arch.num_branches,
        }
    name = val_set.names[0]
    image = np.asarray(
        Image.open(next((data / "leftImg8bit" / "val").glob(f"*/{name}_leftImg8bit.png"))).convert("RGB")
    )
    (labels,) = predict_labels(model, [image], device=device)
    overlay_path = out / f"{name}_overlay.png"
    Image.fromarray(overlay(image, labels)).save(overlay_path)
    summary = {
        "status": "succeeded",
        "seconds": round(time.perf_counter() - step.start, 1),
        "outputs": {
            "dataset": str(data),
            "supernet": str(supernet_dir / "supernet.pt"),
            "latency_table": str(table_path),
            "database": db_url,
            "search": record.name,
            "pareto_plot": str(plot),
            "knee_arch": str(out / "knee_arch.json"),
            "retrained": str(out / "retrain_knee" / "best.pt"),
            "retrained_random": str(out / "retrain_random" / "best.pt"),
            "overlay": str(overlay_path),
        },
        "search": {
            "evaluated": latest.n_evaluated,
            "front_size": len(front),
            "hypervolume": latest.hypervolume,
            "knee": {"arch_hash": knee.arch_hash, **knee.objectives},
        },
        "retrained": {
            "val_miou": float(cm.miou),
            "supernet_miou": float(knee.objectives["miou"]),
            "latency_ms": latency.median_ms,
            "fps": latency.fps,
            "gmacs": count_macs(model, cfg.image_size) / 1e9,
            "params_m": count_params(model) / 1e6,  # the network inference runs, as the search counts it
            "training_head_params_m": count_training_head_params(model) / 1e6,  # auxiliary head, training only
            "input_size": list(cfg.image_size),
            "knee": scores["knee"],
            "random": scores["random"],
            "knee_wins": scores["knee"]["miou"] > scores["random"]["miou"],
        },
        "verification": verification,
        "segmented": {"image": name, "classes": class_stats(labels)[:5]},
        "config": _jsonable(asdict(cfg)),
    }
    (out / MARKER).write_text(json.dumps(summary, indent=1))
    r = summary["retrained"]
    k, c = scores["knee"], scores["random"]
    verdict = "the knee wins" if r["knee_wins"] else "the knee does NOT beat the random control"
    console.print(
        f"    knee   {k['arch_hash']}  {k['branches']} branch(es)  mIoU {100 * k['miou']:5.2f}  "
        f"{k['latency_ms']:6.2f} ms measured\n"
        f"    random {c['arch_hash']}  {c['branches']} branch(es)  mIoU {100 * c['miou']:5.2f}  "
        f"{c['latency_ms']:6.2f} ms measured   ({verdict})"
    )
    step.done(
        f"val mIoU {100 * cm.miou:.2f}, {latency.median_ms:.1f} ms ({latency.fps:.1f} FPS) at batch 1, "
        f"{r['params_m']:.3f} M params, {r['gmacs']:.3f} GMACs (the search: {knee.objectives['params_m']:.3f} M, "
        f"{knee.objectives['gmacs']:.3f} GMACs; training-only auxiliary head: {r['training_head_params_m']:.3f} M); "
        f"overlay: {overlay_path}"
    )
    return summary


def _verify(
    step: _Step,
    bar: Callable[..., Any],
    storage: Any,
    search_id: int,
    cfg: DemoConfig,
    spec: Any,
    out: Path,
    device: str,
) -> dict[str, Any] | None:
    """Stage 5: retrain ``cfg.verify_k`` front points briefly; the stored verification record."""
    from rich.progress import TextColumn

    from hyctas_cli.verify import verify_search
    from hyctas_core.verify import NothingToVerify, VerifyConfig, verification_summary

    vcfg = VerifyConfig(
        k=cfg.verify_k, epochs=cfg.verify_epochs, lr=cfg.retrain_lr, batch_size=cfg.batch_size, seed=cfg.seed
    )
    step(f"verifying the front: retraining {vcfg.k} front points (spread over latency) for {vcfg.epochs} epochs each")
    with bar(TextColumn("{task.fields[arch]}  loss {task.fields[loss]:.3f}")) as p:
        task = p.add_task("verify", total=None, arch="", loss=0.0)

        try:
            verify_search(
                storage, search_id, vcfg, spec, out / "verify", bar=p, task=task, val_images=None, device=device
            )
        except NothingToVerify:
            pass  # the record says why
    record: dict[str, Any] | None = storage.get_search(search_id).verification
    for row in (record or {}).get("rows", []):
        step.say(
            f"    {row['arch_hash']}  {row['num_branches']} branch(es)  "
            f"supernet mIoU {100 * row['supernet_miou']:5.2f}  retrained mIoU {100 * row['retrained_miou']:5.2f}"
        )
    step.done(verification_summary(record))
    return record


def _show_retrain(bar: Any, task: Any, s: Any) -> None:
    bar.update(task, completed=s.step, loss=s.loss, dp=s.drop_path)


def _similar_latency_arch(
    lut: LookupTableLatency, target: Arch, num_layers: int, rng: np.random.Generator, tries: int = 400
) -> Arch:
    """A random valid architecture whose predicted latency is closest to ``target``'s (not ``target``)."""
    from hyctas_core.search_space import sample_arch

    goal = lut.predict(target)
    best: Arch | None = None
    gap = math.inf
    for _ in range(tries):
        cand = sample_arch(rng, num_layers)
        if cand.hash == target.hash:
            continue
        d = abs(lut.predict(cand) - goal) / goal
        if d < gap:
            best, gap = cand, d
        if gap < 0.05:
            break
    assert best is not None
    return best


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
