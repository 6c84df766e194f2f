"""Inference benchmark: HyCTAS-S and -M at batch 1, eager vs TorchScript vs ONNX Runtime.

Prints one JSON object: per model, input size and runtime the median latency (ms), FPS and
achieved GFLOP/s (2 x MACs / time), also as a fraction of this machine's large-GEMM GFLOP/s
measured in the same run. Run by hand (``python benchmarks/inference.py``) or ``make bench``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hyctas_core.export import export_onnx, export_torchscript
from hyctas_core.network import build
from hyctas_core.presets import get_preset
from hyctas_core.profile import count_macs, count_params, measure_latency


def gemm_gflops(n: int = 2048, seconds: float = 3.0) -> float:
    """Sustained float32 GFLOP/s of an n x n matmul on this CPU (torch's BLAS)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        runs += 1
    return 2 * n**3 * runs / (time.perf_counter() - start) / 1e9


def time_onnx(path: Path, size: tuple[int, int], seconds: float, threads: int) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = np.random.randn(1, 3, *size).astype(np.float32)
    for _ in range(2):
        session.run(None, {"image": x})
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        session.run(None, {"image": x})
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="hyctas-s,hyctas-m")
    parser.add_argument("--sizes", default="512x1024,1024x2048")
    parser.add_argument("--base-channels", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=4.0, help="timing duration per measurement")
    parser.add_argument("--runtimes", default="eager,torchscript,onnxruntime")
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    gemm = gemm_gflops()
    results: list[dict[str, Any]] = []
    runtimes = args.runtimes.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            torch.manual_seed(0)
            net = build(get_preset(name), num_classes=19, base_channels=args.base_channels).eval()
            for size_text in args.sizes.split(","):
                h, w = (int(v) for v in size_text.split("x"))
                macs = count_macs(net, (h, w))
                row: dict[str, Any] = {
                    "model": name,
                    "input_size": [h, w],
                    "params_m": round(count_params(net) / 1e6, 3),
                    "gmacs": round(macs / 1e9, 2),
                }
                for runtime in runtimes:
                    if runtime == "eager":
                        ms = measure_latency(net, (h, w), duration_s=args.seconds, min_runs=3).median_ms
                    elif runtime == "torchscript":
                        traced = torch.jit.optimize_for_inference(export_torchscript(net, (h, w)))
                        ms = measure_latency(traced, (h, w), duration_s=args.seconds, min_runs=3).median_ms
                    elif runtime == "onnxruntime":
                        path = export_onnx(net, (h, w), Path(tmp) / f"{name}_{h}x{w}.onnx", exporter="torchscript")
                        ms = time_onnx(path, (h, w), args.seconds, threads)
                    else:
                        raise SystemExit(f"unknown runtime {runtime!r}; use eager, torchscript, onnxruntime")
                    gflops = 2 * macs / (ms / 1000) / 1e9
                    row[runtime] = {
                        "ms": round(ms, 2),
                        "fps": round(1000 / ms, 2),
                        "gflops": round(gflops, 1),
                        "fraction_of_gemm": round(gflops / gemm, 3),
                    }
                results.append(row)
    report = {
        "benchmark": "inference",
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "threads": threads,
        "torch": torch.__version__,
        "base_channels": args.base_channels,
        "batch": 1,
        "gemm_gflops": round(gemm, 1),
        "results": results,
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
