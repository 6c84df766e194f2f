"""`hyctas search` end to end on SQLite: SIGKILL at generation k, resume, identical front."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hyctas_core.config import ModelConfig
from hyctas_core.data.cityscapes import CityscapesDataset
from hyctas_core.data.transforms import SegTransform
from hyctas_core.train import SupernetTrainConfig, SupernetTrainer
from tests.fixtures import write_cityscapes

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = write_cityscapes(tmp_path_factory.mktemp("data"), train=8, val=4, size=(64, 128))
    cfg = SupernetTrainConfig(
        model=ModelConfig(base_channels=4, num_layers=6, num_classes=19), epochs=1, batch_size=4, crop_size=(64, 128)
    )
    run = tmp_path_factory.mktemp("supernet")
    SupernetTrainer(cfg, CityscapesDataset(root, "train", transform=SegTransform(crop_size=(64, 128))), run).fit()
    return root, run / "supernet.pt"


def _cmd(setup: tuple[Path, Path], db: Path, *extra: str) -> list[str]:
    root, ckpt = setup
    return [
        sys.executable, "-m", "hyctas_core.cli", "search", "--supernet", str(ckpt), "--data", str(root),
        "--objective", "flops", "--pop", "6", "--generations", "3", "--branches", "1,3", "--seed", "3",
        "--calib-images", "4", "--val-images", "4", "--latency-seconds", "0.05",
        "--db", f"sqlite:///{db}", "--name", "s", "--out", str(db.parent / "out"), *extra,
    ]  # fmt: skip


def _front(db: Path) -> list[dict[str, object]]:
    proc = subprocess.run(
        [sys.executable, "-m", "hyctas_core.cli", "pareto", "--db", f"sqlite:///{db}", "--search", "s", "--json"],
        capture_output=True, text=True, env=ENV, check=True,
    )  # fmt: skip
    data = json.loads(proc.stdout)
    assert data["state"] == "succeeded" and data["generation"] == 5
    # The search decides on mIoU and GMACs (objective "flops"), both deterministic; the
    # measured latency stored beside them is wall-clock and differs from run to run.
    keys = ("miou", "gmacs", "params_m")
    return [{"hash": f["arch_hash"], **{k: f["objectives"][k] for k in keys}} for f in data["front"]]


def _committed(db: Path) -> int:
    if not db.exists():
        return -2
    try:
        with sqlite3.connect(db, timeout=1) as conn:
            row = conn.execute("SELECT generation FROM searches WHERE name = 's'").fetchone()
    except sqlite3.Error:
        return -2
    return -2 if row is None else int(row[0])


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_same_front(setup: tuple[Path, Path], tmp_path: Path) -> None:
    ref_db = tmp_path / "ref" / "ref.db"
    ref_db.parent.mkdir()
    subprocess.run(_cmd(setup, ref_db), env=ENV, check=True, capture_output=True)
    reference = _front(ref_db)
    assert reference
    for k in (0, 2, 4):  # killed during generation k (1-branch phase = gens 0-2, 3-branch phase = gens 3-5)
        db = tmp_path / f"kill{k}" / "k.db"
        db.parent.mkdir()
        proc = subprocess.Popen(_cmd(setup, db), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while _committed(db) < k - 1 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "the search ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert _committed(db) <= k  # killed before finishing
        resumed = subprocess.run(_cmd(setup, db, "--resume"), env=ENV, capture_output=True, text=True)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert "resuming" in resumed.stdout
        assert _front(db) == reference, f"front differs after a kill during generation {k}"
    again = subprocess.run(_cmd(setup, db, "--resume"), env=ENV, capture_output=True, text=True)
    assert again.returncode == 0 and "already finished" in again.stdout


def test_bad_search_inputs_exit_2(setup: tuple[Path, Path], tmp_path: Path) -> None:
    root, ckpt = setup
    db = tmp_path / "x.db"
    base = [sys.executable, "-m", "hyctas_core.cli", "search", "--db", f"sqlite:///{db}"]
    cases = [
        (["--supernet", str(ckpt), "--data", str(root), "--objective", "energy"], "unknown objective 'energy'"),
        (["--supernet", str(tmp_path / "none.pt"), "--data", str(root)], "does not exist"),
        (["--supernet", str(ckpt), "--data", str(tmp_path / "nodata")], "does not exist"),
        (["--resume", "--name", "ghost"], "no search named 'ghost'"),
        (["--supernet", str(ckpt), "--data", str(root), "--branches", "1,4"], "subset of 1, 2, 3"),
    ]
    for args, needle in cases:
        proc = subprocess.run(base + args, capture_output=True, text=True, env=ENV)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], (args, proc.stderr)
    proc = subprocess.run(
        [sys.executable, "-m", "hyctas_core.cli", "search", "--db", "postgresql+psycopg://nobody@127.0.0.1:1/x",
         "--supernet", str(ckpt), "--data", str(root)],
        capture_output=True, text=True, env=ENV, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and "cannot connect" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
