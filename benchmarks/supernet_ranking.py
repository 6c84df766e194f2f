"""Does the trained supernet rank sub-networks as training each one on its own would?

Trains a supernet on the built-in synthetic street scenes, picks ``--archs`` valid
architectures spread over 1 / 2 / 3 branches and over cost (per branch count, evenly spaced in
GMACs from the cheapest to the most expensive of ``--candidates`` sampled ones, each with one
width level so that they span slim to full width; seeded by ``--seed``), scores each through
the supernet (BN statistics recalibrated on training images, mIoU on the validation split)
and trains each from scratch with one fixed budget (``hyctas retrain``'s trainer; plain
cross-entropy by default: at the default size the top-k loss left every network at 7-12 %
mIoU and the standalone ceiling at tau 0.09), with ``--standalone-seeds`` seeds (8 by
default). Reports the rank agreement of the two scores:

- ``kendall_tau`` / ``spearman``: supernet mIoU against standalone mIoU (the mean of the
  standalone seeds), ``top3_overlap``: shared members of the two top-3 sets / 3,
  ``kendall_tau_per_seed``: the supernet against each standalone seed alone,
  ``kendall_tau_within_branches``: the mean tau inside each branch count's group (networks of
  similar cost, the pairs a search front has to order);
- ``standalone_tau``: Kendall tau between two standalone trainings with different seeds, the
  ceiling: a supernet cannot rank better than training itself repeats
  (``standalone_tau_pairs_mean``: the mean over every pair of seeds);
- ``reference_tau``: the mean of one half of the seeds against the mean of the other half, the
  ceiling for a reference averaged over seeds;
- ``proxy_tau``: the floor: GMACs, parameters and measured latency, each taken as the score
  (bigger is better), against the standalone mean. Ranking by cost needs no training at all,
  and at this size it is nearly as good as the supernet (README);
- ``cost_matched``: over the pairs of networks within 1.5x of each other's GMACs, the share
  the supernet orders as the standalone mean does, next to the share GMACs orders so.

One standalone training is noisy at this size. Two seeds of one network differ by up to 6 mIoU
points, also on 256 val images (a larger val split does not help): whole classes (sky, trucks)
are learnt by one seed and not by another. Training longer makes it worse: at 24 epochs every
network ends at 17-25 % mIoU and ``standalone_tau`` fell to 0.48 / 0.64 (seeds 0 / 2). The mean
pairwise standalone tau is 0.43-0.55 on seeds 0-2, so the reference averages 8 seeds: its
``reference_tau`` (4 seeds against the other 4) is 0.73 / 0.70 / 0.76 (with the earlier,
narrower picks: 0.61 / 0.85 / 0.73, against 0.52-0.58 for 4 seeds, 2 against 2).

Prints one JSON object (settings, timings, a row per architecture). The standalone trainings
run ``--jobs`` at a time (one per core by default), each in its own process with one torch
thread: at these sizes that nearly doubles the throughput of 2 cores over one process with two
threads. The default size runs on 2 CPU cores in under an hour; ``--quick`` is a seconds-long
smoke run for the test suite.

``--supernet-class-weighting log`` / ``--standalone-class-weighting log`` train with ENet's
class weights (``class_weighting`` of the training configs); measured and not the default: the
weighted supernet ranked worse on three seeds (README).

``--supernet-seed`` trains another supernet on the same picks (its run-to-run spread) and
``--branch-prior A,B,C`` changes its sub-network draws. ``benchmarks/results/
supernet_ranking_widthlevels.cache.json`` holds the committed 8-seed standalone runs of seeds
0-2 (the rows of ``supernet_ranking_seed*_8seeds_widthlevels.json``, at their 4 decimals): with
``--standalone-cache`` on it, one supernet option costs about 5 minutes per seed.

    python benchmarks/supernet_ranking.py --seed 0
    python benchmarks/supernet_ranking.py --sampling sandwich --distill --warmup-steps 60
    python benchmarks/supernet_ranking.py --seed 1 --supernet-seed 101 --branch-prior 0.1,0.2,0.7 \
        --standalone-cache benchmarks/results/supernet_ranking_widthlevels.cache.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

sys.path.insert(0, str(Path(__file__).parent))
from _common import ResultCache, apply_quick, machine  # noqa: E402

from hyctas_core.config import ModelConfig
from hyctas_core.data.cityscapes import CityscapesDataset
from hyctas_core.data.synth import generate
from hyctas_core.data.transforms import SegTransform
from hyctas_core.evaluate import EvaluatorSpec, LocalEvaluator
from hyctas_core.losses import CLASS_WEIGHTINGS
from hyctas_core.network import HyCTASNet
from hyctas_core.profile import count_macs
from hyctas_core.retrain import RetrainConfig, Retrainer
from hyctas_core.search_space import FULL_WIDTH, WIDTHS, Arch, Branch, sample_arch
from hyctas_core.train import SAMPLINGS, SupernetTrainConfig, SupernetTrainer

QUICK = {
    "size": "64x128",
    "train_images": 8,
    "val_images": 4,
    "base_channels": 4,
    "layers": 4,
    "supernet_epochs": 1,
    "standalone_epochs": 1,
    "batch_size": 4,
    "archs": 12,
    "calib_images": 4,
    "latency_seconds": 0.02,
    "candidates": 6,
    "standalone_seeds": 2,
}


def _prior(text: str) -> tuple[float, float, float]:
    try:
        a, b, c = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three numbers A,B,C, got {text!r}") from None
    if min(a, b, c) < 0 or a + b + c <= 0:
        raise argparse.ArgumentTypeError(f"expected non-negative numbers with a positive sum, got {text!r}")
    return a, b, c


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0, help="arch choice, supernet and standalone seeds")
    p.add_argument(
        "--supernet-seed",
        type=int,
        default=None,
        help="train the supernet with this seed instead (weights, sub-network draws, data order); "
        "the picks and the standalone runs stay those of --seed",
    )
    p.add_argument("--data-seed", type=int, default=0, help="the synthetic dataset's seed")
    p.add_argument("--quick", action="store_true", help="toy sizes: a smoke run, not a measurement")
    p.add_argument("--size", default="64x128", help="HxW of the synthetic images")
    p.add_argument("--train-images", type=int, default=160)
    p.add_argument("--val-images", type=int, default=32)
    p.add_argument("--base-channels", type=int, default=8)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--supernet-epochs", type=int, default=60)
    p.add_argument("--supernet-lr", type=float, default=0.05)
    p.add_argument(
        "--supernet-lr-decay",
        type=float,
        default=SupernetTrainConfig.lr_decay,
        help="the supernet's ExponentialLR gamma per epoch",
    )
    p.add_argument(
        "--supernet-lr-final",
        type=float,
        default=SupernetTrainConfig.lr_final,
        help="the supernet's last-epoch LR as a fraction of --supernet-lr (overrides --supernet-lr-decay)",
    )
    p.add_argument("--supernet-loss", choices=("topk", "ce", "ohem"), default=SupernetTrainConfig.loss)
    p.add_argument("--supernet-class-weighting", choices=CLASS_WEIGHTINGS, default=SupernetTrainConfig.class_weighting)
    p.add_argument("--sampling", choices=SAMPLINGS, default=SupernetTrainConfig.sampling)
    p.add_argument(
        "--branch-prior",
        type=_prior,
        default=SupernetTrainConfig.branch_prior,
        help="P(1, 2, 3 branches) of the supernet's sub-network draws, as A,B,C (the paper: 0.2,0.3,0.5)",
    )
    p.add_argument("--sandwich-random", type=int, default=SupernetTrainConfig.sandwich_random)
    p.add_argument("--distill", action=argparse.BooleanOptionalAction, default=SupernetTrainConfig.distill)
    p.add_argument("--warmup-steps", type=int, default=SupernetTrainConfig.warmup_steps)
    p.add_argument("--archs", type=int, default=12, help="architectures to rank (a multiple of 3)")
    p.add_argument("--candidates", type=int, default=60, help="sampled per branch count, to spread over cost")
    p.add_argument("--standalone-epochs", type=int, default=12)
    p.add_argument("--standalone-lr", type=float, default=0.05)
    p.add_argument("--standalone-loss", choices=("topk", "ce", "ohem"), default="ce")
    p.add_argument("--standalone-class-weighting", choices=CLASS_WEIGHTINGS, default=RetrainConfig.class_weighting)
    p.add_argument("--calib-images", type=int, default=32)
    p.add_argument("--latency-seconds", type=float, default=0.3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument(
        "--standalone-seeds",
        type=int,
        default=8,
        help="standalone trainings per architecture, the reference is their mean (an even number >= 2)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=0,
        help="standalone trainings at once, one process and one torch thread each (0: one per CPU core)",
    )
    p.add_argument("--no-ceiling", action="store_true", help="one standalone seed only (no ceiling)")
    p.add_argument(
        "--standalone-cache",
        type=Path,
        default=None,
        help="JSON file of standalone results to reuse across runs (they do not depend on the supernet)",
    )
    p.add_argument("--workdir", type=Path, default=None, help="keep data and checkpoints here (default: a temp dir)")
    args = p.parse_args(argv)
    apply_quick(p, args, QUICK)
    if args.supernet_seed is None:
        args.supernet_seed = args.seed
    if args.archs < 3 or args.archs % 3:
        p.error(f"--archs must be a positive multiple of 3, got {args.archs}")
    if args.standalone_seeds < 2 or args.standalone_seeds % 2:
        p.error(f"--standalone-seeds must be an even number >= 2, got {args.standalone_seeds}")
    return args


# What a standalone result depends on (its cache key, with the arch and the seed).
STANDALONE_KEYS = (
    "size",
    "train_images",
    "val_images",
    "data_seed",
    "base_channels",
    "layers",
    "batch_size",
    "standalone_epochs",
    "standalone_lr",
    "standalone_loss",
    "standalone_class_weighting",
)


def parse_size(text: str) -> tuple[int, int]:
    h, w = (int(v) for v in text.lower().split("x"))
    return h, w


def _with_width_level(arch: Arch, rng: np.random.Generator) -> Arch:
    """``arch`` with one width level for all its cells (each cell one step off it at random).

    :func:`sample_arch` draws every cell's width on its own, so the mean width of 8-24 cells
    is nearly the same for every draw and the sampled networks span a narrow band of cost
    (1-branch ones 5.0-5.8 ms here). A level per network spreads them from slim to full
    width, the range a search front covers. The last cell keeps full width (a rule).
    """
    level = int(rng.integers(len(WIDTHS)))
    last = arch.num_layers - 1

    def width(i: int) -> int:
        return FULL_WIDTH if i == last else int(np.clip(level + rng.integers(-1, 2), 0, FULL_WIDTH))

    return Arch(tuple(Branch(tuple(replace(c, width=width(i)) for i, c in enumerate(b.cells))) for b in arch.branches))


def pick_archs(args: argparse.Namespace, model: ModelConfig, size: tuple[int, int]) -> list[Arch]:
    """``args.archs / 3`` per branch count, spread evenly over the GMACs of sampled candidates.

    Candidates get one width level each (:func:`_with_width_level`); the picks are the
    candidates nearest to evenly spaced GMACs from the cheapest to the most expensive.
    """
    rng = np.random.default_rng([args.seed, 71])
    per = args.archs // 3
    chosen: list[Arch] = []
    for branches in (1, 2, 3):
        pool: dict[str, tuple[float, Arch]] = {}
        for _ in range(args.candidates * 4):
            arch = _with_width_level(sample_arch(rng, model.num_layers, num_branches=branches), rng)
            if arch.hash not in pool:
                net = HyCTASNet(arch, model).eval()
                pool[arch.hash] = (count_macs(net, size) / 1e9, arch)
            if len(pool) >= args.candidates:
                break
        ranked = sorted(pool.values(), key=lambda t: t[0])
        left = list(range(len(ranked)))
        for target in np.linspace(ranked[0][0], ranked[-1][0], min(per, len(ranked))):
            best = min(left, key=lambda i: abs(ranked[i][0] - target))
            left.remove(best)
            chosen.append(ranked[best][1])
    return chosen


def _finite(value: float) -> float | None:
    """None where a rank correlation is undefined (constant input), so the output stays valid JSON."""
    return None if np.isnan(value) else round(float(value), 4)


def kendall(a: list[float], b: list[float]) -> float:
    return float(stats.kendalltau(a, b).statistic)


def _within_branches(archs: list[Arch], a: list[float], b: list[float]) -> float | None:
    """Mean Kendall tau of ``a`` against ``b`` inside each branch count's group."""
    taus = []
    for k in (1, 2, 3):
        idx = [i for i, arch in enumerate(archs) if arch.num_branches == k]
        if len(idx) >= 2:
            tau = kendall([a[i] for i in idx], [b[i] for i in idx])
            if not np.isnan(tau):
                taus.append(tau)
    return _finite(float(np.mean(taus))) if taus else None


def cost_matched(gmacs: list[float], score: list[float], truth: list[float], ratio: float = 1.5) -> dict[str, Any]:
    """How often ``score`` orders a pair of networks as ``truth`` does, over the pairs whose GMACs
    lie within ``ratio`` of each other (the choices a latency-aware search has to make), next to
    the same for GMACs itself (more is better). Pairs tied in ``truth`` are left out."""
    hits = {"score": 0, "gmacs": 0}
    pairs = 0
    for i in range(len(gmacs)):
        for j in range(i + 1, len(gmacs)):
            if max(gmacs[i], gmacs[j]) > ratio * min(gmacs[i], gmacs[j]) or truth[i] == truth[j]:
                continue
            sign = np.sign(truth[i] - truth[j])
            pairs += 1
            hits["score"] += int(np.sign(score[i] - score[j]) == sign)
            hits["gmacs"] += int(np.sign(gmacs[i] - gmacs[j]) == sign)
    rate = {k: None if not pairs else round(v / pairs, 4) for k, v in hits.items()}
    return {"gmacs_ratio": ratio, "pairs": pairs, "supernet": rate["score"], "gmacs": rate["gmacs"]}


def top_overlap(a: list[float], b: list[float], k: int = 3) -> float:
    top = lambda v: set(np.argsort(v)[::-1][:k].tolist())  # noqa: E731
    return len(top(a) & top(b)) / k


@dataclass(frozen=True)
class StandaloneJob:
    """One standalone training: the ``index``-th architecture with ``config.seed``."""

    index: int
    arch: Arch
    config: RetrainConfig
    data: Path
    data_order_seed: int
    workdir: Path


def _datasets(data: Path, size: tuple[int, int], seed: int) -> tuple[CityscapesDataset, CityscapesDataset]:
    train_set = CityscapesDataset(data, "train", transform=SegTransform(crop_size=size), seed=seed)
    val_set = CityscapesDataset(data, "val", transform=SegTransform(crop_size=None, train=False), seed=seed)
    return train_set, val_set


def _train_one(job: StandaloneJob, threads: int) -> float:
    """Train one job from scratch (also in a worker process: it reads the data itself)."""
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    train_set, val_set = _datasets(job.data, job.config.crop_size, job.data_order_seed)
    retrainer = Retrainer(job.config, job.arch, train_set, val_set, job.workdir)
    retrainer.fit()
    if retrainer.last_miou is None:
        raise RuntimeError(f"standalone training of {job.arch.hash} (seed {job.config.seed}) gave no mIoU")
    return float(retrainer.last_miou)


def _train_all(todo: list[StandaloneJob], jobs: int, threads: int) -> Iterator[tuple[StandaloneJob, float]]:
    """Each job's mIoU as it finishes; ``jobs`` > 1 trains that many at once in worker processes
    with one torch thread each (at these sizes one thread per process is nearly as fast as two
    threads in one, so the cores' throughput doubles)."""
    if jobs <= 1:
        for job in todo:
            yield job, _train_one(job, threads)
        return
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch thread pools
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        futures = {pool.submit(_train_one, job, 1): job for job in todo}
        for future in as_completed(futures):
            yield futures[future], future.result()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # tiny weights late in training are otherwise very slow on CPU
    torch.manual_seed(args.seed)
    size = parse_size(args.size)
    model = ModelConfig(base_channels=args.base_channels, num_layers=args.layers, num_classes=19)
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="hyctas-ranking-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        data = work / "data"
        generate(data, train=args.train_images, val=args.val_images, size=size, seed=args.data_seed, overwrite=True)
        timings["data_s"] = time.perf_counter() - t0

        train_set, _ = _datasets(data, size, args.supernet_seed)

        t0 = time.perf_counter()
        train_cfg = SupernetTrainConfig(
            model=model,
            epochs=args.supernet_epochs,
            batch_size=args.batch_size,
            lr=args.supernet_lr,
            lr_decay=args.supernet_lr_decay,
            lr_final=args.supernet_lr_final,
            loss=args.supernet_loss,
            class_weighting=args.supernet_class_weighting,
            crop_size=size,
            sampling=args.sampling,
            branch_prior=args.branch_prior,
            sandwich_random=args.sandwich_random,
            distill=args.distill,
            warmup_steps=args.warmup_steps,
            seed=args.supernet_seed,
            checkpoint_every=10**6,
            log_every=10**6,
        )
        supernet_dir = work / f"supernet-{args.supernet_seed}"
        trainer = SupernetTrainer(train_cfg, train_set, supernet_dir)
        trainer.fit()
        timings["supernet_s"] = time.perf_counter() - t0

        archs = pick_archs(args, model, size)
        t0 = time.perf_counter()
        spec = EvaluatorSpec(
            supernet=str(supernet_dir / "supernet.pt"),
            data=str(data),
            calib_images=args.calib_images,
            val_images=args.val_images,
            latency_seconds=args.latency_seconds,
            seed=args.seed,
        )
        scored = LocalEvaluator(spec).evaluate(archs)
        timings["supernet_eval_s"] = time.perf_counter() - t0

        n_seeds = 1 if args.no_ceiling else args.standalone_seeds
        seeds = [args.seed * 1000 + k for k in range(1, n_seeds + 1)]
        base_retrain = RetrainConfig(
            model=model,
            epochs=args.standalone_epochs,
            batch_size=args.batch_size,
            lr=args.standalone_lr,
            loss=args.standalone_loss,
            class_weighting=args.standalone_class_weighting,
            crop_size=size,
            eval_every=args.standalone_epochs,
            checkpoint_every=10**6,
            log_every=10**6,
        )
        t0 = time.perf_counter()
        cache = ResultCache(args.standalone_cache)
        budget = {k: vars(args)[k] for k in STANDALONE_KEYS}

        def key_of(arch: Arch, s: int) -> str:
            return json.dumps({"arch": arch.hash, "seed": s, **budget}, sort_keys=True)

        todo = [
            StandaloneJob(i, arch, replace(base_retrain, seed=s), data, args.seed, work / "standalone" / f"{i}-{s}")
            for i, arch in enumerate(archs)
            for s in seeds
            if key_of(arch, s) not in cache.data
        ]
        jobs = min(args.jobs or (os.cpu_count() or 1), max(len(todo), 1))
        for job, miou in _train_all(todo, jobs, torch.get_num_threads()):
            cache.put(key_of(job.arch, job.config.seed), miou)
            done = f"[{job.index + 1}/{len(archs)}] {job.arch.hash} seed {job.config.seed}: {miou:.4f}"
            print(done, file=sys.stderr, flush=True)
        standalone = [[float(cache.data[key_of(arch, s)]) for s in seeds] for arch in archs]
        timings["standalone_s"] = time.perf_counter() - t0

    sup = [float(r["miou"]) for r in scored]
    mean_sa = [float(np.mean(r)) for r in standalone]
    by_seed = [list(col) for col in zip(*standalone, strict=True)]  # one list per standalone seed
    half = len(by_seed) // 2
    pairs = [kendall(a, b) for i, a in enumerate(by_seed) for b in by_seed[i + 1 :]]
    rows = [
        {
            "arch_hash": arch.hash,
            "branches": arch.num_branches,
            "supernet_miou": round(s, 4),
            "standalone_miou": round(m, 4),
            "standalone_runs": [round(v, 4) for v in runs],
            "latency_ms": round(float(r["latency_ms"]), 3),
            "gmacs": round(float(r["gmacs"]), 4),
        }
        for arch, s, m, runs, r in zip(archs, sup, mean_sa, standalone, scored, strict=True)
    ]
    report: dict[str, Any] = {
        "benchmark": "supernet_ranking",
        "kendall_tau": _finite(kendall(sup, mean_sa)),
        "spearman": _finite(float(stats.spearmanr(sup, mean_sa).statistic)),
        "top3_overlap": round(top_overlap(sup, mean_sa), 4),
        # the ceiling: two standalone trainings (seeds 1 and 2) against each other
        "standalone_tau": None if args.no_ceiling else _finite(pairs[0]),
        # every pair of standalone seeds, and the supernet against each seed alone
        "standalone_tau_pairs_mean": None if args.no_ceiling else _finite(float(np.mean(pairs))),
        "kendall_tau_per_seed": [_finite(kendall(sup, runs)) for runs in by_seed],
        # ranking among networks of one branch count (similar cost): the mean of the groups' tau
        "kendall_tau_within_branches": _within_branches(archs, sup, mean_sa),
        # the ceiling for a reference averaged over seeds: the mean of one half of the seeds
        # against the mean of the other (a lower bound for the mean of all of them)
        "reference_tau": None
        if half < 2
        else _finite(kendall(list(np.mean(by_seed[:half], axis=0)), list(np.mean(by_seed[half:], axis=0)))),
        # the baseline a supernet has to beat: ranking by a cost count, with no training at all
        "proxy_tau": {
            k: _finite(kendall([float(r[k]) for r in scored], mean_sa)) for k in ("gmacs", "params_m", "latency_ms")
        },
        # networks of similar cost: does the supernet order them better than their GMACs does?
        "cost_matched": cost_matched([float(r["gmacs"]) for r in scored], sup, mean_sa),
        "supernet_miou_range": [round(min(sup), 4), round(max(sup), 4)],
        "standalone_miou_range": [round(min(mean_sa), 4), round(max(mean_sa), 4)],
        "rows": rows,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "supernet_config": {k: v for k, v in train_cfg.to_dict().items() if k != "model"} | {"model": model.to_dict()},
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "machine": machine(),
    }
    return report


if __name__ == "__main__":
    print(json.dumps(main(), indent=1, allow_nan=False))
