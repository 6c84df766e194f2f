"""A live controller over a seeded in-memory database, and Debian's headless Chromium driven by Playwright.

The server is uvicorn in a thread of this process, so tests reach the very storage and event
bus it serves: they commit generations and publish events while the page is open. Seeded:
alice has a small finished search (3 x 20), a running one (2 of 5 generations x 20) and one
with 5,000 individuals (20 x 250); bob has one search that alice must never see.

Chromium is ``/usr/bin/chromium`` (never ``playwright install``). If it is missing, a local run
tries ``apt-get install -y chromium`` and skips if that fails; under ``CI=true`` it fails.
"""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest
import uvicorn

from hyctas_core.search import OBJECTIVES, hypervolume
from hyctas_core.search_space import Arch, sample_arch
from hyctas_core.storage import GenerationRecord, IndividualRecord, SearchState
from services.auth import issue_api_key
from services.controller.main import create_app
from services.queue import InMemoryEventBus, InMemoryQueue
from services.settings import Settings
from services.storage.base import JobState
from services.storage.sql import SQLStorage
from tests.services.sqlite import sqlite_storage

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-quic",
]
INSTALL_CHROMIUM = (
    "command -v chromium || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)"
)
IN_CI = os.environ.get("CI") == "true"
ARTIFACTS = Path(__file__).resolve().parents[3] / "artifacts" / "dashboard"
NUM_LAYERS = 8  # cells per branch of the seeded archs (the supernet's depth)

SUPERNET = {
    "name": "tiny",
    "dataset": {"kind": "synthetic", "train": 8, "val": 4, "size": [64, 128]},
    "epochs": 1,
    "base_channels": 4,
    "num_layers": NUM_LAYERS,
}
# user: (search name, objective, population, generations, generations committed)
PLANS = {
    "alice": [
        ("cityscapes-lat", "latency", 20, 3, 3),  # finished
        ("edge-flops", "flops", 20, 5, 2),  # running: the live-update test commits more
        ("big-lat", "latency", 250, 20, 20),  # 5,000 individuals
    ],
    "bob": [("bob-secret", "latency", 20, 2, 2)],
}


@dataclass
class SeededSearch:
    id: int
    name: str
    job_id: int
    objective: str
    population: int
    generations: int  # total planned


@dataclass
class Dashboard:
    url: str
    storage: SQLStorage
    events: InMemoryEventBus
    alice_key: str
    bob_key: str
    searches: dict[str, SeededSearch] = field(default_factory=dict)
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(7))

    def api(self, path: str, key: str | None = None) -> Any:
        """GET ``/api/v1{path}`` as alice (or with ``key``)."""
        headers = {"Authorization": f"Bearer {key or self.alice_key}"}
        r = httpx.get(f"{self.url}/api/v1{path}", headers=headers, timeout=30)
        r.raise_for_status()
        return r.json()

    def api_schema(self) -> Any:
        return httpx.get(f"{self.url}/openapi.json", timeout=30).json()

    def commit_generation(self, name: str) -> GenerationRecord:
        """The search's next generation, as a worker would commit it (no event published)."""
        s = self.searches[name]
        return commit_generation(self.storage, s.id, OBJECTIVES[s.objective], s.population, self.rng)


# -- seeding -------------------------------------------------------------------------------------
OP_COST = {"skip": 0.0, "conv": 1.0, "conv_downup": 0.55, "conv_2x_downup": 0.35, "sa": 1.6}


def toy_objectives(arch: Arch, rng: np.random.Generator) -> dict[str, float]:
    """Plausible numbers that depend on the arch (a toy cost model, not a measurement)."""
    gmacs, params_m, n_sa = 0.4, 0.15, 0
    for branch in arch.branches:
        for cell, scale in zip(branch.cells, branch.in_scales, strict=True):
            work = OP_COST[cell.op] * cell.width_mult**2
            gmacs += 0.45 * work
            params_m += 0.012 * work * (scale / 8) ** 2  # channels grow with the stride
            n_sa += cell.op == "sa"
    latency_ms = max(0.5, 3.0 + 1.8 * gmacs + 0.9 * n_sa + 1.5 * arch.num_branches + rng.normal(0, 0.4))
    miou = 0.38 + 0.3 * (1 - math.exp(-gmacs / 3.5)) + 0.004 * n_sa + rng.normal(0, 0.015)
    return {
        "miou": round(min(max(miou, 0.05), 0.95), 4),
        "latency_ms": round(latency_ms, 3),
        "gmacs": round(gmacs, 3),
        "params_m": round(params_m, 3),
        "fps": round(1000 / latency_ms, 1),
    }


def front_of(individuals: list[IndividualRecord], cost_key: str) -> list[IndividualRecord]:
    """Non-dominated archs (max mIoU, min cost), by cost."""
    unique = {i.arch_hash: i for i in reversed(individuals)}
    ranked = sorted(unique.values(), key=lambda i: (i.objectives[cost_key], -i.objectives["miou"]))
    front, best = [], -math.inf
    for ind in ranked:
        if ind.objectives["miou"] > best:
            front.append(ind)
            best = ind.objectives["miou"]
    return front


def commit_generation(
    storage: SQLStorage, search_id: int, cost_key: str, n: int, rng: np.random.Generator
) -> GenerationRecord:
    """Sample ``n`` distinct archs, score them and commit them as the search's next generation."""
    index = storage.get_search(search_id).generation + 1
    archs: dict[str, Arch] = {}
    while len(archs) < n:
        arch = sample_arch(rng, NUM_LAYERS)
        archs.setdefault(arch.hash, arch)
    new = [
        IndividualRecord(index, h, a.to_official(), a.num_branches, toy_objectives(a, rng)) for h, a in archs.items()
    ]
    everything = storage.list_individuals(search_id) + new
    reference = storage.get_search(search_id).reference_point
    if reference is None:
        reference = [0.0, 1.1 * max(i.objectives[cost_key] for i in new)]
        storage.set_reference_point(search_id, reference)
    front = front_of(everything, cost_key)
    F = np.array([[-i.objectives["miou"], i.objectives[cost_key]] for i in front])
    record = GenerationRecord(
        index=index,
        hypervolume=hypervolume(F, reference),
        front=[i.arch_hash for i in front],
        n_evaluated=len({i.arch_hash for i in everything}),
        n_new=n,
        algorithm_state=b"",
        timings={"eval_s": 3.0 + rng.random(), "loop_s": 0.2},
    )
    storage.commit_generation(search_id, record, new, [])
    return record


def _seed(dash: Dashboard) -> None:
    """Supernets and searches through the API (as a user would), generations straight into storage."""
    with httpx.Client(base_url=f"{dash.url}/api/v1", timeout=30) as client:
        for user, key in (("alice", dash.alice_key), ("bob", dash.bob_key)):
            headers = {"Authorization": f"Bearer {key}"}
            r = client.post("/supernets", json=SUPERNET, headers=headers)
            assert r.status_code == 201, r.text
            supernet_id = int(r.json()["id"])
            dash.storage.start_job(supernet_id, "seed")
            dash.storage.finish_job(supernet_id, JobState.SUCCEEDED, result={"checkpoint": f"/ckpt/{user}.pt"})
            for name, objective, population, generations, committed in PLANS[user]:
                body = {
                    "name": name, "supernet_id": supernet_id, "objective": objective,
                    "population": population, "generations": generations,
                }  # fmt: skip
                r = client.post("/searches", json=body, headers=headers)
                assert r.status_code == 201, r.text
                made = r.json()
                search = SeededSearch(made["id"], name, made["job"]["id"], objective, population, generations)
                dash.searches[name] = search
                dash.storage.start_job(search.job_id, "seed-worker")
                dash.storage.set_search_state(search.id, SearchState.RUNNING)
                for _ in range(committed):
                    dash.commit_generation(name)
                if committed == generations:
                    dash.storage.set_search_state(search.id, SearchState.SUCCEEDED)
                    dash.storage.finish_job(search.job_id, JobState.SUCCEEDED, result={"search_id": search.id})


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium: installed if missing (locally), never Playwright's download."""
    if importlib.util.find_spec("playwright") is None:
        message = "playwright is not installed: pip install -e '.[dev]'"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    if not os.path.exists(CHROMIUM) and not IN_CI and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["bash", "-c", INSTALL_CHROMIUM], capture_output=True, timeout=900, check=False)
    if not os.path.exists(CHROMIUM):
        message = f"{CHROMIUM} is missing: `apt-get install -y chromium` (.ci/run does)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


@pytest.fixture(scope="session")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    """The controller on 127.0.0.1 (a free port), over a seeded in-memory database."""
    tmp = tmp_path_factory.mktemp("dashboard-controller")
    storage, events = sqlite_storage(), InMemoryEventBus()
    settings = Settings(artifact_dir=tmp, data_dir=tmp)
    app = create_app(settings, storage=storage, queue=InMemoryQueue(), events=events)
    # Every backend is injected, so the lifespan has nothing to open; off, it also leaves the
    # process-wide Prometheus registry alone (other tests' apps register their collector there).
    config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="dashboard-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the controller did not start")
        time.sleep(0.02)
    dash = Dashboard(
        f"http://127.0.0.1:{port}", storage, events, issue_api_key(storage, "alice"), issue_api_key(storage, "bob")
    )
    _seed(dash)
    yield dash
    server.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture(scope="module")
def browser(chromium: str, dashboard: Dashboard, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """Headless Chromium (closed before the server stops: it holds the event streams open).

    Module-scoped: Playwright's sync API keeps an asyncio loop running in the main thread while
    it is open, which would break every later test that calls ``asyncio.run``.
    """
    from playwright.sync_api import sync_playwright

    home = tmp_path_factory.mktemp("chromium-home")
    env = {**os.environ, "XDG_CONFIG_HOME": str(home / "config"), "XDG_CACHE_HOME": str(home / "cache")}
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, env=env)
        yield launched
        launched.close()


@dataclass
class Tab:
    page: Page
    errors: list[str]  # uncaught exceptions and console errors
    responses: list[tuple[str, int]]  # (url, status) of every response
    offsite: list[str]  # requests that left the controller's origin (must stay empty)

    def api_successes(self) -> list[str]:
        return [url for url, code in self.responses if "/api/v1/" in url and 200 <= code < 300]


@pytest.fixture
def tab(browser: Browser, dashboard: Dashboard) -> Iterator[Tab]:
    """A fresh browser context (its own sessionStorage) with one page."""
    context = browser.new_context(viewport={"width": 1440, "height": 960}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(15_000)
    tab = Tab(page, [], [], [])
    page.on("pageerror", lambda exc: tab.errors.append(f"pageerror: {exc}"))
    page.on("console", lambda msg: tab.errors.append(f"console: {msg.text}") if msg.type == "error" else None)
    page.on("response", lambda r: tab.responses.append((r.url, r.status)))
    page.on(
        "request",
        lambda r: None if r.url.startswith((dashboard.url, "data:", "blob:")) else tab.offsite.append(r.url),
    )
    yield tab
    context.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Screenshots and render timings land here (kept by CI; ignored by git)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
