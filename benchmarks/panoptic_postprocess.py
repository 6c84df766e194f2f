"""Panoptic post-processing time per image, against the network's own inference time.

A synthetic 1024x2048 street (19 classes, ~30 instances of the 8 thing classes, stuff bands)
gives near-perfect heads: noisy one-hot logits, the Gaussian centre heatmap and the offsets of
:func:`hyctas_core.panoptic.make_targets` plus noise. The benchmark times, per image (median of
``--runs``): the whole :func:`~hyctas_core.panoptic.postprocess` (argmax included) and its
phases, the COCO PNG + ``segments_info`` encoding a server adds, and batch-1 inference of
HyCTAS-S with the panoptic head (and without it) at the same size (two alternating
measurements each, the lower median kept). Prints one JSON object, with the machine's 1-minute
load average before and after: numbers taken under load from other processes are not comparable.

Run alone on a quiet machine: ``python benchmarks/panoptic_postprocess.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hyctas_core.config import CITYSCAPES_THING_IDS
from hyctas_core.network import build
from hyctas_core.panoptic import (
    encode_panoptic_png,
    find_centers,
    group_pixels,
    make_targets,
    postprocess,
    semantic_argmax,
)
from hyctas_core.presets import get_preset
from hyctas_core.profile import count_macs, measure_latency


def scene(size: tuple[int, int], instances: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A label map (stuff bands + box-shaped instances) and its instance map."""
    rng = np.random.default_rng(seed)
    h, w = size
    label = np.zeros((h, w), np.int64)  # road
    label[: h // 3] = 10  # sky
    label[h // 6 : h // 2, : w // 2] = 2  # building
    label[h // 4 : h // 2, w // 2 :] = 8  # vegetation
    label[h // 2 :, : w // 8] = 1  # sidewalk
    label[h // 2 :, -w // 8 :] = 1
    # small regions of the remaining stuff classes: (train id, top / h, left / w)
    for c, fy, fx in ((3, 0.5, 0.33), (4, 0.33, 0.9), (5, 0.4, 0.45), (6, 0.3, 0.3), (7, 0.35, 0.31), (9, 0.6, 0.03)):
        y, x = int(fy * h), int(fx * w)
        label[y : y + h // 16, x : x + w // 16] = c
    inst = np.zeros((h, w), np.int64)
    things = list(CITYSCAPES_THING_IDS)
    for k in range(1, instances + 1):
        bh, bw = (
            int(rng.integers(h // 25, h // 5)),
            int(rng.integers(w // 70, w // 7)),
        )  # 40-200 x 30-290 px at 1024x2048
        y, x = int(rng.integers(h // 3, h - bh)), int(rng.integers(0, w - bw))
        label[y : y + bh, x : x + bw] = things[k % len(things)]
        inst[y : y + bh, x : x + bw] = k  # later boxes occlude earlier ones
    return torch.from_numpy(label), torch.from_numpy(inst)


def heads(label: torch.Tensor, inst: torch.Tensor, classes: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Noisy near-perfect outputs of a panoptic network for the scene."""
    g = torch.Generator().manual_seed(seed)
    t = make_targets(label, inst, thing_ids=CITYSCAPES_THING_IDS, sigma=8.0)
    logits = F.one_hot(label, classes).permute(2, 0, 1).float() * 4
    logits = (logits + torch.randn(logits.shape, generator=g)).contiguous()  # (C, H, W) as a network returns
    center = t.center + 0.005 * torch.randn(t.center.shape, generator=g)
    offset = t.offset + 0.5 * torch.randn(t.offset.shape, generator=g)
    return {"out": logits, "center": center, "offset": offset}


def median_ms(fn: Callable[[], Any], runs: int) -> tuple[float, Any]:
    result = fn()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="1024x2048")
    parser.add_argument("--instances", type=int, default=30)
    parser.add_argument("--classes", type=int, default=19)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="hyctas-s")
    parser.add_argument("--base-channels", type=int, default=12)
    parser.add_argument("--model-seconds", type=float, default=10.0, help="timing duration of the network")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    h, w = (int(v) for v in args.size.split("x"))
    label, inst = scene((h, w), args.instances)
    out = heads(label, inst, args.classes)
    kw: dict[str, Any] = {"thing_ids": CITYSCAPES_THING_IDS, "threshold": 0.1, "nms_kernel": 7, "top_k": 200}

    total_ms, (ids, segments) = median_ms(
        lambda: postprocess(out["out"], out["center"], out["offset"], **kw), args.runs
    )
    semantic = out["out"].argmax(0)
    argmax_ms, _ = median_ms(lambda: semantic_argmax(out["out"]), args.runs)
    torch_argmax_ms, _ = median_ms(lambda: out["out"].argmax(0), args.runs)
    nms_ms, (centers, _) = median_ms(lambda: find_centers(out["center"], threshold=0.1, nms_kernel=7), args.runs)
    mask = torch.isin(semantic, torch.tensor(CITYSCAPES_THING_IDS))
    group_ms, _ = median_ms(lambda: group_pixels(out["offset"], centers, mask), args.runs)
    from_map_ms, _ = median_ms(lambda: postprocess(semantic, out["center"], out["offset"], **kw), args.runs)
    encode_ms, _ = median_ms(lambda: encode_panoptic_png(ids, segments), args.runs)
    visible = len(torch.unique(inst)) - 1
    found = sum(s.isthing for s in segments)

    torch.manual_seed(0)
    net = build(get_preset(args.model), num_classes=args.classes, base_channels=args.base_channels, panoptic=True)
    net.eval()
    head = net.instance_head
    panoptic_runs, semantic_runs = [], []
    with torch.inference_mode():
        for _ in range(2):  # alternate, keep the least disturbed median of each
            net.instance_head = head
            panoptic_runs.append(measure_latency(net, (h, w), duration_s=args.model_seconds / 2, min_runs=3))
            net.instance_head = None  # the same network without the instance branch
            semantic_runs.append(measure_latency(net, (h, w), duration_s=args.model_seconds / 2, min_runs=3))
    net.instance_head = head
    panoptic_net = min(panoptic_runs, key=lambda r: r.median_ms)
    semantic_net = min(semantic_runs, key=lambda r: r.median_ms)
    macs_panoptic = count_macs(net, (h, w))
    net.instance_head = None
    macs_semantic = count_macs(net, (h, w))
    report = {
        "benchmark": "panoptic_postprocess",
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "input_size": [h, w],
        "classes": args.classes,
        "instances_visible": visible,
        "instances_found": found,
        "centers": len(centers),
        "runs": args.runs,
        "postprocess_ms": round(total_ms, 1),
        "phases_ms": {
            "semantic_argmax": round(argmax_ms, 1),
            "torch_argmax_for_reference": round(torch_argmax_ms, 1),
            "center_nms": round(nms_ms, 1),
            "group_pixels": round(group_ms, 1),
            "postprocess_from_semantic_map": round(from_map_ms, 1),
        },
        "coco_png_encode_ms": round(encode_ms, 1),
        "model": {
            "name": args.model,
            "base_channels": args.base_channels,
            "panoptic_inference_ms": round(panoptic_net.median_ms, 1),
            "semantic_inference_ms": round(semantic_net.median_ms, 1),
            "panoptic_gmacs": round(macs_panoptic / 1e9, 2),
            "semantic_gmacs": round(macs_semantic / 1e9, 2),
            "runs": panoptic_net.runs,
        },
        "postprocess_fraction_of_inference": round(total_ms / panoptic_net.median_ms, 3),
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # before, after
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
