"""Retraining: drop path, poly LR, exact resume, best/last checkpoints, load_model, the CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import typer
from PIL import Image
from torch import nn
from torch.utils.data import Dataset
from typer.testing import CliRunner

from hyctas_cli.retrain import retrain
from hyctas_core.config import ModelConfig
from hyctas_core.layers import DropPath
from hyctas_core.network import HyCTASNet
from hyctas_core.ops import EfficientSelfAttention, LightConv
from hyctas_core.presets import get_preset
from hyctas_core.retrain import (
    RetrainConfig,
    Retrainer,
    drop_path_at,
    load_model,
    poly_lr,
    read_checkpoint,
)
from hyctas_core.search_space import Arch, sample_arch
from tests.core.helpers import randomize

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is fastest

# hyctas-s: 11 cells per branch, light convs (stride 1 and 2), plain convs and one attention cell.
ARCH = get_preset("hyctas-s")
MODEL = ModelConfig(base_channels=4, num_layers=11, num_classes=3)


class ToyScenes(Dataset[dict[str, Any]]):
    """Tiny deterministic scenes: class = which vertical band, with epoch-dependent noise."""

    def __init__(self, n: int = 12, size: tuple[int, int] = (48, 64), offset: int = 0) -> None:
        self.n, self.size, self.epoch, self.offset = n, size, 0, offset

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(1000 * self.epoch + i + self.offset)
        h, w = self.size
        label = (torch.arange(w) * 3 // w).expand(h, w).clone()
        label[: h // 4] = 255
        image = torch.randn(3, h, w, generator=g) * 0.3 + label.clamp(max=2).float().unsqueeze(0)
        return {"image": image, "label": label.long()}


def _cfg(**kw: Any) -> RetrainConfig:
    base: dict[str, Any] = {
        "model": MODEL,
        "epochs": 3,
        "batch_size": 4,
        "lr": 0.05,
        "drop_path_max": 0.5,  # high, so the resume test really exercises the drop-path draws
        "crop_size": (48, 64),
        "checkpoint_every": 2,
        "log_every": 1,
    }
    return RetrainConfig(**{**base, **kw})


def _trainer(run_dir: Path, **kw: Any) -> Retrainer:
    return Retrainer(_cfg(**kw), ARCH, ToyScenes(), ToyScenes(4, offset=500), run_dir)


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _without_drop_path(net: HyCTASNet) -> nn.Module:
    """A copy with every DropPath put back to the nn.Identity it replaced: the network as before."""
    ref = copy.deepcopy(net)
    for m in ref.modules():
        for name, child in list(m.named_children()):
            if isinstance(child, DropPath):
                m.add_module(name, nn.Identity())
    assert not any(isinstance(m, DropPath) for m in ref.modules())
    return ref


def _log_records(run_dir: Path) -> list[dict[str, Any]]:
    out = []
    for line in (run_dir / "train_log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        rec.pop("time")
        rec.pop("images_per_s", None)
        out.append(rec)
    return out


# -- drop path --------------------------------------------------------------------------------
def test_drop_path_module_drops_whole_samples() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.ones(16, 2, 3, 3)
    drop = DropPath(0.5, g).train()
    y = drop(x)
    per_sample = y.flatten(1)
    assert torch.all(per_sample == per_sample[:, :1])  # one decision per sample
    values = set(per_sample[:, 0].tolist())
    assert values == {0.0, 2.0}  # dropped, or kept and scaled by 1 / (1 - p)
    assert drop.eval()(x) is x
    drop.set_p(0.0)
    assert drop.train()(x) is x
    drop.set_p(1.0)
    assert torch.equal(drop(x), torch.zeros_like(x))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        drop.set_p(1.5)
    with pytest.raises(RuntimeError, match="needs a torch.Generator"):
        DropPath(0.3).train()(x)


def test_drop_path_sits_only_on_residual_branches() -> None:
    net = HyCTASNet(ARCH, MODEL)
    dropped = {key for key, op in net.cells.items() if any(isinstance(m, DropPath) for m in op.modules())}
    expected = {
        c.key for c in net.plan.cells if c.op == "sa" or (c.op in ("conv_downup", "conv_2x_downup") and c.stride == 1)
    }
    assert dropped == expected and len(net.drop_path_modules) == len(expected) > 0
    assert any(c.op == "sa" for c in net.plan.cells)
    assert any(c.op.startswith("conv_") and c.stride == 2 for c in net.plan.cells)  # no bypass: not dropped
    # parameter and buffer names are those of the network without drop path
    assert net.state_dict().keys() == _without_drop_path(net).state_dict().keys()
    net.set_drop_path(0.3)
    assert net.drop_path_p == 0.3 and all(d.p == 0.3 for d in net.drop_path_modules)
    g = torch.Generator().manual_seed(5)
    net.set_drop_path(0.1, generator=g)
    assert net.drop_path_generator is g and all(d.generator is g for d in net.drop_path_modules)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        net.set_drop_path(-0.1)


def test_eval_output_is_unchanged_bit_for_bit() -> None:
    net = randomize(HyCTASNet(ARCH, MODEL, aux=True), seed=1)
    assert isinstance(net, HyCTASNet)
    ref = _without_drop_path(net)
    x = torch.randn(2, 3, 48, 64)
    net.set_drop_path(0.9)
    with torch.no_grad():
        out, expected = net.eval()(x)["out"], ref.eval()(x)["out"]
    assert out.abs().mean() > 1e-2
    assert torch.equal(out, expected)
    # training mode with probability 0: the current training function too (aux included)
    net.set_drop_path(0.0)
    net_t, ref_t = copy.deepcopy(net).train(), copy.deepcopy(ref).train()
    got, want = net_t(x), ref_t(x)
    assert set(got) == {"out", "aux"}
    assert torch.equal(got["out"], want["out"]) and torch.equal(got["aux"], want["aux"])


def test_drop_path_really_drops_in_training() -> None:
    net = randomize(HyCTASNet(ARCH, MODEL), seed=2).train()
    assert isinstance(net, HyCTASNet)
    x = torch.randn(8, 3, 48, 64)
    net.set_drop_path(0.0)
    with torch.no_grad():
        clean = copy.deepcopy(net)(x)["out"]
    net.set_drop_path(0.5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        noisy = copy.deepcopy(net)(x)["out"]
    assert not torch.allclose(clean, noisy)
    # cell by cell: a dropped sample's output is exactly ReLU(bypass(x)); p = 1 drops every sample
    checked = 0
    for c in net.plan.cells:
        op = net.cells[c.key]
        if not isinstance(op, LightConv | EfficientSelfAttention) or not any(
            isinstance(m, DropPath) for m in op.modules()
        ):
            continue
        feat = torch.randn(8, c.in_chs, 12, 16)
        with torch.no_grad():
            if isinstance(op, EfficientSelfAttention) and op.bypass is None:
                bypass = F.relu(feat)
            else:
                assert op.bypass is not None
                bypass = F.relu(op.bypass(feat))
            net.set_drop_path(1.0)
            assert torch.equal(op(feat), bypass)
            net.set_drop_path(0.5)
            y = op(feat)
        dropped = [torch.equal(y[i], bypass[i]) for i in range(8)]
        assert 0 < sum(dropped) < 8, dropped
        checked += 1
    assert checked == len(net.drop_path_modules)


def test_drop_path_schedule_is_linear() -> None:
    assert [drop_path_at(e, 5, 0.2) for e in range(5)] == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    assert drop_path_at(0, 1, 0.2) == 0.0
    assert drop_path_at(9, 5, 0.2) == pytest.approx(0.2)  # clamped after the last epoch


# -- poly LR ----------------------------------------------------------------------------------
def test_poly_lr_values() -> None:
    # lr * (1 - i / N) ** 0.9, by hand: 0.5 ** 0.9 = 0.535887, 0.01 ** 0.9 = 0.0158489
    assert poly_lr(0, 100, 0.01) == pytest.approx(0.01)
    assert poly_lr(50, 100, 0.01) == pytest.approx(0.00535887, rel=1e-5)
    assert poly_lr(99, 100, 0.01) == pytest.approx(1.58489e-4, rel=1e-5)
    assert poly_lr(100, 100, 0.01) == 0.0
    # linear warm-up: 0.96 ** 0.9 = 0.963927, times 5 / 10
    assert poly_lr(4, 100, 0.01, warmup_iters=10) == pytest.approx(0.00481963, rel=1e-5)
    assert poly_lr(10, 100, 0.01, warmup_iters=10) == pytest.approx(0.01 * 0.9**0.9)
    with pytest.raises(ValueError):
        poly_lr(-1, 100, 0.01)


# -- training, checkpoints, resume ------------------------------------------------------------
@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Retrainer, list[Any]]:
    """An uninterrupted 3-epoch run (9 steps), shared by the tests below."""
    trainer = _trainer(tmp_path_factory.mktemp("full"))
    seen: list[Any] = []
    trainer.fit(progress=seen.append)
    return trainer, seen


def test_fit_follows_the_schedules(full_run: tuple[Retrainer, list[Any]]) -> None:
    trainer, seen = full_run
    assert trainer.finished and trainer.step == trainer.total_steps == 9
    # one report per step, plus one after each validation (same step, the new mIoU)
    assert [p.step for p in seen] == [1, 2, 3, 3, 4, 5, 6, 6, 7, 8, 9, 9]
    assert [p.miou is None for p in seen[:4]] == [True, True, True, False]
    firsts = [next(p for p in seen if p.step == s) for s in range(1, 10)]
    assert [p.lr for p in firsts] == pytest.approx([poly_lr(i, 9, 0.05) for i in range(9)])
    assert [p.drop_path for p in firsts] == pytest.approx([0.0] * 3 + [0.25] * 3 + [0.5] * 3)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(poly_lr(8, 9, 0.05))
    assert seen[-1].miou is not None and seen[-1].best_miou == trainer.best_miou


def test_best_and_last_checkpoints(full_run: tuple[Retrainer, list[Any]]) -> None:
    trainer, _ = full_run
    run = trainer.run_dir
    epochs = [r for r in _log_records(run) if r["event"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3] and all("miou" in r for r in epochs)
    assert trainer.best_miou == max(r["miou"] for r in epochs)
    best_epoch = [r["epoch"] for r in epochs if r.get("best")][-1]
    cfg, arch, info = read_checkpoint(run / "best.pt")
    assert info["kind"] == "best" and info["epoch"] == best_epoch and info["miou"] == trainer.best_miou
    assert cfg == trainer.cfg and arch.hash == ARCH.hash
    _, _, info = read_checkpoint(run / "last.pt")
    assert info["kind"] == "last" and info["step"] == 9 and info["best_miou"] == trainer.best_miou
    # best.pt holds the weights that scored best: re-scoring them gives the logged mIoU
    net, _, _ = load_model(run / "best.pt")
    scorer = _trainer(run / "rescore")
    scorer.model.load_state_dict(net.state_dict())
    assert scorer.validate() == pytest.approx(trainer.best_miou, abs=1e-12)
    assert not list(run.glob("*.tmp"))


def test_load_model_round_trip(full_run: tuple[Retrainer, list[Any]], tmp_path: Path) -> None:
    trainer, _ = full_run
    net, arch, cfg = load_model(trainer.run_dir / "last.pt")
    assert cfg == trainer.cfg and arch.hash == ARCH.hash and not net.training
    assert net.aux_head is not None  # trained with the auxiliary head
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        want = trainer.model.eval()(x)["out"]
        got = net(x)["out"]
    assert torch.equal(got, want)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read"):
        load_model(bad)
    torch.save({"format": "hyctas-supernet/1"}, bad)
    with pytest.raises(ValueError, match="not a HyCTAS retraining checkpoint"):
        load_model(bad)


@pytest.mark.parametrize("stop_at", [1, 4, 6])
def test_resume_is_bit_identical(full_run: tuple[Retrainer, list[Any]], tmp_path: Path, stop_at: int) -> None:
    full, _ = full_run
    first = _trainer(tmp_path)
    summary = first.fit(max_steps=stop_at)
    assert summary["stopped"] and first.step == stop_at
    del first  # the process "dies": only the checkpoints survive
    second = _trainer(tmp_path)
    assert second.resume() and second.step == stop_at
    second.fit()
    ref, got = _weights(full.model), _weights(second.model)
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    assert second.best_miou == full.best_miou and second.last_miou == full.last_miou
    assert torch.equal(second.drop_rng.get_state(), full.drop_rng.get_state())
    # the log holds each step and epoch once, exactly as in the uninterrupted run
    assert _log_records(tmp_path) == _log_records(full.run_dir)
    best_ref = torch.load(full.run_dir / "best.pt", weights_only=False)["model"]
    best_got = torch.load(tmp_path / "best.pt", weights_only=False)["model"]
    assert all(torch.equal(best_ref[k], best_got[k]) for k in best_ref)


def test_drop_path_changes_training_from_epoch_1(full_run: tuple[Retrainer, list[Any]], tmp_path: Path) -> None:
    full, _ = full_run
    plain = _trainer(tmp_path / "plain", drop_path_max=0.0)
    plain.fit(max_steps=3)
    scheduled = _trainer(tmp_path / "scheduled")
    scheduled.fit(max_steps=3)
    w_plain, w_sched = _weights(plain.model), _weights(scheduled.model)
    assert all(torch.equal(w_plain[k], w_sched[k]) for k in w_plain)  # epoch 0 runs with p = 0
    plain.fit()  # epochs 1 and 2: p = 0.25 and 0.5 in the scheduled (full) run, 0 here
    w_plain, w_full = _weights(plain.model), _weights(full.model)
    assert plain.step == full.step == 9
    assert any(not torch.equal(w_plain[k], w_full[k]) for k in w_plain)


def test_resume_refuses_another_config_or_arch(full_run: tuple[Retrainer, list[Any]], tmp_path: Path) -> None:
    _trainer(tmp_path).fit(max_steps=2)
    with pytest.raises(ValueError, match=r"different config \(differs in \['lr'\]\)"):
        _trainer(tmp_path, lr=0.5).resume()
    other_arch = sample_arch(np.random.default_rng(1), 11)
    assert other_arch.hash != ARCH.hash
    other = Retrainer(_cfg(), other_arch, ToyScenes(), None, tmp_path)
    with pytest.raises(ValueError, match="another architecture"):
        other.resume()
    with pytest.raises(ValueError, match="resume needs last.pt"):
        _trainer(tmp_path).load(full_run[0].run_dir / "best.pt")


def test_config_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 2\ncrop_size: [64, 128]\ndrop_path_max: 0.3\nmodel:\n  base_channels: 8\n")
    cfg = RetrainConfig.from_yaml(path)
    assert cfg.epochs == 2 and cfg.crop_size == (64, 128) and cfg.model.base_channels == 8
    assert cfg.drop_path_max == 0.3 and cfg.lr == 0.01 and cfg.aux_weight == 0.4 and cfg.lr_power == 0.9
    assert RetrainConfig.from_dict(cfg.to_dict()) == cfg
    path.write_text("epoch: 2\n")
    with pytest.raises(ValueError, match=r"unknown retraining config key\(s\) \['epoch'\]"):
        RetrainConfig.from_yaml(path)
    with pytest.raises(ValueError, match="drop_path_max"):
        RetrainConfig(drop_path_max=1.5)
    with pytest.raises(ValueError, match="loss must be"):
        RetrainConfig(loss="focal")


# -- CLI --------------------------------------------------------------------------------------
# Cityscapes label ids -> colour of the fixture images (road 7, building 11, sky 23, car 26).
_COLOURS = {7: (128, 64, 128), 11: (70, 70, 70), 23: (70, 130, 180), 26: (0, 0, 142), 0: (0, 0, 0)}


def _write_cityscapes(root: Path) -> None:
    """4 train + 2 val images of 64x128 with labelIds PNGs, in the official layout."""
    for split, n in (("train", 4), ("val", 2)):
        for i in range(n):
            rng = np.random.default_rng([7, n, i])
            ids = np.full((64, 128), 7, dtype=np.uint8)
            ids[:16] = 23
            ids[16:32] = 11
            ids[32:48, : 32 + 16 * i] = 26
            ids[60:] = 0  # unlabeled: ignored
            image = np.zeros((64, 128, 3), dtype=np.uint8)
            for label_id, colour in _COLOURS.items():
                image[ids == label_id] = colour
            image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
            city = "aachen" if split == "train" else "frankfurt"
            stem = f"{city}_{i:06d}_000019"
            img_dir, gt_dir = root / "leftImg8bit" / split / city, root / "gtFine" / split / city
            img_dir.mkdir(parents=True, exist_ok=True)
            gt_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(img_dir / f"{stem}_leftImg8bit.png")
            Image.fromarray(ids).save(gt_dir / f"{stem}_gtFine_labelIds.png")


@pytest.fixture()
def cli_setup(tmp_path: Path) -> tuple[typer.Typer, CliRunner, Path, Path]:
    data = tmp_path / "cityscapes"
    _write_cityscapes(data)
    config = tmp_path / "retrain.yaml"
    config.write_text(
        "model:\n  base_channels: 4\n  num_layers: 11\nepochs: 2\nbatch_size: 2\ncrop_size: [48, 64]\n"
        "checkpoint_every: 1\nlog_every: 1\n"
    )
    app = typer.Typer()
    app.command()(retrain)
    return app, CliRunner(), data, config


def _one_line_error(runner: CliRunner, app: typer.Typer, args: list[str], needle: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], result.stderr


def test_cli_retrains_and_resumes(cli_setup: tuple[typer.Typer, CliRunner, Path, Path], tmp_path: Path) -> None:
    app, runner, data, config = cli_setup
    out = tmp_path / "run"
    args = ["--data", str(data), "--out", str(out), "--config", str(config)]
    result = runner.invoke(app, [*args, "--preset", "hyctas-s"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["step"] == 4 and summary["epoch"] == 2 and not summary["stopped"]
    assert 0.0 <= summary["best_miou"] <= 1.0
    for name in ("last.pt", "best.pt", "config.yaml", "arch.json", "train_log.jsonl"):
        assert (out / name).is_file(), name
    assert Arch.from_json((out / "arch.json").read_text()).hash == ARCH.hash
    net, arch, cfg = load_model(out / "best.pt")
    assert arch.hash == ARCH.hash and cfg.model.num_classes == 19 and cfg.crop_size == (48, 64)
    assert net(torch.randn(1, 3, 64, 128))["out"].shape == (1, 19, 64, 128)
    # an existing run is never overwritten; --resume continues it (arch and config from the run)
    _one_line_error(runner, app, [*args, "--preset", "hyctas-s"], "already holds a run")
    result = runner.invoke(app, ["--data", str(data), "--out", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    assert "already finished (4 steps)" in result.stdout
    _one_line_error(runner, app, [*args, "--resume", "--preset", "hyctas-m"], "trains arch")
    _one_line_error(runner, app, [*args, "--resume", "--epochs", "3"], "differs in ['epochs']")


def test_cli_errors(cli_setup: tuple[typer.Typer, CliRunner, Path, Path], tmp_path: Path) -> None:
    app, runner, data, config = cli_setup
    out = ["--out", str(tmp_path / "run")]
    base = ["--data", str(data), *out, "--config", str(config)]
    _one_line_error(runner, app, ["--data", str(tmp_path / "nowhere"), *out, "--preset", "hyctas-s"], "does not exist")
    _one_line_error(runner, app, base, "give the architecture")
    _one_line_error(runner, app, [*base, "--preset", "hyctas-xl"], "unknown preset")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    _one_line_error(runner, app, [*base, "--arch", str(bad)], "not valid JSON")
    _one_line_error(runner, app, [*base, "--arch", str(bad), "--preset", "hyctas-s"], "only one of")
    _one_line_error(runner, app, [*base, "--arch", str(tmp_path / "none.json")], "does not exist")
    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text("epochz: 3\n")
    _one_line_error(
        runner, app, ["--data", str(data), *out, "--config", str(bad_cfg), "--preset", "hyctas-s"], "epochz"
    )
    bad_cfg.write_text("model:\n  num_classes: 3\n  base_channels: 4\n")
    _one_line_error(
        runner, app, ["--data", str(data), *out, "--config", str(bad_cfg), "--preset", "hyctas-s"], "19 train classes"
    )
    bad_cfg.write_text("batch_size: 2\nmodel:\n  num_layers: 5\n  base_channels: 4\n")
    _one_line_error(
        runner, app, ["--data", str(data), *out, "--config", str(bad_cfg), "--preset", "hyctas-s"], "allows 5"
    )
    _one_line_error(runner, app, [*base, "--resume", "--preset", "hyctas-s"], "no checkpoint")
    _one_line_error(runner, app, [*base, "--config", str(tmp_path / "nope.yaml")], "does not exist")
    empty = tmp_path / "empty"
    (empty / "leftImg8bit").mkdir(parents=True)
    _one_line_error(runner, app, ["--data", str(empty), *out, "--preset", "hyctas-s"], "not found")
    assert not (tmp_path / "run").exists()
