"""Load on the controller while a search runs: throughput, p50/p99, errors, and the search's slowdown.

Starts a Ray head, ``hyctas controller`` and one ``hyctas worker`` on loopback (PostgreSQL and
Redis from ``HYCTAS_DATABASE_URL`` / ``HYCTAS_REDIS_URL``, default the local servers; a
throw-away database is created and dropped), trains a tiny supernet, then runs the same search
twice: alone, and with ``--clients`` concurrent clients reading in a loop what a dashboard and
scripts read during a search: the search list, the search, its front, its individuals and the
job list. Prints one JSON object: throughput, p50 / p99 latency and errors of the reads, the
search's slowdown under them, and where the cores went (``client_cores``: the load generator,
an aiohttp session on uvloop in this process; ``controller_cores`` and its CPU per request) and
how the controller's read cache answered (``read_cache``: hits, reads shared with one in flight,
misses; ``--read-cache-s 0`` measures the routes without it).

    python benchmarks/service_load.py --clients 200 --controller-workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp  # installed with Ray; a load generator several times lighter per request than httpx
import httpx
import uvloop
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from services.ports import free_port

BIN = Path(sys.executable).parent


def _wait(fetch: Any, done: Any, timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = fetch()
        if done(body):
            return body
        if time.monotonic() > deadline:
            raise TimeoutError(str(body))
        time.sleep(0.5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=200, help="concurrent readers (asyncio, one connection each)")
    ap.add_argument("--controller-workers", type=int, default=1, help="uvicorn worker processes of the controller")
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--population", type=int, default=6)
    ap.add_argument(
        "--read-cache-s", type=float, default=None, help="HYCTAS_READ_CACHE_S of the controller (default: its default)"
    )
    args = ap.parse_args()

    db = make_url(os.environ.get("HYCTAS_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"))
    redis_url = os.environ.get("HYCTAS_REDIS_URL", "redis://127.0.0.1:6379/14")
    name = f"hyctas_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(db.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    tmp = Path(tempfile.mkdtemp(prefix="hyctas-bench-"))
    ray_port, port = free_port(), free_port()
    env = {
        **os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1",
        "HYCTAS_DATABASE_URL": db.set(database=name).render_as_string(hide_password=False),
        "HYCTAS_REDIS_URL": redis_url, "HYCTAS_STREAM": f"hyctas:bench:{name}",
        "HYCTAS_EVENTS_CHANNEL": f"hyctas:bench:events:{name}",
        "HYCTAS_ARTIFACT_DIR": str(tmp / "artifacts"), "HYCTAS_DATA_DIR": str(tmp),
    }  # fmt: skip
    if args.read_cache_s is not None:
        env["HYCTAS_READ_CACHE_S"] = str(args.read_cache_s)
    procs: list[subprocess.Popen[bytes]] = []
    log = open(tmp / "services.log", "ab")  # noqa: SIM115
    # Our own head, in its own process group: stopping it leaves any other Ray cluster alone.
    head = subprocess.Popen([BIN / "ray", "start", "--head", f"--port={ray_port}", "--num-cpus=2",
                             "--include-dashboard=false", "--disable-usage-stats", "--block"],
                            env=env, stdout=log, stderr=log, start_new_session=True)  # fmt: skip
    try:
        while not _listening(ray_port):
            time.sleep(0.5)
        time.sleep(2)
        workers = ["--workers", str(args.controller_workers)] if args.controller_workers != 1 else []
        procs.append(subprocess.Popen([BIN / "hyctas", "controller", "--port", str(port), "--log-level", "warning",
                                       *workers], env=env, stdout=log, stderr=log))  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        api_base = base + "/api/v1"
        _wait(lambda: {"ok": _ready(base)}, lambda b: b["ok"], 60)
        procs.append(subprocess.Popen([BIN / "hyctas", "worker", "--ray-address", f"127.0.0.1:{ray_port}",
                                       "--metrics-port", "0"], env=env, stdout=log, stderr=log))  # fmt: skip
        key = subprocess.run([BIN / "hyctas", "apikey", "create", "--user", "bench"], env=env, check=True,
                             capture_output=True, text=True).stdout.strip()  # fmt: skip
        headers = {"Authorization": f"Bearer {key}"}
        api = httpx.Client(base_url=base + "/api/v1", headers=headers, timeout=30)
        # Two supernets (seeds 0 and 1): the two searches do the same work and share no cached evaluation.
        supernets = [
            api.post("/supernets", json={
                "name": f"tiny-{seed}", "dataset": {"kind": "synthetic", "train": 8, "val": 4, "size": [64, 128]},
                "epochs": 1, "steps_per_epoch": 3, "batch_size": 2, "base_channels": 4, "num_layers": 6, "seed": seed,
            }).json()["id"]
            for seed in (0, 1)
        ]  # fmt: skip
        for sid in supernets:
            _wait(lambda sid=sid: api.get(f"/supernets/{sid}").json(), lambda b: b["state"] == "succeeded")
        search = {"objective": "flops", "population": args.population,
                  "generations": args.generations, "evaluation": {"calib_images": 2, "val_images": 2}}  # fmt: skip

        def run_search(label: str, clients: int, supernet_id: int) -> dict[str, Any]:
            body = {"name": label, "supernet_id": supernet_id, **search}
            search_id = api.post("/searches", json=body).json()["id"]
            paths = ["/searches", f"/searches/{search_id}", f"/searches/{search_id}/pareto",
                     f"/searches/{search_id}/individuals", "/jobs"]  # fmt: skip
            latencies: list[float] = []
            errors = 0
            error_kinds: dict[str, int] = {}
            stop = asyncio.Event()

            async def client(c: aiohttp.ClientSession, k: int) -> None:
                nonlocal errors
                i = k
                while not stop.is_set():
                    t0 = time.perf_counter()
                    try:
                        async with c.get(api_base + paths[i % len(paths)]) as r:
                            await r.read()
                            kind = "" if r.status == 200 else f"HTTP {r.status}"
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        kind = type(exc).__name__
                    latencies.append(time.perf_counter() - t0)
                    if kind:
                        errors += 1
                        error_kinds[kind] = error_kinds.get(kind, 0) + 1
                    i += 1

            async def load() -> dict[str, Any]:
                connector = aiohttp.TCPConnector(limit=clients + 1)
                timeout = aiohttp.ClientTimeout(total=60)
                async with aiohttp.ClientSession(headers=headers, connector=connector, timeout=timeout) as c:
                    tasks = [asyncio.create_task(client(c, k)) for k in range(clients)]
                    while True:
                        async with c.get(f"{api_base}/searches/{search_id}") as r:
                            body: dict[str, Any] = await r.json()
                        if body["state"] == "succeeded":
                            break
                        await asyncio.sleep(0.5)
                    stop.set()
                    await asyncio.gather(*tasks)
                    return body

            controller = procs[0].pid
            cache0 = _read_cache(base)
            t0, client0, server0 = time.perf_counter(), time.process_time(), _tree_cpu_s(controller)
            done = uvloop.run(load())
            wall = time.perf_counter() - t0
            client_s, server_s = time.process_time() - client0, _tree_cpu_s(controller) - server0
            out: dict[str, Any] = {
                "search_s": round(wall, 2),
                "mean_generation_s": done["timings"]["mean_generation_s"],
            }
            if latencies:
                q = statistics.quantiles(latencies, n=100)
                out.update(requests=len(latencies), throughput_rps=round(len(latencies) / wall, 1),
                           p50_ms=round(1000 * q[49], 2), p99_ms=round(1000 * q[98], 2), errors=errors,
                           error_kinds=error_kinds,
                           # Where the 2 cores went: the load generator (this process) and the
                           # controller's processes, in cores busy over the run and per request.
                           client_cores=round(client_s / wall, 2), controller_cores=round(server_s / wall, 2),
                           controller_cpu_ms_per_request=round(1000 * server_s / len(latencies), 2),
                           read_cache={k: v - cache0.get(k, 0) for k, v in _read_cache(base).items()})  # fmt: skip
            return out

        alone = run_search("alone", 0, supernets[0])
        loaded = run_search("loaded", args.clients, supernets[1])
        print(json.dumps({
            "benchmark": "service_load", "clients": args.clients, "population": args.population,
            "generations": args.generations, "cpu_count": os.cpu_count(), "alone": alone, "loaded": loaded,
            "search_slowdown": round(loaded["search_s"] / alone["search_s"], 3),
        }, indent=2))  # fmt: skip
    finally:
        for p in procs:
            p.kill()
            p.wait()
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(60)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` and its live descendants, from /proc."""
    total = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except (OSError, IndexError, ValueError):
        return total
    return total + sum(_tree_cpu_s(int(c)) for c in children)


def _read_cache(base: str) -> dict[str, int]:
    """The controller's read-cache counters (summed over its processes), by result."""
    text_ = httpx.get(base + "/metrics", timeout=10).text
    counts: dict[str, int] = {}
    for family in text_string_to_metric_families(text_):
        if family.name == "hyctas_http_read_cache":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    counts[sample.labels["result"]] = int(sample.value)
    return counts


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _ready(base: str) -> bool:
    try:
        return httpx.get(base + "/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    main()
