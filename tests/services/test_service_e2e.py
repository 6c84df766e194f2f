"""The whole service over HTTP, against PostgreSQL, Redis and a Ray head on 127.0.0.1.

Processes: ``ray start --head``, ``hyctas controller`` (uvicorn) and ``hyctas worker`` (one or
two), each a subprocess with its own environment (a throw-away database, a unique stream and
channel). The test kills a worker with SIGKILL in the middle of a search and restarts the
controller; the search must end exactly as an uninterrupted run with the same seed ends.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from services.serve import ingress
from tests.ports import controller_ready, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

IN_CI = os.environ.get("CI", "").lower() == "true"
HYCTAS = str(Path(sys.executable).with_name("hyctas"))
RAY = str(Path(sys.executable).with_name("ray"))


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


class Stack:
    """Starts and stops the service processes of one test."""

    def __init__(self, env: dict[str, str], tmp: Path, ray_address: str) -> None:
        self.env = env
        self.tmp = tmp
        self.ray_address = ray_address
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.controller: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []

    def _log(self, name: str) -> Any:
        return open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child process

    def start_controller(self) -> None:
        self.controller = subprocess.Popen(
            [HYCTAS, "controller", "--port", str(self.port), "--log-level", "warning"],
            env=self.env, stdout=self._log("controller"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 120  # a loaded 2-core runner can take a minute to import and migrate
        while time.monotonic() < deadline:
            assert self.controller.poll() is None, (self.tmp / "controller.log").read_text()[-2000:]
            if controller_ready(self.base):
                return
            time.sleep(0.3)
        raise AssertionError("controller did not become ready")

    def stop_controller(self) -> None:
        assert self.controller is not None
        self.controller.terminate()
        self.controller.wait(20)

    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [HYCTAS, "worker", "--ray-address", self.ray_address, "--name", name, "--metrics-port", "0"],
            env=self.env, stdout=self._log(name), stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.workers.append(proc)
        return proc

    def close(self) -> None:
        for proc in [*self.workers, *([self.controller] if self.controller else [])]:
            if proc.poll() is None:
                proc.kill()
                proc.wait(20)


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Ray head of our own (``ray start --head --block`` in its own process group), stopped afterwards.

    Only this head is stopped (SIGTERM to its group): a Ray cluster the developer runs is left alone.
    """
    port = free_port()
    # Serve's HAProxy (where the environment turns it on) binds fixed metrics and stats ports
    # unless told otherwise: free ones, so that no other HAProxy on the machine is in the way.
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", **ingress.listener_ports()}
    log = open(tmp_path_factory.mktemp("ray") / "head.log", "wb")  # noqa: SIM115 - owned by the child
    head = subprocess.Popen(
        [RAY, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
         "--disable-usage-stats", "--block"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:  # up once the GCS accepts connections
            assert head.poll() is None, "ray start --head exited"
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "the Ray head did not come up"
            time.sleep(0.5)
        time.sleep(2)  # let the raylet register with the GCS
        yield f"127.0.0.1:{port}"
    finally:
        # SIGTERM, then SIGKILL: a graceful `ray stop` of a head whose drivers were killed takes
        # about 30 s; the group holds every process of this head and nothing else.
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(10)
        log.close()
        # A killed head can leave its Serve's HAProxy to init, holding the ports (not in the group)
        ingress.stop_orphaned_haproxies()


@pytest.fixture
def stack(ray_head: str, tmp_path: Path) -> Iterator[Stack]:
    db_base, redis_url = os.environ.get("TEST_DATABASE_URL"), os.environ.get("TEST_REDIS_URL")
    if not db_base or not redis_url:
        _unavailable("TEST_DATABASE_URL and TEST_REDIS_URL must be set")
        return
    parsed = make_url(db_base)
    name = f"hyctas_e2e_{uuid.uuid4().hex[:10]}"
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - any connection failure
        admin.dispose()
        _unavailable(f"PostgreSQL unavailable: {exc}")
        return
    suffix = uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "OMP_NUM_THREADS": "1",
        "HYCTAS_DATABASE_URL": parsed.set(database=name).render_as_string(hide_password=False),
        "HYCTAS_REDIS_URL": redis_url,
        "HYCTAS_STREAM": f"hyctas:test:jobs:{suffix}",
        "HYCTAS_EVENTS_CHANNEL": f"hyctas:test:events:{suffix}",
        "HYCTAS_ARTIFACT_DIR": str(tmp_path / "artifacts"),
        "HYCTAS_DATA_DIR": str(tmp_path / "data"),
        "HYCTAS_LEASE_S": "4",
        "HYCTAS_SERVE_PORT": str(free_port()),
        "HYCTAS_HEARTBEAT_S": "0.5",
    }
    s = Stack(env, tmp_path, ray_head)
    try:
        yield s
    finally:
        s.close()
        import redis

        r = redis.Redis.from_url(redis_url)
        r.delete(env["HYCTAS_STREAM"])
        r.close()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _key(stack: Stack, user: str) -> dict[str, str]:
    out = subprocess.run([HYCTAS, "apikey", "create", "--user", user], env=stack.env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return {"Authorization": f"Bearer {out.stdout.strip()}"}


def _wait(
    fetch: Callable[[], dict[str, Any]], done: Callable[[dict[str, Any]], bool], timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = fetch()
        if done(body):
            return body
        assert time.monotonic() < deadline, f"timed out; last: {body}"
        time.sleep(0.5)


TINY_SUPERNET = {
    "name": "tiny", "dataset": {"kind": "synthetic", "train": 8, "val": 4, "size": [64, 128]},
    "batch_size": 2, "base_channels": 4, "num_layers": 6,
}  # fmt: skip


def _trained_tiny_supernet(client: httpx.Client, headers: dict[str, str]) -> int:
    """A two-step supernet, trained by whichever worker runs; its id."""
    r = client.post("/supernets", headers=headers, json={**TINY_SUPERNET, "epochs": 1, "steps_per_epoch": 2})
    assert r.status_code == 201, r.text
    sid = int(r.json()["id"])
    _wait(lambda: client.get(f"/supernets/{sid}", headers=headers).json(), lambda b: b["state"] in FINISHED, 240)
    return sid


SEARCH = {"objective": "flops", "population": 6, "generations": 4, "seed": 3,
          "evaluation": {"calib_images": 2, "val_images": 2}}  # fmt: skip
FINISHED = ("succeeded", "failed", "cancelled")


def test_end_to_end_with_a_killed_worker_and_a_restarted_controller(stack: Stack) -> None:
    stack.start_controller()
    alice, bob = _key(stack, "alice"), _key(stack, "bob")
    client = httpx.Client(base_url=stack.base + "/api/v1", timeout=10)
    worker_a = stack.start_worker("worker-a")

    # A tiny supernet (25 epochs of 4 steps); kill -9 its worker after the first checkpoint (step 20):
    # another worker resumes it from there.
    r = client.post("/supernets", headers=alice, json={**TINY_SUPERNET, "epochs": 25})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    _wait(
        lambda: client.get(f"/supernets/{sid}", headers=alice).json(),
        lambda b: (b["progress"] or {}).get("step", 0) >= 20,
        240,
    )
    trainer_a = worker_a
    trainer_a.send_signal(signal.SIGKILL)
    trainer_a.wait(10)
    worker_a = stack.start_worker("worker-a2")
    supernet = _wait(
        lambda: client.get(f"/supernets/{sid}", headers=alice).json(), lambda b: b["state"] in FINISHED, 240
    )
    assert supernet["state"] == "succeeded", supernet
    assert Path(supernet["checkpoint"]).exists()
    job = client.get(f"/jobs/{sid}", headers=alice).json()
    assert job["attempts"] == 2 and job["worker"] == "worker-a2" and job["result"]["steps"] == 100
    assert job["progress"]["resumed"] is True  # from last.pt (step 20 or 40), not from scratch

    # A search; kill -9 its worker once a generation is committed.
    r = client.post("/searches", headers=alice, json={"name": "killed", "supernet_id": sid, **SEARCH})
    assert r.status_code == 201, r.text
    killed = r.json()["id"]
    _wait(lambda: client.get(f"/searches/{killed}", headers=alice).json(), lambda b: b["generation"] >= 1, 240)
    worker_a.send_signal(signal.SIGKILL)
    worker_a.wait(10)
    before = client.get(f"/searches/{killed}", headers=alice).json()
    assert before["state"] == "running" and before["generation"] < 4

    # Restart the controller while nobody runs the search: the API reports the same state.
    stack.stop_controller()
    stack.start_controller()
    again = client.get(f"/searches/{killed}", headers=alice).json()
    assert (again["state"], again["generation"], again["hypervolume"]) == (
        before["state"], before["generation"], before["hypervolume"]
    )  # fmt: skip

    # A second worker takes the job over after the lease and finishes it.
    stack.start_worker("worker-b")
    done = _wait(lambda: client.get(f"/searches/{killed}", headers=alice).json(), lambda b: b["state"] in FINISHED, 300)
    assert done["state"] == "succeeded", done
    assert done["generation"] == done["total_generations"] == 4
    assert done["job"]["attempts"] == 2 and done["job"]["worker"] == "worker-b"

    # The same search without interruption, verified afterwards: the same front, no generation lost
    # or repeated, and a verify job (after the search) retrains front points and stores the fidelity.
    verify = {"verify_top_k": 3, "verify_epochs": 1}
    r = client.post("/searches", headers=alice, json={"name": "clean", "supernet_id": sid, **SEARCH, **verify})
    clean = r.json()["id"]
    _wait(lambda: client.get(f"/searches/{clean}", headers=alice).json(), lambda b: b["state"] in FINISHED, 300)
    verified = _wait(
        lambda: client.get(f"/searches/{clean}", headers=alice).json(),
        lambda b: (b["verification"] or {}).get("state") in ("succeeded", "failed"),
        300,
    )
    fronts = [client.get(f"/searches/{i}/pareto", headers=alice).json() for i in (killed, clean)]
    record = verified["verification"]
    verify_job = client.get(f"/jobs/{record['job_id']}", headers=alice).json()
    assert verify_job["kind"] == "verify" and verify_job["state"] == "succeeded", verify_job
    if len(fronts[1]["data"]) >= 2:
        assert record["state"] == "succeeded" and record["k"] == record["done"] == min(3, len(fronts[1]["data"]))
        front_hashes = {p["arch_hash"] for p in fronts[1]["data"]}
        assert all(row["arch_hash"] in front_hashes and 0 <= row["retrained_miou"] <= 1 for row in record["rows"])
    else:  # this tiny supernet's cheapest network may dominate everything: nothing to rank, said so
        assert record["state"] == "failed" and "nothing to rank" in record["error"]
    assert [p["arch_hash"] for p in fronts[0]["data"]] == [p["arch_hash"] for p in fronts[1]["data"]]
    assert [p["objectives"]["miou"] for p in fronts[0]["data"]] == [p["objectives"]["miou"] for p in fronts[1]["data"]]
    assert fronts[0]["hypervolume"] == fronts[1]["hypervolume"]
    gens = client.get(f"/searches/{killed}/generations", headers=alice).json()
    assert [g["index"] for g in gens["data"]] == [0, 1, 2, 3]
    for k in range(4):
        individuals = client.get(f"/searches/{killed}/individuals?generation={k}", headers=alice).json()
        assert individuals["count"] == SEARCH["population"]

    # Two users: Bob sees nothing of Alice's and cannot touch it.
    assert client.get(f"/searches/{killed}", headers=bob).status_code == 404
    assert client.post(f"/searches/{killed}/cancel", headers=bob).status_code == 404
    assert client.get("/searches", headers=bob).json()["count"] == 0
    assert client.get("/searches", headers=alice).json()["count"] == 2
    metrics = httpx.get(stack.base + "/metrics").text
    assert 'hyctas_jobs{state="succeeded"} 4.0' in metrics  # supernet, two searches, one verification

    # Retrain the front's first point (a Ray Tune trial), deploy it on Ray Serve, segment an image.
    point = fronts[0]["data"][0]
    r = client.post("/models", headers=alice, json={
        "archs": [{"name": "knee", "search_id": killed, "arch_hash": point["arch_hash"]}], "supernet_id": sid,
        "epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "val_images": 2,
    })  # fmt: skip
    assert r.status_code == 201, r.text
    model_id = r.json()["data"][0]["id"]
    model = _wait(
        lambda: client.get(f"/models/{model_id}", headers=alice).json(), lambda b: b["state"] in FINISHED, 300
    )
    assert model["state"] == "succeeded", model
    assert {"miou", "params_m", "gmacs", "fps"} <= set(model["metrics"]) and model["arch_hash"] == point["arch_hash"]
    r = client.post(f"/models/{model_id}/deploy", headers=alice, json={"name": "knee", "backend": "torch"})
    assert r.status_code == 202, r.text
    deployed = _wait(
        lambda: client.get("/deployments/knee", headers=alice).json(), lambda b: b["state"] != "deploying", 300
    )
    assert deployed["state"] == "running", deployed
    image = io.BytesIO()
    Image.fromarray(np.full((64, 128, 3), 120, np.uint8)).save(image, format="PNG")
    serve_url = f"http://127.0.0.1:{stack.env['HYCTAS_SERVE_PORT']}/segment/knee"
    seg = httpx.post(serve_url, content=image.getvalue(), headers=alice, timeout=60)
    assert seg.status_code == 200, seg.text
    assert np.asarray(Image.open(io.BytesIO(seg.content))).shape == (64, 128)
    assert httpx.post(serve_url, content=image.getvalue(), headers=bob, timeout=60).status_code == 404
    assert client.delete("/deployments/knee", headers=alice).status_code == 202
    _wait(lambda: {"code": client.get("/deployments/knee", headers=alice).status_code}, lambda b: b["code"] == 404, 120)


def test_cancel_stops_a_running_search(stack: Stack) -> None:
    stack.start_controller()
    alice = _key(stack, "alice")
    client = httpx.Client(base_url=stack.base + "/api/v1", timeout=10)
    stack.start_worker("worker-c")
    sid = _trained_tiny_supernet(client, alice)
    r = client.post("/searches", headers=alice, json={"name": "c", "supernet_id": sid, **SEARCH, "generations": 50})
    search_id = r.json()["id"]
    _wait(lambda: client.get(f"/searches/{search_id}", headers=alice).json(), lambda b: b["generation"] >= 1, 240)
    assert client.post(f"/searches/{search_id}/cancel", headers=alice).json()["state"] == "cancelled"
    job = _wait(
        lambda: client.get(f"/searches/{search_id}", headers=alice).json()["job"],
        lambda j: j["state"] == "cancelled" and (time.sleep(3) or True), 30,
    )  # fmt: skip
    stopped_at = client.get(f"/searches/{search_id}", headers=alice).json()["generation"]
    time.sleep(3)
    assert client.get(f"/searches/{search_id}", headers=alice).json()["generation"] == stopped_at  # nothing more
    assert stopped_at < 50 and job["state"] == "cancelled"
    assert client.post(f"/searches/{search_id}/cancel", headers=alice).status_code == 409


def test_five_kills_never_fail_a_search_and_sigterm_hands_back_at_once(stack: Stack) -> None:
    """One search; its worker is `kill -9`ed five times at seeded random moments (default
    HYCTAS_MAX_ATTEMPTS=3): it still finishes, with the front of an uninterrupted run. Then a
    SIGTERM: the worker exits promptly and its job is QUEUED again at once, not after the lease."""
    stack.start_controller()
    alice = _key(stack, "alice")
    client = httpx.Client(base_url=stack.base + "/api/v1", timeout=10)
    first = stack.start_worker("w0")
    sid = _trained_tiny_supernet(client, alice)
    body = {**SEARCH, "generations": 6, "supernet_id": sid}
    killed = client.post("/searches", headers=alice, json={"name": "killed", **body}).json()["id"]
    rng = np.random.default_rng(5)
    worker = first
    for i in range(5):
        _wait(lambda: client.get(f"/searches/{killed}", headers=alice).json()["job"],
              lambda j, name=f"w{i}": j["state"] == "running" and j["worker"] == name, 120)  # fmt: skip
        time.sleep(float(rng.uniform(0.2, 3.0)))  # mid-evaluation, mid-commit, or mid-start
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        worker = stack.start_worker(f"w{i + 1}")
    done = _wait(lambda: client.get(f"/searches/{killed}", headers=alice).json(), lambda b: b["state"] in FINISHED, 600)
    assert done["state"] == "succeeded", done
    job = done["job"]
    assert job["failures"] == 0 and job["attempts"] >= 2, job  # takeovers (some kills may land between claims)
    clean = client.post("/searches", headers=alice, json={"name": "clean", **body}).json()["id"]
    _wait(lambda: client.get(f"/searches/{clean}", headers=alice).json(), lambda b: b["state"] in FINISHED, 600)
    fronts = [client.get(f"/searches/{s}/pareto", headers=alice).json()["data"] for s in (killed, clean)]
    assert [p["arch_hash"] for p in fronts[0]] == [p["arch_hash"] for p in fronts[1]]
    assert [p["objectives"]["miou"] for p in fronts[0]] == [p["objectives"]["miou"] for p in fronts[1]]

    # SIGTERM while a search runs: the worker exits within the grace period, the job is handed back.
    long = client.post("/searches", headers=alice, json={"name": "long", **body, "generations": 50}).json()["id"]
    _wait(lambda: client.get(f"/searches/{long}", headers=alice).json(), lambda b: b["generation"] >= 1, 240)
    t0 = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(60) == 0
    job = _wait(lambda: client.get(f"/searches/{long}", headers=alice).json()["job"],
                lambda j: j["state"] == "queued", 10)  # fmt: skip
    assert job["worker"] is None and time.monotonic() - t0 < 60
    stack.start_worker("after-sigterm")
    resumed = _wait(lambda: client.get(f"/searches/{long}", headers=alice).json()["job"],
                    lambda j: j["state"] == "running" and j["worker"] == "after-sigterm", 60)  # fmt: skip
    assert resumed["failures"] == 0
    client.post(f"/searches/{long}/cancel", headers=alice)
