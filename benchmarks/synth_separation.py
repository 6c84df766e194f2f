"""Does the synthetic benchmark separate architectures? Train small nets on it and compare mIoU.

Renders a train and a val split of the built-in synthetic street scenes (the same images
``hyctas data synth`` writes for that seed), trains each model with the same schedule
(AdamW, poly decay, cross-entropy on train ids with ignore index 255, horizontal flips) and
reports the val mIoU from a confusion matrix, next to a per-pixel colour-histogram Bayes
classifier as the "colour lookup" floor. Prints one JSON object. Run by hand on a CPU:

    python benchmarks/synth_separation.py --size 128x256 --steps 400
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hyctas_core.data.labels import IGNORE_INDEX, NUM_CLASSES, TRAIN_ID_NAMES, id_to_train_id_lut
from hyctas_core.data.synth import render_scene, scene_rng
from hyctas_core.network import build
from hyctas_core.presets import get_preset

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def render_split(split: str, n: int, size: tuple[int, int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, H, W) uint8 and train-id labels (N, H, W) int64 of one split."""
    lut = id_to_train_id_lut()
    images, labels = [], []
    for i in range(n):
        scene = render_scene(scene_rng(seed, split, i), size)
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


def scores(cm: torch.Tensor) -> dict[str, Any]:
    """mIoU over the classes present in the ground truth, per-class IoU and pixel accuracy."""
    cm = cm.double()
    tp = cm.diag()
    gt, pr = cm.sum(1), cm.sum(0)
    iou = tp / (gt + pr - tp).clamp(min=1)
    present = gt > 0
    return {
        "miou": round(float(iou[present].mean()), 4),
        "pixel_acc": round(float(tp.sum() / cm.sum()), 4),
        "iou": {TRAIN_ID_NAMES[c]: round(float(iou[c]), 4) for c in range(NUM_CLASSES) if present[c]},
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


def train_eval(name: str, width: int, data: tuple[torch.Tensor, ...], args: argparse.Namespace) -> dict[str, Any]:
    xt, yt, xv, yv = data
    torch.manual_seed(args.seed)
    net = build(get_preset(name), num_classes=NUM_CLASSES, base_channels=width)
    params = sum(p.numel() for p in net.parameters())
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
            print(
                f"{name}:{width} step {step + 1}/{args.steps} loss {np.mean(losses[-args.log_every :]):.3f} "
                f"{elapsed:.0f}s",
                file=sys.stderr,
                flush=True,
            )
    train_s = time.perf_counter() - start
    net.eval()
    per_image = []
    with torch.no_grad():
        for i in range(0, len(xv), 16):
            pred = net(normalise(xv[i : i + 16]))["out"].argmax(1)
            per_image += [confusion(p, t) for p, t in zip(pred, yv[i : i + 16], strict=True)]
    stack = torch.stack(per_image)
    cm = stack.sum(0)
    return {
        "model": name,
        "base_channels": width,
        "params": params,
        "train_seconds": round(train_s, 1),
        "final_loss": round(float(np.mean(losses[-20:])), 4),
        **scores(cm),
        "_per_image_cm": stack,
    }


def paired_bootstrap(a: torch.Tensor, b: torch.Tensor, rounds: int = 1000, seed: int = 0) -> dict[str, float]:
    """mIoU(b) - mIoU(a) over val images resampled with replacement: mean and 95% interval."""

    def miou(cm: torch.Tensor) -> float:
        cm = cm.double()
        tp = cm.diag()
        gt = cm.sum(1)
        iou = tp / (gt + cm.sum(0) - tp).clamp(min=1)
        return float(iou[gt > 0].mean())

    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(rounds):
        idx = torch.from_numpy(rng.integers(0, len(a), len(a)))
        diffs.append(miou(b[idx].sum(0)) - miou(a[idx].sum(0)))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return {"mean": round(float(np.mean(diffs)), 4), "ci95": [round(float(lo), 4), round(float(hi), 4)]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="128x256", help="HxW")
    parser.add_argument("--train", type=int, default=200, help="training scenes")
    parser.add_argument("--val", type=int, default=50, help="validation scenes")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids oversubscription stalls)")
    parser.add_argument("--log-every", type=int, default=50, help="progress lines on stderr (0: none)")
    parser.add_argument(
        "--models",
        default="hyctas-s:2,hyctas-s:4,hyctas-l:4",
        help="preset:base_channels,...; the first is the reference",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # tiny weights/grads late in training are otherwise very slow on CPU
    h, w = (int(v) for v in args.size.lower().split("x"))
    t0 = time.perf_counter()
    xt, yt = render_split("train", args.train, (h, w), args.seed)
    xv, yv = render_split("val", args.val, (h, w), args.seed)
    render_s = time.perf_counter() - t0
    result: dict[str, Any] = {
        "settings": {
            "size": [h, w],
            "train": args.train,
            "val": args.val,
            "steps": args.steps,
            "batch": args.batch,
            "lr": args.lr,
            "optimizer": "AdamW, poly(0.9) decay, hflip",
            "seed": args.seed,
            "threads": args.threads,
            "machine": platform.processor() or platform.machine(),
        },
        "render_seconds": round(render_s, 1),
        "colour_baseline": colour_baseline(xt, yt, xv, yv),
        "models": [],
    }
    cms = []
    for spec in args.models.split(","):
        name, width = spec.split(":")
        row = train_eval(name, int(width), (xt, yt, xv, yv), args)
        cms.append(row.pop("_per_image_cm"))
        result["models"].append(row)
    first = result["models"][0]
    for row, cm in zip(result["models"][1:], cms[1:], strict=True):
        row[f"miou_minus_{first['model']}:{first['base_channels']}"] = paired_bootstrap(cms[0], cm)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
