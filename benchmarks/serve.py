"""Serving benchmark: backends in process, then the HTTP endpoint at 1, 8 and 32 clients, batching on and off.

A HyCTAS-S network (F=12, random weights saved as a retraining checkpoint) at --size. Prints
one JSON object: per-backend in-process latency (batch 1 and 8), and for each
(max_batch_size, clients) the endpoint's throughput and p50 / p99; ``overhead_ms_p50`` is the
endpoint's p50 at one client minus the in-process p50 of the same backend.

    python benchmarks/serve.py --size 256x512 --seconds 10
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image


def _checkpoint(tmp: Path, size: tuple[int, int]) -> Path:
    from hyctas_core.config import ModelConfig
    from hyctas_core.data.cityscapes import CityscapesDataset
    from hyctas_core.data.synth import generate
    from hyctas_core.data.transforms import SegTransform
    from hyctas_core.presets import get_preset
    from hyctas_core.retrain import RetrainConfig, Retrainer

    generate(tmp / "data", train=2, val=1, size=(64, 128), seed=0, write_color=False)
    arch = get_preset("hyctas-s")
    cfg = RetrainConfig(model=ModelConfig(base_channels=12, num_layers=arch.num_layers), epochs=1, batch_size=1,
                        crop_size=(64, 128), aux_weight=0, steps_per_epoch=1)  # fmt: skip
    train = CityscapesDataset(tmp / "data", "train", transform=SegTransform(crop_size=(64, 128)))
    Retrainer(cfg, arch, train, None, tmp / "run").fit(max_steps=1)
    return tmp / "run" / "last.pt"


def _quantiles(values: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(values, n=100)
    return 1000 * q[49], 1000 * q[98]


def _in_process(ckpt: Path, image: np.ndarray, seconds: float) -> dict[str, Any]:
    from services.serve.segmenter import BACKENDS, Segmenter, SegmenterConfig

    out: dict[str, Any] = {}
    for backend in BACKENDS:
        seg = Segmenter(SegmenterConfig(str(ckpt), backend=backend, threads=2))
        build_s = seg.warm_up(image.shape[:2])
        row: dict[str, Any] = {"first_call_s": round(build_s, 2)}
        for batch in (1, 8):
            times: list[float] = []
            end = time.perf_counter() + seconds / 2
            while time.perf_counter() < end or len(times) < 5:
                t0 = time.perf_counter()
                seg.predict([image] * batch)
                times.append(time.perf_counter() - t0)
            p50, p99 = _quantiles(times)
            row[f"batch{batch}_p50_ms"] = round(p50, 2)
            row[f"batch{batch}_images_per_s"] = round(batch / statistics.median(times), 1)
        out[backend] = row
    return out


def _load(url: str, png: bytes, clients: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    batches: list[int] = []
    errors = 0
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client() -> None:
        nonlocal errors
        with httpx.Client(timeout=120) as c:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    r = c.post(url, content=png)
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    errors += not ok
                    if ok:
                        batches.append(int(r.headers["x-batch-size"]))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    p50, p99 = _quantiles(latencies)
    return {
        "requests": len(latencies), "errors": errors, "throughput_rps": round(len(latencies) / wall, 2),
        "p50_ms": round(p50, 1), "p99_ms": round(p99, 1), "mean_batch": round(statistics.fmean(batches), 2),
    }  # fmt: skip


def _codec_ms(png: bytes, size: tuple[int, ...]) -> dict[str, float]:
    """Median ms of the endpoint's own image work: decoding the request, encoding the label PNG."""
    from services.serve.app import decode_image

    labels = np.zeros(size, np.uint8)
    decode, encode = [], []
    for _ in range(30):
        t0 = time.perf_counter()
        decode_image(png, max_pixels=1 << 30)
        decode.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        Image.fromarray(labels).save(io.BytesIO(), format="PNG")
        encode.append(time.perf_counter() - t0)
    return {"decode_png": round(1000 * statistics.median(decode), 2),
            "encode_label_png": round(1000 * statistics.median(encode), 2)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="256x512")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--backend", default=None, help="endpoint backend (default: the fastest in process)")
    args = ap.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="hyctas-serve-bench-"))
    ckpt = _checkpoint(tmp, (h, w))
    image = (np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    png = buffer.getvalue()
    in_process = _in_process(ckpt, image, args.seconds)
    backend = args.backend or min(in_process, key=lambda b: in_process[b]["batch1_p50_ms"])

    import ray
    from ray import serve

    from services.serve.deploy import deploy_model, ensure_gateway

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    results: dict[str, Any] = {}
    try:
        ensure_gateway(database_url=None, http_port=port)
        for max_batch in (1, 8):
            deploy_model("bench", str(ckpt), {"backend": backend, "threads": 2, "max_batch_size": max_batch,
                                              "batch_wait_s": 0.005, "warm_up_size": [h, w]})  # fmt: skip
            time.sleep(2)
            url = f"http://127.0.0.1:{port}/segment/bench"
            _load(url, png, 1, 2.0)  # warm the path
            for clients in (1, 8, 32):
                results[f"max_batch_{max_batch}/clients_{clients}"] = _load(url, png, clients, args.seconds)
        report = _report(h, w, backend, in_process, results, png, image)
        print(json.dumps(report, indent=2), flush=True)  # before Ray's shutdown chatter
    finally:
        serve.shutdown()
        ray.shutdown()


def _report(
    h: int, w: int, backend: str, in_process: dict[str, Any], results: dict[str, Any], png: bytes, image: np.ndarray
) -> dict[str, Any]:
    overhead = results["max_batch_1/clients_1"]["p50_ms"] - in_process[backend]["batch1_p50_ms"]
    codec = _codec_ms(png, image.shape[:2])
    return {
        "benchmark": "serve", "size": [h, w], "cpu_count": os.cpu_count(), "backend": backend,
        "in_process": in_process, "endpoint": results, "overhead_ms_p50": round(overhead, 2),
        "overhead_breakdown_ms": {**codec, "rest (HTTP proxy, 2 actor hops, queueing)": round(
            overhead - codec["decode_png"] - codec["encode_label_png"], 2)},
        "batched_vs_unbatched_32_clients": round(
            results["max_batch_8/clients_32"]["throughput_rps"] / results["max_batch_1/clients_32"]["throughput_rps"], 3
        ),
    }  # fmt: skip


if __name__ == "__main__":
    main()
