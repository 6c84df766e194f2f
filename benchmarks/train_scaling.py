"""Data-parallel scaling of supernet training on Ray Train: samples per second for 1, 2, ... workers.

Renders a synthetic dataset (Cityscapes layout), then trains the same supernet config with the
same global batch on N Ray Train workers for each N of ``--workers`` (``services.worker.data_parallel``,
the path the service and ``hyctas train-supernet --workers N`` take). The rate of a run is the
engine's own ``images_per_s`` (its training loop, after Ray and the workers have started: data
loading, the steps and the one epoch-end checkpoint), measured the same way for the plain
in-process loop.

Each CPU worker gets ``--threads-per-worker`` torch threads (1 by default: one core each, so that
N workers use N cores); ``--use-gpu`` gives each worker one GPU instead (NCCL). The JSON on stdout:

- ``samples_per_s``: ``{"1": ..., "2": ...}``, keyed by worker count;
- ``efficiency``: ``samples_per_s[N] / (N * samples_per_s[1])`` for each N;
- ``in_process_samples_per_s``: the plain single-process loop (no Ray), for reference;
- the settings and the machine.

Run by hand:

    python benchmarks/train_scaling.py                    # 1 and 2 CPU workers
    python benchmarks/train_scaling.py --use-gpu --workers 1,2,4
    python benchmarks/train_scaling.py --quick            # seconds; a smoke run, not a measurement
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import apply_quick, machine  # noqa: E402

from hyctas_core.config import ModelConfig  # noqa: E402
from hyctas_core.data.synth import generate  # noqa: E402
from hyctas_core.train import SupernetTrainConfig  # noqa: E402

QUICK = {"size": "64x128", "images": 8, "batch": 4, "steps": 3, "base_channels": 4, "layers": 4}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--size", default="128x256", help="crop HxW (the images are rendered at this size)")
    parser.add_argument("--images", type=int, default=192, help="training images (192: one epoch of 24 steps)")
    parser.add_argument("--batch", type=int, default=8, help="global batch (split over the workers)")
    parser.add_argument("--steps", type=int, default=24, help="timed steps per run")
    parser.add_argument("--base-channels", type=int, default=12)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--threads-per-worker", type=int, default=1)
    parser.add_argument("--use-gpu", action="store_true", help="one GPU per worker")
    parser.add_argument(
        "--no-sync-bn", dest="sync_bn", action="store_false", help="each worker normalises over its own slice"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="toy sizes: a smoke run, not a measurement")
    args = parser.parse_args(argv)
    apply_quick(parser, args, QUICK)
    try:
        args.worker_counts = sorted({int(w) for w in args.workers.split(",") if w})
    except ValueError:
        parser.error(f"--workers must be comma-separated integers, got {args.workers!r}")
    if not args.worker_counts or args.worker_counts[0] < 1:
        parser.error("--workers needs counts >= 1")
    bad = [n for n in args.worker_counts if args.batch % n]
    if bad:
        parser.error(f"--batch {args.batch} does not split evenly over {bad} workers")
    return args


def _config(args: argparse.Namespace, size: tuple[int, int]) -> SupernetTrainConfig:
    steps_per_epoch = args.images // args.batch
    return SupernetTrainConfig(
        model=ModelConfig(base_channels=args.base_channels, num_layers=args.layers),
        epochs=-(-args.steps // steps_per_epoch),
        steps_per_epoch=steps_per_epoch,
        batch_size=args.batch,
        crop_size=size,
        scale_range=(1.0, 1.0),
        checkpoint_every=10**9,
        log_every=10**9,
        seed=args.seed,
    )


def steps_per_epoch(cfg: SupernetTrainConfig) -> int:
    assert cfg.steps_per_epoch is not None
    return cfg.steps_per_epoch


def in_process_rate(cfg: SupernetTrainConfig, data: Path, run_dir: Path, threads: int, steps: int) -> float:
    """images/s of the plain loop in this process (one rank, ``threads`` torch threads), measured
    as the Ray Train runs are (the engine's summary)."""
    from services.worker.data_parallel import build_trainer

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        trainer = build_trainer("supernet", {"config": cfg.to_dict(), "data_dir": str(data)}, run_dir, "cpu")
        return float(trainer.fit(max_steps=steps)["images_per_s"])
    finally:
        torch.set_num_threads(before)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from services.worker.data_parallel import ParallelSpec, fit_data_parallel
    from services.worker.ray_init import init_ray

    args = parse_args(argv)
    h, w = (int(v) for v in args.size.lower().split("x"))
    work = Path(tempfile.mkdtemp(prefix="train_scaling-"))
    data = work / "data"
    t0 = time.perf_counter()
    generate(data, train=args.images, val=1, size=(h, w), seed=args.seed, write_color=False)
    render_s = time.perf_counter() - t0
    cfg = _config(args, (h, w))
    rates: dict[str, float] = {}
    wall: dict[str, float] = {}
    cpus = max(args.worker_counts) * args.threads_per_worker
    init_ray(None, num_cpus=max(cpus, os.cpu_count() or 1))
    for n in args.worker_counts:
        spec = ParallelSpec(
            workers=n,
            use_gpu=args.use_gpu,
            resources_per_worker={"CPU": float(args.threads_per_worker), **({"GPU": 1.0} if args.use_gpu else {})},
            threads_per_worker=args.threads_per_worker,
            max_failures=0,
            sync_batchnorm=args.sync_bn,
        )
        t0 = time.perf_counter()
        job = {"config": cfg.to_dict(), "data_dir": str(data)}
        summary = fit_data_parallel("supernet", job, work / f"run-{n}", spec, storage_path=work / "ray_train")
        wall[str(n)] = round(time.perf_counter() - t0, 1)
        rates[str(n)] = round(float(summary["images_per_s"]), 3)
    base = rates[str(args.worker_counts[0])] / args.worker_counts[0]
    efficiency = {k: round(v / (int(k) * base), 3) for k, v in rates.items()}
    in_process = None
    if not args.use_gpu:
        steps = cfg.epochs * steps_per_epoch(cfg)
        in_process = round(in_process_rate(cfg, data, work / "in-process", args.threads_per_worker, steps), 3)
    return {
        "benchmark": "train_scaling",
        "samples_per_s": rates,
        "efficiency": efficiency,
        "in_process_samples_per_s": in_process,
        "run_wall_s": wall,
        "settings": {
            **{k: v for k, v in vars(args).items() if k != "worker_counts"},
            "steps_timed": cfg.epochs * steps_per_epoch(cfg),
        },
        "timings_s": {"render": round(render_s, 1)},
        "machine": machine(),
    }


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
