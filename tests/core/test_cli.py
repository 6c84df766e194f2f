"""The ``hyctas`` CLI: arch summary, JSON output, one-line errors with exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from hyctas_core.cli import app
from hyctas_core.presets import get_preset

runner = CliRunner()


def test_arch_json_output() -> None:
    args = ["arch", "--preset", "hyctas-s", "--base-channels", "4", "--input-size", "64x128"]
    result = runner.invoke(app, [*args, "--latency-seconds", "0.1", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {"params_m", "gmacs", "latency_ms", "input_size"} <= set(data)
    assert data["input_size"] == [64, 128]
    assert data["params_m"] > 0 and data["gmacs"] > 0 and data["latency_ms"] > 0
    assert data["arch_hash"] == get_preset("hyctas-s").hash


def test_arch_table_output_and_json_file(tmp_path: Path) -> None:
    path = tmp_path / "l.json"
    path.write_text(get_preset("hyctas-l").to_json())
    args = ["arch", "--from-json", str(path), "--base-channels", "4", "--input-size", "64x64"]
    result = runner.invoke(app, [*args, "--latency-seconds", "0"])
    assert result.exit_code == 0, result.output
    assert "3 branch(es)" in result.stdout and "(shared)" in result.stdout and "GMACs" in result.stdout


def _one_line_error(args: list[str], needle: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], result.stderr


def test_bad_inputs_exit_2_with_one_line(tmp_path: Path) -> None:
    _one_line_error(["arch", "--preset", "hyctas-xl"], "unknown preset 'hyctas-xl'")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    _one_line_error(["arch", "--from-json", str(bad)], "not valid JSON")
    data = json.loads(get_preset("hyctas-s").to_json())
    data["ops"][0][1] = 0  # skip at the first down-sampling cell
    bad.write_text(json.dumps(data))
    _one_line_error(["arch", "--from-json", str(bad)], "constraint 3")
    _one_line_error(["arch", "--from-json", str(tmp_path / "missing.json")], "does not exist")
    _one_line_error(["arch", "--preset", "hyctas-s", "--input-size", "big"], "HxW")
    _one_line_error(["arch"], "exactly one of")


def test_export_command(tmp_path: Path) -> None:
    out = tmp_path / "s.pt"
    args = ["export", "--preset", "hyctas-s", "--format", "torchscript", "--base-channels", "4"]
    result = runner.invoke(app, [*args, "--input-size", "64x64", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 0


def test_console_script_is_installed() -> None:
    proc = subprocess.run(
        [Path(sys.executable).parent / "hyctas", "--help"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0 and "arch" in proc.stdout
