"""Serving benchmark: what the HTTP endpoint costs over calling the model in process, and what batching gains.

A HyCTAS-S network (F=12, weights of a one-step retraining, saved as its checkpoint) at --size,
served by the project's own deploy path (one model app at ``/segment/bench``, behind HAProxy or
Serve's Python proxy as ``--ingress`` says; the default is what a local Ray gets) on a local
Ray. Prints one JSON object on stdout; every log line goes to stderr.

- ``in_process``: each backend called directly (``Segmenter.predict``), batch 1 and 8.
- Warm-up: requests until the p50 of two consecutive windows of 20 agrees within 5 %.
- ``overhead_ms_p50`` / ``overhead_ms_p99``: one client; per request, the client's latency minus
  the model call the replica timed for that very request (its ``Server-Timing: model;dur=``
  header): HTTP, proxy, the hop to the replica, auth, decoding and encoding, queueing.
  ``endpoint_minus_inprocess_ms_p50`` is the same from the other side: endpoint p50 minus the
  in-process p50, measured in alternating rounds so that neither side gets a quieter machine.
  ``http_floor``: the same client against a bare uvicorn server that only waits the model's time:
  the part of the overhead that any Python HTTP server pays on this machine.
- ``throughput_vs_inprocess``: requests/s at ``--clients`` clients (unbatched) over the model's
  in-process capacity (one caller, back to back, batch 1, the same backend and threads).
- ``batching_ratio``: requests/s at ``--clients`` batched (max batch 8 with the deployment's
  defaults for the device: its batch wait, and adaptive batching, which serves unbatched where
  a batch is not faster per image; ``--force-batching`` always batches) over unbatched (max
  batch 1), measured A-B-B-A. ``batching_plan`` is what the batched replica chose, and why.

    python benchmarks/serve.py --size 256x512 --seconds 8
    python benchmarks/serve.py --quick      # a smoke run, not a measurement
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from services.ports import free_port

sys.path.insert(0, str(Path(__file__).parent))
from _common import apply_quick, machine  # noqa: E402

QUICK = {"size": "64x128", "seconds": 1.0, "clients": 4, "rounds": 1}


def _checkpoint(tmp: Path) -> Path:
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


def _street_scene(size: tuple[int, int], noise: bool) -> np.ndarray:
    """A street scene of the built-in synthetic set (a PNG of realistic size), or uniform noise
    (incompressible: the largest PNG of that size, the worst case for transfer and decoding)."""
    if noise:
        return (np.random.default_rng(0).random((*size, 3)) * 255).astype(np.uint8)
    from hyctas_core.data.synth import render_scene, scene_rng

    return np.ascontiguousarray(render_scene(scene_rng(0, "val", 0), size).image)


def _ms(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values) * 1000, q)), 2)


def _timed(fn: Any, seconds: float, least: int = 5) -> list[float]:
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < least:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _in_process(ckpt: Path, image: np.ndarray, seconds: float, threads: int) -> dict[str, Any]:
    from services.serve.segmenter import BACKENDS, Segmenter, SegmenterConfig

    out: dict[str, Any] = {}
    for backend in BACKENDS:
        seg = Segmenter(SegmenterConfig(str(ckpt), backend=backend, threads=threads))
        row: dict[str, Any] = {"first_call_s": round(seg.warm_up(image.shape[:2]), 2)}
        for batch in (1, 8):
            times = _timed(lambda s=seg, b=batch: s.predict([image] * b), seconds / 2)
            row[f"batch{batch}_p50_ms"] = _ms(times, 50)
            row[f"batch{batch}_images_per_s"] = round(batch / statistics.median(times), 1)
        out[backend] = row
    return out


def server_timing(header: str) -> dict[str, float]:
    """``{"model": 12.3, ...}`` (ms) from a ``Server-Timing: model;dur=12.3, ...`` header."""
    out = {}
    for part in header.split(","):
        name, _, dur = part.strip().partition(";dur=")
        out[name] = float(dur)
    return out


class Client:
    """Closed-loop HTTP clients: each sends the next request when its answer arrives."""

    def __init__(self, url: str, png: bytes) -> None:
        self.url, self.png = url, png

    def run(self, clients: int, seconds: float) -> dict[str, Any]:
        latencies: list[float] = []
        model_ms: list[float] = []
        replica_ms: list[dict[str, float]] = []
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
                        r = c.post(self.url, content=self.png)
                        ok = r.status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    took = time.perf_counter() - t0
                    with lock:
                        if not ok:
                            errors += 1
                            continue
                        latencies.append(took)
                        timing = server_timing(r.headers["server-timing"])
                        model_ms.append(timing["model"])
                        replica_ms.append(timing)
                        batches.append(int(r.headers["x-batch-size"]))

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        return {"latencies": latencies, "model_ms": model_ms, "timings": replica_ms, "batches": batches,
                "errors": errors, "wall_s": wall}  # fmt: skip

    def warm_up(self, window: int = 20, tolerance: float = 0.05, most: int = 15) -> int:
        """Send windows of ``window`` requests until two consecutive p50s agree within ``tolerance``."""
        previous = None
        for n in range(1, most + 1):
            with httpx.Client(timeout=120) as c:
                times = _timed(lambda: c.post(self.url, content=self.png).raise_for_status(), 0, window)
            p50 = statistics.median(times)
            if previous is not None and abs(p50 - previous) <= tolerance * previous:
                return n * window
            previous = p50
        return most * window


def _floor_server(port: int, wait_s: float, answer: int) -> None:
    """A bare uvicorn server (no Serve, no model): reads the body, waits ``wait_s`` in a thread
    (where the model would run) and answers ``answer`` bytes."""
    import asyncio

    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    async def segment(request: Any) -> Response:
        await request.body()
        await asyncio.to_thread(time.sleep, wait_s)
        return Response(
            b"\0" * answer, media_type="image/png", headers={"Server-Timing": f"model;dur={1000 * wait_s:.3f}"}
        )

    app = Starlette(routes=[Route("/segment/floor", segment, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error")


def http_floor(body: bytes, wait_s: float, answer: int, seconds: float) -> dict[str, float]:
    """What any Python HTTP server costs on this machine for this request, measured with the same
    client: a bare uvicorn server that waits as long as the model took. Its latency minus the
    wait is the floor under the endpoint's overhead that no serving stack removes (the client,
    loopback HTTP, and waking the idle processes and cores once the model is done)."""
    import multiprocessing

    port = free_port()
    server = multiprocessing.get_context("spawn").Process(
        target=_floor_server, args=(port, wait_s, answer), daemon=True
    )
    server.start()
    try:
        url = f"http://127.0.0.1:{port}/segment/floor"
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.post(url, content=b"", timeout=5)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        with httpx.Client(timeout=60) as c:
            times = _timed(lambda: c.post(url, content=body).raise_for_status(), seconds, 20)
        return {
            "floor_ms_p50": round(_ms(times, 50) - 1000 * wait_s, 2),
            "floor_ms_p99": round(_ms(times, 99) - 1000 * wait_s, 2),
        }
    finally:
        server.terminate()
        server.join()


def _summary(run: dict[str, Any]) -> dict[str, Any]:
    lat = run["latencies"]
    return {
        "requests": len(lat), "errors": run["errors"], "throughput_rps": round(len(lat) / run["wall_s"], 2),
        "p50_ms": _ms(lat, 50), "p99_ms": _ms(lat, 99), "mean_batch": round(statistics.fmean(run["batches"]), 2),
    }  # fmt: skip


def _deploy(ckpt: Path, backend: str, threads: int, max_batch: int, size: tuple[int, int], adaptive: bool) -> None:
    from ray import serve

    from services.serve.app import Endpoint
    from services.serve.deploy import deploy_model, deployment_status

    options = {"backend": backend, "threads": threads, "max_batch_size": max_batch, "warm_up_size": list(size),
               "adaptive_batching": adaptive}  # fmt: skip
    deploy_model("bench", str(ckpt), options, endpoint=Endpoint())
    deadline = time.monotonic() + 300
    while "RUNNING" not in deployment_status("bench")["status"] or _updating(serve):
        if time.monotonic() > deadline:
            raise RuntimeError(f"deployment did not become healthy: {deployment_status('bench')}")
        time.sleep(0.2)


def _updating(serve: Any) -> bool:
    app = serve.status().applications.get("hyctas-model-bench")
    return app is None or any("UPDATING" in str(d.status) for d in app.deployments.values())


def measure(args: argparse.Namespace) -> dict[str, Any]:
    h, w = (int(v) for v in args.size.lower().split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="hyctas-serve-bench-"))
    ckpt = _checkpoint(tmp)
    image = _street_scene((h, w), args.noise)
    buffer = io.BytesIO()
    Image.fromarray(image).save(
        buffer, format=args.format.upper(), **({"quality": 90} if args.format == "jpeg" else {})
    )
    png = buffer.getvalue()  # the request body (PNG or JPEG)
    in_process = _in_process(ckpt, image, args.seconds, args.threads)
    backend = args.backend or min(in_process, key=lambda b: in_process[b]["batch1_p50_ms"])

    import ray
    from ray import serve

    from services.serve.app import Endpoint
    from services.serve.deploy import ensure_gateway
    from services.serve.segmenter import Segmenter, SegmenterConfig

    port = free_port()
    from services.serve import ingress
    from services.worker.ray_init import init_ray

    init_ray(None, serve_ingress=args.ingress)  # a new local Ray, never a stale one's address
    via = ingress.active()
    try:
        ensure_gateway(Endpoint(), http_port=port)
        client = Client(f"http://127.0.0.1:{port}/segment/bench", png)
        _deploy(ckpt, backend, args.threads, 1, (h, w), True)
        warm = client.warm_up()
        local = Segmenter(SegmenterConfig(str(ckpt), backend=backend, threads=args.threads))
        local.warm_up((h, w))
        # One client, alternating rounds of in-process calls and endpoint requests.
        inproc: list[float] = []
        one: dict[str, list[Any]] = {"latencies": [], "model_ms": [], "timings": [], "batches": []}
        for _ in range(args.rounds):
            inproc += _timed(lambda: local.predict([image]), args.seconds / 2)
            run = client.run(1, args.seconds / 2)
            for key in one:
                one[key] += run[key]
        overhead = [1000 * t - m for t, m in zip(one["latencies"], one["model_ms"], strict=True)]
        answer = len(httpx.post(client.url, content=png, timeout=120).content)
        floor = http_floor(png, statistics.median(one["model_ms"]) / 1000, answer, args.seconds / 2)
        capacity = 1 / statistics.median(inproc)
        # Many clients, unbatched and batched, A-B-B-A.
        runs: dict[int, list[dict[str, Any]]] = {1: [], 8: []}
        plan: dict[str, Any] = {}
        for max_batch in [1, 8, 8, 1][: 4 if args.rounds > 1 else 2]:
            _deploy(ckpt, backend, args.threads, max_batch, (h, w), not args.force_batching)
            client.warm_up()
            if max_batch > 1:
                plan = httpx.post(client.url + "?output=json", content=png, timeout=120).json()["batching"]
            runs[max_batch].append(client.run(args.clients, args.seconds))
        rps = {b: sum(len(r["latencies"]) for r in rs) / sum(r["wall_s"] for r in rs) for b, rs in runs.items()}
        merged = {
            b: {k: [x for r in rs for x in r[k]] if isinstance(rs[0][k], list) else sum(r[k] for r in rs)
                for k in rs[0]}
            for b, rs in runs.items()
        }  # fmt: skip
        return {
            "benchmark": "serve",
            "overhead_ms_p50": round(float(np.percentile(overhead, 50)), 2),
            "overhead_ms_p99": round(float(np.percentile(overhead, 99)), 2),
            "throughput_vs_inprocess": round(rps[1] / capacity, 3),
            "batching_ratio": round(rps[8] / rps[1], 3),
            "endpoint_minus_inprocess_ms_p50": round(_ms(one["latencies"], 50) - _ms(inproc, 50), 2),
            "one_client": {
                "endpoint_p50_ms": _ms(one["latencies"], 50),
                "endpoint_p99_ms": _ms(one["latencies"], 99),
                "model_in_replica_p50_ms": round(float(np.percentile(one["model_ms"], 50)), 2),
                "in_process_p50_ms": _ms(inproc, 50),
                "in_process_p99_ms": _ms(inproc, 99),
                "requests": len(one["latencies"]),
                "in_process_calls": len(inproc),
            },  # fmt: skip
            "overhead_breakdown_ms_p50": {
                "outside_the_replica (client, HTTP, the proxy, the hop)": round(
                    float(
                        np.percentile(
                            [1000 * t - m["replica"] for t, m in zip(one["latencies"], one["timings"], strict=True)], 50
                        )
                    ),
                    2,
                ),
                **{
                    k: round(float(np.percentile([m[k] for m in one["timings"]], 50)), 2)
                    for k in one["timings"][0]
                    if k != "model"
                },
            },  # fmt: skip
            # The same client against a bare uvicorn server waiting the model's time: the part of
            # the overhead that any Python HTTP server pays on this machine.
            "http_floor": floor,
            "in_process_capacity_rps": round(capacity, 2),
            f"clients_{args.clients}": {
                "unbatched": {**_summary({**merged[1], "wall_s": sum(r["wall_s"] for r in runs[1])})},
                "batched": {**_summary({**merged[8], "wall_s": sum(r["wall_s"] for r in runs[8])})},
            },
            "batching_plan": plan,
            "warm_up_requests": warm,
            "backend": backend,
            "ingress": via,
            "request_format": args.format,
            "request_bytes": len(png),
            "in_process": in_process,
            "settings": {k: v for k, v in vars(args).items()},
            "machine": machine(),
        }
    finally:
        serve.shutdown()
        ray.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="256x512", help="HxW of the request images")
    parser.add_argument("--seconds", type=float, default=8.0, help="per measurement phase")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--format", default="png", choices=["png", "jpeg"], help="request image format")
    parser.add_argument("--noise", action="store_true", help="send uniform noise (worst-case PNG) instead of a scene")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of each comparison")
    parser.add_argument("--threads", type=int, default=2, help="model threads, in process and in the replica")
    parser.add_argument("--force-batching", action="store_true", help="batched: always batch (no adaptive_batching)")
    parser.add_argument("--backend", default=None, help="endpoint backend (default: the fastest in process)")
    parser.add_argument(
        "--ingress",
        default="auto",
        choices=["auto", "haproxy", "proxy"],
        help="how requests reach the replica (services.serve.ingress; default as deployed)",
    )
    parser.add_argument("--quick", action="store_true", help="toy sizes: a smoke run, not a measurement")
    args = parser.parse_args(argv)
    apply_quick(parser, args, QUICK)
    stdout = os.dup(1)
    os.dup2(2, 1)  # everything else (Ray, Serve, libraries) writes to stderr
    try:
        report = measure(args)
    finally:
        sys.stdout.flush()
    with os.fdopen(stdout, "w") as out:
        out.write(json.dumps(report, indent=1, allow_nan=False) + "\n")


if __name__ == "__main__":
    main()
