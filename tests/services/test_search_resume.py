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
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from hyctas_cli.main import app
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
        sys.executable, "-m", "hyctas_cli", "search", "--supernet", str(ckpt), "--data", str(root),
        "--objective", "flops", "--pop", "6", "--generations", "3", "--branches", "1,3", "--seed", "3",
        "--calib-images", "4", "--val-images", "4", "--latency-seconds", "0.05",
        "--db", f"sqlite:///{db}", "--name", "s", "--out", str(db.parent / "out"), *extra,
    ]  # fmt: skip


def _pareto(db: Path) -> dict[str, Any]:
    """``hyctas pareto --json`` of search "s" (in process: the CLI, without a second interpreter)."""
    result = CliRunner().invoke(app, ["pareto", "--db", f"sqlite:///{db}", "--search", "s", "--json"])
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def _front(db: Path) -> list[dict[str, object]]:
    data = _pareto(db)
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
    again = CliRunner().invoke(app, _cmd(setup, db, "--resume")[3:])  # in process: nothing left to compute
    assert again.exit_code == 0 and "already finished" in again.stdout


def test_bad_search_inputs_exit_2(setup: tuple[Path, Path], tmp_path: Path) -> None:
    root, ckpt = setup
    db = tmp_path / "x.db"
    base = ["search", "--db", f"sqlite:///{db}"]
    cases = [
        (["--supernet", str(ckpt), "--data", str(root), "--objective", "energy"], "unknown objective 'energy'"),
        (["--supernet", str(tmp_path / "none.pt"), "--data", str(root)], "does not exist"),
        (["--supernet", str(ckpt), "--data", str(tmp_path / "nodata")], "does not exist"),
        (["--resume", "--name", "ghost"], "no search named 'ghost'"),
        (["--supernet", str(ckpt), "--data", str(root), "--branches", "1,4"], "subset of 1, 2, 3"),
    ]
    runs = [(base + args, needle) for args, needle in cases]
    pg = "postgresql+psycopg://nobody@127.0.0.1:1/x"
    runs.append((["search", "--db", pg, "--supernet", str(ckpt), "--data", str(root)], "cannot connect"))
    for args, needle in runs:
        result = CliRunner().invoke(app, args)
        lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and needle in lines[0], (args, result.output)


@pytest.mark.slow
def test_verify_on_a_one_point_front_says_why_and_keeps_the_search(setup: tuple[Path, Path], tmp_path: Path) -> None:
    """This tiny supernet's cheapest network dominates: nothing to rank, said in one line, the front stands."""
    db = tmp_path / "v.db"
    proc = subprocess.run(
        _cmd(setup, db, "--verify", "3", "--verify-epochs", "1"), env=ENV, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "cannot verify: search 's' has 1 front point(s): nothing to rank"
    assert "Pareto front of 's' (1 archs, succeeded)" in proc.stdout
    data = _pareto(db)
    assert data["state"] == "succeeded" and len(data["front"]) == 1
    assert data["verification"]["state"] == "failed" and "nothing to rank" in data["verification"]["error"]


@pytest.mark.slow
def test_verify_retrains_front_points_and_reports_the_fidelity(setup: tuple[Path, Path], tmp_path: Path) -> None:
    """A finished search with a 5-point front and --verify 3 stored: `--resume` retrains 3 points and reports."""
    from hyctas_core.search import SearchConfig
    from hyctas_core.search_space import sample_arch
    from hyctas_core.storage import GenerationRecord, IndividualRecord, SearchState
    from hyctas_core.verify import VerifyConfig
    from services.storage.sql import SQLStorage

    root, ckpt = setup
    db = tmp_path / "f.db"
    rng = np.random.default_rng(1)
    archs = [sample_arch(rng, 6) for _ in range(5)]
    front = [
        IndividualRecord(0, a.hash, a.to_official(), a.num_branches,
                         {"miou": 0.01 * (i + 1), "latency_ms": 1.0 + i, "gmacs": 0.1, "params_m": 0.1})
        for i, a in enumerate(archs)
    ]  # fmt: skip
    with SQLStorage.connect(f"sqlite:///{db}", create=True) as storage:
        spec = {"supernet": str(ckpt), "data": str(root), "calib_images": 4, "val_images": 2, "latency_seconds": 0.05}
        config = {"search": SearchConfig(pop_size=6, generations=1, num_layers=6).to_dict(), "evaluator": spec}
        sid = storage.create_search("s", {**config, "verify": VerifyConfig(k=3, epochs=1, batch_size=4).to_dict()})
        storage.set_search_state(sid, SearchState.RUNNING)
        storage.commit_generation(sid, GenerationRecord(0, 0.1, [i.arch_hash for i in front], 5, 5, b"x"), front, [])
        storage.set_search_state(sid, SearchState.SUCCEEDED)
    proc = subprocess.run(_cmd(setup, db, "--resume"), env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "resuming its verification" in proc.stdout and "retrained mIoU %" in proc.stdout
    summary = [ln for ln in proc.stdout.splitlines() if ln.startswith("supernet fidelity:")]
    assert len(summary) == 2 and "over 3 retrained front points" in summary[0], proc.stdout  # the line and the caption
    data = _pareto(db)
    record = data["verification"]
    assert record["state"] == "succeeded" and record["k"] == record["done"] == 3 and record["epochs"] == 1
    assert [r["arch_hash"] for r in record["rows"]] == [front[0].arch_hash, front[2].arch_hash, front[4].arch_hash]
    assert [r["supernet_miou"] for r in record["rows"]] == [0.01, 0.03, 0.05]
    assert all(0.0 <= r["retrained_miou"] <= 1.0 for r in record["rows"])
    assert record["kendall_tau"] is None or -1.0 <= record["kendall_tau"] <= 1.0
    assert all((db.parent / "out" / "verify" / r["arch_hash"] / "last.pt").exists() for r in record["rows"])
    # Verified: a second resume retrains nothing.
    again = subprocess.run(_cmd(setup, db, "--resume"), env=ENV, capture_output=True, text=True)
    assert again.returncode == 0 and "nothing to resume" in again.stdout and "retrained mIoU %" in again.stdout
