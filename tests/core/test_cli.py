"""The ``hyctas`` CLI: arch summary, JSON output, one-line errors with exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from hyctas_cli.main import app
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


_PRINT_LONG = """
import sys, time
from rich.table import Table
from hyctas_cli.utils import cli_console, cli_progress
path = sys.argv[1]
console = cli_console()
console.print("[bold]step[/] " + "word " * 30 + f"0.181 GMACs; plot: {path}")
table = Table(title="front")
table.add_column("path")
table.add_column("GMACs")
table.add_row(path, "0.181")
console.print(table)
with cli_progress(console=console, transient=False) as bar:
    task = bar.add_task("steps", total=3)
    for _ in range(3):
        time.sleep(0.05)
        bar.advance(task)
"""


def test_piped_output_never_splits_values_and_a_terminal_gets_bars(tmp_path: Path) -> None:
    import os
    import pty

    path = str(tmp_path / ("run_" * 30) / "city_000000_000001_overlay.png")
    env = {**os.environ, "COLUMNS": "80"}
    env.pop("FORCE_COLOR", None)
    piped = subprocess.run([sys.executable, "-c", _PRINT_LONG, path], capture_output=True, text=True, env=env)
    assert piped.returncode == 0, piped.stderr
    lines = piped.stdout.splitlines()
    assert any(f"0.181 GMACs; plot: {path}" in line for line in lines), piped.stdout  # one line, unbroken
    assert any(path in line and "0.181" in line for line in lines), piped.stdout  # the table row too
    assert "\x1b[" not in piped.stdout  # no colour codes in a log
    # On a terminal (a pseudo-terminal here) the same program draws a live bar at the terminal's width.
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", _PRINT_LONG, path], stdout=follower, stderr=follower, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(timeout=60) == 0
    os.close(leader)
    shown = b"".join(chunks).decode(errors="replace")
    assert "━" in shown and "\x1b[" in shown, shown  # a bar, drawn with terminal control codes
    assert f"0.181 GMACs; plot: {path}" not in shown.replace("\r\n", "\n")  # folded to the 80 columns
