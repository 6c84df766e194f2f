"""`hyctas demo --quick`: every stage runs and every promised output exists."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from hyctas_cli.main import app


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "demo.json").read_text())
    assert summary["status"] == "succeeded"
    for key, value in summary["outputs"].items():
        if key not in ("database", "search"):
            assert Path(value).exists(), key
    assert summary["search"]["evaluated"] >= 6 and summary["search"]["front_size"] >= 1
    assert 0.0 <= summary["retrained"]["val_miou"] <= 1.0 and summary["retrained"]["fps"] > 0
    # The retrained network reports the size of what inference runs: the numbers the search showed.
    knee, retrained = summary["search"]["knee"], summary["retrained"]
    assert retrained["params_m"] == pytest.approx(knee["params_m"], rel=1e-9)
    assert retrained["gmacs"] == pytest.approx(knee["gmacs"], rel=1e-9)
    assert retrained["training_head_params_m"] > 0  # the auxiliary head, reported apart
    # The knee is compared with a random valid architecture of similar latency, same budget.
    ctrl, kn = retrained["random"], retrained["knee"]
    assert kn["arch_hash"] == knee["arch_hash"] and ctrl["arch_hash"] != kn["arch_hash"]
    for row in (kn, ctrl):
        assert 0.0 <= row["miou"] <= 1.0 and row["latency_ms"] > 0
    assert abs(ctrl["predicted_latency_ms"] - kn["predicted_latency_ms"]) <= 0.5 * kn["predicted_latency_ms"]
    assert retrained["knee_wins"] == (kn["miou"] > ctrl["miou"])
    assert ("the knee wins" in result.stdout) == retrained["knee_wins"]
    # The front is verified: front points retrained (or the reason there is nothing to rank), stored with the search.
    record = summary["verification"]
    assert record["state"] in ("succeeded", "failed")
    if record["state"] == "succeeded":
        assert record["k"] == record["done"] == len(record["rows"]) == min(2, summary["search"]["front_size"])
        assert "supernet fidelity: Kendall tau" in result.stdout or "undefined over" in result.stdout
        assert all(0.0 <= r["retrained_miou"] <= 1.0 for r in record["rows"])
    else:
        assert summary["search"]["front_size"] == 1 and "nothing to rank" in record["error"]
    assert "[5/7] verifying the front" in result.stdout
    # Piped output (not a terminal) is never folded inside a value: the overlay path is on one line.
    assert any(summary["outputs"]["overlay"] in line for line in result.stdout.splitlines()), result.stdout
    overlay = np.asarray(Image.open(summary["outputs"]["overlay"]))
    assert overlay.shape == (64, 128, 3)
    png = Image.open(summary["outputs"]["pareto_plot"])
    assert png.size[0] > 400
    # A second run refuses to clobber the first unless asked.
    again = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert again.exit_code == 2 and "--overwrite" in again.stderr
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("user data")
    refused = CliRunner().invoke(app, ["demo", "--quick", "--out", str(tmp_path / "other"), "--overwrite"])
    assert refused.exit_code == 2 and (tmp_path / "other" / "keep.txt").exists()
