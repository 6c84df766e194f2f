"""``hyctas controller --workers 2``: two processes serve one API and one set of metrics.

A real controller on loopback over a SQLite file and the test Redis (``integration``: fails in CI
when Redis is unreachable). Requests spread over both processes; the request counter a scrape
reports is the sum over them (prometheus multiprocess mode), not one process's share.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.ports import controller_ready, free_port

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


def _count(metrics: str, route: str) -> float:
    labels = r'\{[^}]*route="' + re.escape(route) + r'"[^}]*\}'
    pattern = re.compile(r"^hyctas_http_requests_total" + labels + r" ([0-9.e+]+)$", re.M)
    return sum(float(v) for v in pattern.findall(metrics))


def test_two_worker_processes_serve_one_api_and_sum_their_metrics(redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    suffix = uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        "HYCTAS_DATABASE_URL": f"sqlite:///{tmp_path / 'hyctas.db'}",
        "HYCTAS_REDIS_URL": redis_url,
        "HYCTAS_STREAM": f"hyctas:test:workers:{suffix}",
        "HYCTAS_EVENTS_CHANNEL": f"hyctas:test:workers:events:{suffix}",
        "HYCTAS_ARTIFACT_DIR": str(tmp_path / "artifacts"),
        "HYCTAS_DATA_DIR": str(tmp_path),
    }
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"stale")  # a previous run's file: wiped at start
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    proc = subprocess.Popen(
        [BIN / "hyctas", "controller", "--port", str(port), "--workers", "2", "--log-level", "warning"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            if controller_ready(base):
                break
            assert time.monotonic() < deadline, "the controller did not become ready"
            time.sleep(0.5)
        key = subprocess.run(
            [BIN / "hyctas", "apikey", "create", "--user", "alice", "--db", env["HYCTAS_DATABASE_URL"]],
            env=env, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        headers = {"Authorization": f"Bearer {key}"}
        n = 60
        for _ in range(n):  # a new connection each: the kernel spreads them over both processes
            assert httpx.get(base + "/api/v1/searches", headers=headers, timeout=10).status_code == 200
        # Both processes counted requests (one metric file each), and a scrape sums them.
        writers = {f.stem.rsplit("_", 1)[1] for f in metrics_dir.glob("counter_*.db")}
        assert len(writers) == 2 and "1" not in writers, writers
        scraped = [_count(httpx.get(base + "/metrics", timeout=10).text, "/api/v1/searches") for _ in range(6)]
        assert all(v == n for v in scraped), scraped  # every scrape sees every process's requests
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
