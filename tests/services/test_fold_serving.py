"""``hyctas latency fold-serving``: what served models measured calibrates the latency table."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from hyctas_cli.main import app
from hyctas_core.latency import LatencyTable, LookupTableLatency, build_table
from hyctas_core.presets import get_preset
from hyctas_core.retrain import load_model
from services.storage.base import JobState
from tests.fixtures import tiny_retrained
from tests.services.sqlite import sqlite_url


def test_served_latency_folds_into_the_table_of_its_device(tmp_path: Path) -> None:
    checkpoint, _ = tiny_retrained(tmp_path)
    _, arch, cfg = load_model(checkpoint)
    size = (64, 128)
    path = tmp_path / "cpu.json"
    build_table(cfg.model, size, duration_s=0.0, min_runs=1, device_class="cpu").save(path)
    predicted = LookupTableLatency(LatencyTable.load(path)).predict(arch)
    url = sqlite_url(tmp_path)
    from services.storage import SQLStorage

    storage = SQLStorage(url)
    mid = storage.create_model("s", get_preset("hyctas-s").to_official(), arch.hash, owner="alice")
    storage.update_model(mid, state=JobState.RUNNING)
    storage.update_model(mid, state=JobState.SUCCEEDED, checkpoint_uri=f"file://{checkpoint}")
    report = {"input_size": list(size), "requests": 50, "p50_ms": 3 * predicted, "p90_ms": 4 * predicted,
              "mean_ms": 3 * predicted, "mean_batch": 1.0, "device_class": "cpu"}  # fmt: skip
    reports = {
        "good": report,
        "few": {**report, "requests": 5},
        "other-size": {**report, "input_size": [128, 256]},
        "other-device": {**report, "device_class": "V100"},
    }
    for name, rep in reports.items():
        storage.record_serving_latency(storage.create_deployment(name, mid, {}, owner="alice"), rep)
    storage.create_deployment("silent", mid, {}, owner="alice")
    out = tmp_path / "folded.json"
    result = CliRunner().invoke(app, ["latency", "fold-serving", "--table", str(path), "--out", str(out), "--db", url])
    assert result.exit_code == 0, result.output
    assert "use  good" in result.output
    for name, why in (("few", "only 5 requests"), ("other-size", "served at 128x256"),
                      ("other-device", "measured on V100"), ("silent", "no latency reported")):  # fmt: skip
        assert f"skip {name}: {why}" in result.output, result.output
    folded = LatencyTable.load(out)
    assert LookupTableLatency(folded).predict(arch) == pytest.approx(3 * predicted, rel=1e-4)
    assert folded.folds[0]["source"] == "serving: good" and folded.folds[0]["mape_after_pct"] == pytest.approx(0)
    assert LatencyTable.load(path).folds == []  # --out left the original alone
    # Nothing usable is an error with one line, and the table is untouched.
    result = CliRunner().invoke(
        app, ["latency", "fold-serving", "--table", str(path), "--db", url, "--deployment", "few"]
    )
    assert result.exit_code != 0 and "no deployment's measurements match" in result.output
    result = CliRunner().invoke(
        app, ["latency", "fold-serving", "--table", str(path), "--db", url, "--deployment", "nope"]
    )
    assert result.exit_code != 0 and "no deployment nope" in result.output
    assert LatencyTable.load(path).folds == []
