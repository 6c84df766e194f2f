"""Does the synthetic benchmark reward the architectures the search space is about?

Renders a train and a val split of the built-in synthetic street scenes (the images
``hyctas data synth`` writes for that seed), samples architectures of the search space in
four groups (seeded by ``--seed``) and trains each from scratch with one fixed budget (AdamW,
poly decay, cross-entropy on train ids with ignore index 255, horizontal flips):

- ``multi_attn``: 3-branch networks with at least one self-attention cell;
- ``single_conv``: 1-branch networks with no attention, spread over cost (the cheapest to
  the most expensive of the sampled candidates), so that latency-matched rivals exist;
- ``large``: a largest sub-network (3 branches, every cell computing at full width);
- ``tiny``: a smallest sub-network that stays at stride 8 (1 branch, narrowest widths, skip in
  every cell but the last): the stem and the head with almost nothing between, so it sees
  only a local window. (A smallest network that moves down to stride 32 sees the whole image
  and is no longer tiny in what it can tell apart.)

Every network is timed at batch 1 on this machine. The JSON reports, next to a per-pixel
colour-histogram Bayes classifier (the "colour lookup" floor):

- ``gap_branches``: val mIoU of the best ``multi_attn`` network minus that of the best
  ``single_conv`` network of equal or lower measured latency (target: >= 5 points);
- ``gap_size``: ``large`` minus ``tiny`` (target: >= 10 points);

each with a 95 % interval from a paired bootstrap over val images. ``--alike-p 0`` renders
the scenes without per-scene shared materials, to measure what they add. Run by hand:

    python benchmarks/synth_separation.py --seed 0
    python benchmarks/synth_separation.py --quick      # seconds; a smoke run, not a measurement
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from _common import ResultCache, apply_quick, machine  # noqa: E402

from hyctas_core.config import ModelConfig
from hyctas_core.data.labels import IGNORE_INDEX, NUM_CLASSES, TRAIN_ID_NAMES, id_to_train_id_lut
from hyctas_core.data.synth import ALIKE_P, render_scene, scene_rng
from hyctas_core.network import HyCTASNet
from hyctas_core.profile import count_macs, count_params, measure_latency
from hyctas_core.search_space import Arch, sample_arch, sample_largest, sample_smallest

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
GROUPS = ("multi_attn", "single_conv", "large", "tiny")
QUICK = {"size": "64x128", "train": 8, "val": 4, "steps": 2, "batch": 2, "per_group": 1, "candidates": 4}


def render_split(
    split: str, n: int, size: tuple[int, int], seed: int, alike_p: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, H, W) uint8 and train-id labels (N, H, W) int64 of one split."""
    lut = id_to_train_id_lut()
    images, labels = [], []
    for i in range(n):
        scene = render_scene(scene_rng(seed, split, i), size, alike_p=alike_p)
        images.append(scene.image)
        labels.append(lut[scene.label_ids])
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(np.stack(labels).astype(np.int64))
    return x, y


def normalise(x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255.0 - MEAN) / STD


def confusion(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    keep = target != IGNORE_INDEX
    idx = target[keep] * NUM_CLASSES + pred[keep]
    return torch.bincount(idx, minlength=NUM_CLASSES**2).reshape(NUM_CLASSES, NUM_CLASSES)


def miou(cm: torch.Tensor) -> float:
    """mIoU over the classes present in the ground truth."""
    cm = cm.double()
    tp = cm.diag()
    gt = cm.sum(1)
    iou = tp / (gt + cm.sum(0) - tp).clamp(min=1)
    return float(iou[gt > 0].mean())


def scores(cm: torch.Tensor) -> dict[str, Any]:
    """mIoU, per-class IoU (classes present in the ground truth) and pixel accuracy."""
    cmd = cm.double()
    tp = cmd.diag()
    gt, pr = cmd.sum(1), cmd.sum(0)
    iou = tp / (gt + pr - tp).clamp(min=1)
    return {
        "miou": round(miou(cm), 4),
        "pixel_acc": round(float(tp.sum() / cmd.sum()), 4),
        "iou": {TRAIN_ID_NAMES[c]: round(float(iou[c]), 4) for c in range(NUM_CLASSES) if gt[c] > 0},
    }


def colour_baseline(xt: torch.Tensor, yt: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor) -> dict[str, Any]:
    """Per-pixel Bayes classifier on a 16^3 RGB histogram per class: the 'colour lookup' floor."""

    def bins(x: torch.Tensor) -> torch.Tensor:
        q = (x // 16).long()
        return (q[:, 0] * 256 + q[:, 1] * 16 + q[:, 2]).reshape(-1)

    bt, lt = bins(xt), yt.reshape(-1)
    keep = lt != IGNORE_INDEX
    hist = torch.zeros(4096 * NUM_CLASSES, dtype=torch.long)
    hist.index_add_(0, bt[keep] * NUM_CLASSES + lt[keep], torch.ones(int(keep.sum()), dtype=torch.long))
    table = hist.reshape(4096, NUM_CLASSES).argmax(1)
    pred = table[bins(xv)].reshape(yv.shape)
    return scores(confusion(pred, yv))


def has_attention(arch: Arch) -> bool:
    return any(cell.op == "sa" for branch in arch.branches for cell in branch.cells)


def pick_groups(args: argparse.Namespace, model: ModelConfig, size: tuple[int, int]) -> dict[str, list[Arch]]:
    """The four groups of architectures (see the module doc), seeded by ``args.seed``."""
    rng = np.random.default_rng([args.seed, 53])
    layers = model.num_layers

    def draw(branches: int, keep: Any, n: int) -> list[Arch]:
        found: dict[str, Arch] = {}
        for _ in range(n * 200):
            arch = sample_arch(rng, layers, num_branches=branches)
            if keep(arch):
                found.setdefault(arch.hash, arch)
            if len(found) >= n:
                break
        return list(found.values())

    multi = draw(3, has_attention, args.per_group)
    pool = draw(1, lambda a: not has_attention(a), args.candidates)
    by_cost = sorted(pool, key=lambda a: count_macs(HyCTASNet(a, model).eval(), size))
    spots = np.linspace(0, len(by_cost) - 1, min(args.per_group, len(by_cost)))
    single = [by_cost[int(round(i))] for i in spots]
    large = sample_largest(rng, layers)
    tiny = sample_smallest(rng, layers)
    while tiny.combination != (8,):
        tiny = sample_smallest(rng, layers)
    groups = {"multi_attn": multi, "single_conv": single, "large": [large], "tiny": [tiny]}
    return {name: archs for name, archs in groups.items() if name in args.groups}


def train_eval(
    arch: Arch, model: ModelConfig, data: tuple[torch.Tensor, ...], args: argparse.Namespace, tag: str
) -> tuple[dict[str, Any], torch.Tensor]:
    """Train ``arch`` from scratch on the train split; its row and its per-image val confusions."""
    xt, yt, xv, yv = data
    torch.manual_seed(args.seed)
    net = HyCTASNet(arch, model)
    size = (xv.shape[2], xv.shape[3])
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(args.seed)
    net.train()
    start = time.perf_counter()
    losses = []
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = args.lr * (1 - step / args.steps) ** 0.9
        idx = torch.randint(0, len(xt), (args.batch,), generator=gen)
        x, y = normalise(xt[idx]), yt[idx]
        flip = torch.rand(args.batch, generator=gen) < 0.5
        x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
        loss = F.cross_entropy(net(x)["out"], y, ignore_index=IGNORE_INDEX)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if args.log_every and (step + 1) % args.log_every == 0:
            elapsed = time.perf_counter() - start
            recent = np.mean(losses[-args.log_every :])
            print(f"{tag} step {step + 1}/{args.steps} loss {recent:.3f} {elapsed:.0f}s", file=sys.stderr, flush=True)
    train_s = time.perf_counter() - start
    net.eval()
    per_image = []
    with torch.no_grad():
        for i in range(0, len(xv), 16):
            pred = net(normalise(xv[i : i + 16]))["out"].argmax(1)
            per_image += [confusion(p, t) for p, t in zip(pred, yv[i : i + 16], strict=True)]
    stack = torch.stack(per_image)
    latency = measure_latency(net, size, duration_s=args.latency_seconds)
    row = {
        "arch_hash": arch.hash,
        "branches": arch.num_branches,
        "ends": list(arch.combination),
        "attention": has_attention(arch),
        "params": count_params(net),
        "gmacs": round(count_macs(net, size) / 1e9, 4),
        "latency_ms": round(latency.median_ms, 3),
        "train_seconds": round(train_s, 1),
        "final_loss": round(float(np.mean(losses[-20:])), 4),
        **scores(stack.sum(0)),
    }
    return row, stack


# What a trained network's result depends on besides its arch (its cache key).
TRAIN_KEYS = ("size", "train", "val", "base_channels", "layers", "steps", "batch", "lr", "alike_p", "seed", "data_seed")


def cache_key(arch: Arch, args: argparse.Namespace) -> str:
    return "|".join([arch.hash, *(f"{k}={getattr(args, k)}" for k in TRAIN_KEYS)])


def paired_bootstrap(a: torch.Tensor, b: torch.Tensor, rounds: int = 1000, seed: int = 0) -> dict[str, Any]:
    """mIoU(b) - mIoU(a) on the val set, and its 95 % interval over val images resampled with replacement."""
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(rounds):
        idx = torch.from_numpy(rng.integers(0, len(a), len(a)))
        diffs.append(miou(b[idx].sum(0)) - miou(a[idx].sum(0)))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    point = miou(b.sum(0)) - miou(a.sum(0))
    return {"points": round(100 * point, 2), "ci95_points": [round(100 * float(lo), 2), round(100 * float(hi), 2)]}


def gaps(rows: dict[str, list[dict[str, Any]]], cms: dict[str, torch.Tensor]) -> dict[str, Any]:
    """``gap_branches`` and ``gap_size`` (mIoU points) from the trained groups (those that ran)."""
    out: dict[str, Any] = {}
    if {"multi_attn", "single_conv"} <= rows.keys():
        out["gap_branches"] = _gap_branches(rows, cms)
    if {"large", "tiny"} <= rows.keys():
        large, tiny = rows["large"][0], rows["tiny"][0]
        out["gap_size"] = {
            **paired_bootstrap(cms[tiny["arch_hash"]], cms[large["arch_hash"]]),
            "large": large["arch_hash"],
            "tiny": tiny["arch_hash"],
        }
    return out


def _gap_branches(rows: dict[str, list[dict[str, Any]]], cms: dict[str, torch.Tensor]) -> dict[str, Any]:
    best_multi = max(rows["multi_attn"], key=lambda r: r["miou"])
    rivals = [r for r in rows["single_conv"] if r["latency_ms"] <= best_multi["latency_ms"]]
    if not rivals:
        return {"points": None, "why": f"no single_conv network at or under {best_multi['latency_ms']} ms"}
    best_single = max(rivals, key=lambda r: r["miou"])
    return {
        **paired_bootstrap(cms[best_single["arch_hash"]], cms[best_multi["arch_hash"]]),
        "multi_attn": best_multi["arch_hash"],
        "single_conv": best_single["arch_hash"],
        "latency_ms": [best_multi["latency_ms"], best_single["latency_ms"]],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="128x256", help="HxW")
    parser.add_argument("--train", type=int, default=200, help="training scenes")
    parser.add_argument("--val", type=int, default=50, help="validation scenes")
    parser.add_argument("--base-channels", type=int, default=8)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--per-group", type=int, default=3, help="networks in multi_attn and single_conv")
    parser.add_argument("--candidates", type=int, default=24, help="1-branch candidates to spread over cost")
    parser.add_argument("--alike-p", type=float, default=ALIKE_P, help="shared-material probability per group")
    parser.add_argument("--latency-seconds", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids oversubscription stalls)")
    parser.add_argument("--log-every", type=int, default=100, help="progress lines on stderr (0: none)")
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="JSON file of trained networks' results: a run stopped part-way goes on where it was",
    )
    parser.add_argument(
        "--shard",
        default="0/1",
        help="K/N: train only every N-th network from the K-th (with a shared --cache, N processes split one run; "
        "the report has the gaps once every network is in the cache)",
    )
    parser.add_argument("--quick", action="store_true", help="toy sizes: a smoke run, not a measurement")
    parser.add_argument(
        "--groups", default=",".join(GROUPS), help=f"which groups to train, of {','.join(GROUPS)} (gaps need pairs)"
    )
    args = parser.parse_args(argv)
    try:
        k, n = (int(v) for v in args.shard.split("/"))
        if not 0 <= k < n:
            raise ValueError
    except ValueError:
        parser.error(f"--shard must be K/N with 0 <= K < N, got {args.shard!r}")
    if n > 1 and args.cache is None:
        parser.error("--shard K/N needs --cache FILE: the shards meet there")
    args.shard = (k, n)
    args.groups = [g for g in args.groups.split(",") if g]
    if not args.groups or set(args.groups) - set(GROUPS):
        parser.error(f"--groups must name some of {', '.join(GROUPS)}, got {args.groups}")
    apply_quick(parser, args, QUICK)
    if args.quick:
        args.latency_seconds = min(args.latency_seconds, 0.02)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # tiny weights/grads late in training are otherwise very slow on CPU
    h, w = (int(v) for v in args.size.lower().split("x"))
    model = ModelConfig(base_channels=args.base_channels, num_layers=args.layers, num_classes=NUM_CLASSES)
    t0 = time.perf_counter()
    xt, yt = render_split("train", args.train, (h, w), args.data_seed, args.alike_p)
    xv, yv = render_split("val", args.val, (h, w), args.data_seed, args.alike_p)
    render_s = time.perf_counter() - t0
    groups = pick_groups(args, model, (h, w))
    rows: dict[str, list[dict[str, Any]]] = {}
    cms: dict[str, torch.Tensor] = {}
    cache = ResultCache(args.cache)
    shard, shards = args.shard
    missing = []
    t0 = time.perf_counter()
    for n, (name, i, arch) in enumerate((g, i, a) for g, archs in groups.items() for i, a in enumerate(archs)):
        key = cache_key(arch, args)
        cache.refresh()
        if key not in cache.data and n % shards == shard:
            row, cm = train_eval(arch, model, (xt, yt, xv, yv), args, f"{name}[{i}]")
            cache.put(key, {"row": row, "confusions": cm.tolist()})
        if key not in cache.data:  # another shard's
            missing.append(f"{name}[{i}]")
            continue
        row, cm = cache.data[key]["row"], torch.tensor(cache.data[key]["confusions"])
        rows.setdefault(name, []).append(row)
        cms[arch.hash] = cm
        print(f"{name}[{i}] {arch.hash} mIoU {row['miou']:.4f} {row['latency_ms']} ms", file=sys.stderr)
    result: dict[str, Any] = {
        "benchmark": "synth_separation",
        **(gaps(rows, cms) if not missing else {"missing": missing}),
        "colour_baseline": colour_baseline(xt, yt, xv, yv),
        "groups": rows,
        "settings": {
            k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in ("log_every", "shard")
        },
        "timings_s": {"render": round(render_s, 1), "train_eval": round(time.perf_counter() - t0, 1)},
        "machine": machine(),
    }
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=1, allow_nan=False))
