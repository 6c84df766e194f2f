"""CLI of the training / evaluation pipeline: train-supernet, evaluate, latency build-table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hyctas_cli.main import app
from hyctas_core.presets import get_preset
from tests.fixtures import write_cityscapes

runner = CliRunner()
CONFIG = """
epochs: 2
batch_size: 4
crop_size: [64, 128]
checkpoint_every: 1
log_every: 1
model:
  base_channels: 4
  num_layers: 12
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = write_cityscapes(tmp_path_factory.mktemp("data"), train=8, val=3, size=(64, 128))
    cfg = tmp_path_factory.mktemp("cfg") / "supernet.yaml"
    cfg.write_text(CONFIG)
    out = tmp_path_factory.mktemp("runs") / "supernet"
    result = runner.invoke(app, ["train-supernet", "--data", str(root), "--out", str(out), "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    return root, out


def test_train_supernet_outputs_and_resume_rules(run: tuple[Path, Path], tmp_path: Path) -> None:
    root, out = run
    assert (out / "supernet.pt").exists() and (out / "last.pt").exists() and (out / "config.yaml").exists()
    log = [json.loads(ln) for ln in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["event"] == "step"][-1] == 4
    again = runner.invoke(app, ["train-supernet", "--data", str(root), "--out", str(out)])
    assert again.exit_code == 2 and "--resume" in again.stderr  # never clobbers a run
    done = runner.invoke(
        app,
        ["train-supernet", "--data", str(root), "--out", str(out), "--config", str(out / "config.yaml"), "--resume"],
    )
    assert done.exit_code == 0 and "already finished" in done.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 2\nlearning_rate: 0.1\n")
    res = runner.invoke(
        app, ["train-supernet", "--data", str(root), "--out", str(tmp_path / "x"), "--config", str(bad)]
    )
    assert res.exit_code == 2 and "learning_rate" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = runner.invoke(app, ["train-supernet", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "y")])
    assert res.exit_code == 2 and "does not exist" in res.stderr


def test_evaluate_json_is_deterministic(run: tuple[Path, Path]) -> None:
    root, out = run
    args = ["evaluate", "--supernet", str(out / "supernet.pt"), "--data", str(root), "--preset", "hyctas-s"]
    args += ["--calib-images", "4", "--val-images", "3", "--latency-seconds", "0.05", "--json"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    a = json.loads(first.stdout)
    b = json.loads(runner.invoke(app, args).stdout)
    assert a["miou"] == b["miou"] and a["arch_hash"] == get_preset("hyctas-s").hash
    assert a["calib_images"] == 4 and a["val_images"] == 3 and a["input_size"] == [64, 128]
    deep = runner.invoke(app, [*args[:5], "--preset", "hyctas-m", "--json"])
    assert deep.exit_code == 2 and "17 cells" in deep.stderr
    missing = runner.invoke(
        app, ["evaluate", "--supernet", str(out / "nope.pt"), "--data", str(root), "--preset", "hyctas-s"]
    )
    assert missing.exit_code == 2 and "does not exist" in missing.stderr


def test_latency_table_cli_and_lut_evaluation(run: tuple[Path, Path], tmp_path: Path) -> None:
    root, out = run
    table = tmp_path / "table.json"
    res = runner.invoke(
        app,
        [
            "latency",
            "build-table",
            "--supernet",
            str(out / "supernet.pt"),
            "--input-size",
            "64x128",
            "--out",
            str(table),
            "--seconds-per-entry",
            "0.001",
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads(table.read_text())
    assert data["device"] == "cpu" and data["input_size"] == [64, 128] and len(data["entries"]) > 300
    args = ["evaluate", "--supernet", str(out / "supernet.pt"), "--data", str(root), "--preset", "hyctas-s"]
    res = runner.invoke(
        app, [*args, "--calib-images", "2", "--val-images", "2", "--latency-table", str(table), "--json"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["latency_source"] == "lut:cpu"
    wrong = runner.invoke(app, [*args, "--latency-table", str(table), "--input-size", "128x256"])
    assert wrong.exit_code == 2 and "latency table" in wrong.stderr
    gpu = runner.invoke(app, ["latency", "build-table", "--device", "cuda", "--out", str(tmp_path / "g.json")])
    import torch

    if not torch.cuda.is_available():
        assert gpu.exit_code == 2 and "CUDA is not available" in gpu.stderr
