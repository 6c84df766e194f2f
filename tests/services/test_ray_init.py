"""Starting Ray never hangs: a stale cluster file is ignored, an unreachable cluster fails in time, in one line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HYCTAS = str(Path(sys.executable).with_name("hyctas"))


@pytest.fixture
def ray_tmp() -> Iterator[Path]:
    """A private Ray temp dir with a short path (Ray's socket paths must stay under 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="hr", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _env(ray_tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, "RAY_TMPDIR": str(ray_tmp), "PYTHONPATH": str(ROOT), **extra}


@pytest.mark.slow
def test_a_stale_cluster_file_is_ignored(ray_tmp: Path) -> None:
    """The file names a dead cluster: plain ray.init() would retry for minutes; init_ray starts its own Ray."""
    (ray_tmp / "ray").mkdir()
    (ray_tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:1")
    code = (
        "import ray; from services.worker.ray_init import init_ray; "
        "print(init_ray(timeout_s=90, num_cpus=1)); print(ray.is_initialized()); "
        "print(ray.get(ray.remote(lambda: 41 + 1).remote())); ray.shutdown()"
    )
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], env=_env(ray_tmp), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["True", "True", "42"] and time.monotonic() - start < 90  # and it runs tasks


@pytest.mark.slow
def test_a_worker_whose_ray_cannot_start_exits_2_in_time_with_one_line(
    tmp_path: Path, ray_tmp: Path, redis_url: str
) -> None:
    """`hyctas worker --ray-address` of nothing: exit 2 within the timeout, one line, before claiming a job."""
    env = _env(
        ray_tmp,
        HYCTAS_RAY_INIT_TIMEOUT_S="5",
        HYCTAS_DATABASE_URL=f"sqlite:///{tmp_path / 'w.db'}",
        HYCTAS_REDIS_URL=redis_url,
        HYCTAS_STREAM=f"hyctas:test-ray-init:{os.getpid()}",
        HYCTAS_WORKER_METRICS_PORT="0",
    )
    start = time.monotonic()
    proc = subprocess.run(
        [HYCTAS, "worker", "--ray-address", "127.0.0.1:1"], env=env, capture_output=True, text=True, timeout=120
    )
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith(("20", "["))]
    assert proc.returncode == 2, proc.stderr[-2000:]
    # Within the 5 s deadline plus start-up, not the ~40 s Ray's C++ client blocks on a dead GCS.
    assert time.monotonic() - start < 30
    assert lines and lines[-1].startswith("error: ") and "Ray at 127.0.0.1:1" in lines[-1], proc.stderr[-2000:]


@pytest.mark.slow
def test_a_killed_workers_ray_processes_do_not_outlive_it(tmp_path: Path, ray_tmp: Path, redis_url: str) -> None:
    """`kill -9` of `hyctas worker` (its own local Ray): within seconds none of its processes is left."""
    from services.worker.reaper import descendants

    env = _env(
        ray_tmp,
        HYCTAS_DATABASE_URL=f"sqlite:///{tmp_path / 'w.db'}",
        HYCTAS_REDIS_URL=redis_url,
        HYCTAS_STREAM=f"hyctas:test-reaper:{os.getpid()}",
        HYCTAS_WORKER_METRICS_PORT="0",
    )
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen([HYCTAS, "worker"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while "waiting for jobs" not in log.read_text():
            assert worker.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)
        time.sleep(2)  # let Ray's agents come up
        procs = descendants(worker.pid)
        names = " ".join(Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace") for pid, _ in procs)
        assert "raylet" in names and "gcs_server" in names, names[:500]
        worker.kill()
        worker.wait(10)
        deadline = time.monotonic() + 20
        while True:
            alive = [p for p in procs if Path(f"/proc/{p[0]}").exists() and _state(p[0]) not in ("Z", None)]
            if not alive or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert alive == [], f"left behind: {alive}"
    finally:
        if worker.poll() is None:
            worker.kill()


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def test_the_address_is_probed_until_the_deadline() -> None:
    """``host:port`` and ``ray://host:port`` are probed by TCP; a head that starts listening late is
    waited for, and an address where nothing listens fails at the deadline with the reason."""
    import socket
    import threading

    from services.worker.ray_init import RayStartError, _endpoint, _wait_for_listener, init_ray

    assert _endpoint("10.0.0.5:6379") == ("10.0.0.5", 6379)
    assert _endpoint("ray://head:10001") == ("head", 10001)
    assert _endpoint("[::1]:6379") == ("::1", 6379)
    assert _endpoint("auto") is None and _endpoint("local") is None
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    late = socket.socket()

    def listen_late() -> None:
        time.sleep(0.6)
        late.bind(("127.0.0.1", port))
        late.listen()

    opener = threading.Thread(target=listen_late)
    opener.start()
    try:
        start = time.monotonic()
        assert _wait_for_listener("127.0.0.1", port, start + 20) is None
        assert 0.5 < time.monotonic() - start < 10
    finally:
        opener.join()
        late.close()
    start = time.monotonic()
    with pytest.raises(RayStartError, match=r"Ray at 127\.0\.0\.1:1 did not answer within 1 s \(Connection refused"):
        init_ray("127.0.0.1:1", timeout_s=1)
    assert time.monotonic() - start < 5
