"""Candidate evaluation: BN recalibration matters, results are deterministic."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hyctas_core.config import ModelConfig
from hyctas_core.data.cityscapes import CityscapesDataset
from hyctas_core.data.transforms import SegTransform
from hyctas_core.evaluate import EvaluatorSpec, LocalEvaluator, recalibrate_bn
from hyctas_core.presets import get_preset
from hyctas_core.train import SupernetTrainConfig, SupernetTrainer
from tests.fixtures import write_cityscapes


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = write_cityscapes(tmp_path_factory.mktemp("data"), train=8, val=4, size=(64, 128))
    cfg = SupernetTrainConfig(
        model=ModelConfig(base_channels=4, num_layers=12, num_classes=19),
        epochs=2,
        batch_size=4,
        crop_size=(64, 128),
        lr=0.05,
    )
    dataset = CityscapesDataset(root, "train", transform=SegTransform(crop_size=(64, 128)), seed=0)
    run = tmp_path_factory.mktemp("run")
    SupernetTrainer(cfg, dataset, run).fit()
    return root, run / "supernet.pt"


def test_recalibration_changes_the_result_and_is_deterministic(trained: tuple[Path, Path]) -> None:
    root, ckpt = trained
    spec = EvaluatorSpec(str(ckpt), str(root), calib_images=8, val_images=4, latency_seconds=0.05)
    evaluator = spec.build()
    arch = get_preset("hyctas-s")
    with_bn = evaluator.evaluate(arch)
    again = evaluator.evaluate(arch)
    without = evaluator.evaluate(arch, recalibrate=False)
    assert with_bn.miou == again.miou and with_bn.per_class_iou == again.per_class_iou
    assert with_bn.miou != without.miou
    assert 0.0 <= with_bn.miou <= 1.0 and with_bn.calib_images == 8 and without.calib_images == 0
    assert with_bn.gmacs > 0 and with_bn.params_m > 0 and with_bn.latency_ms > 0
    fresh = spec.build().evaluate(arch)  # another process / actor would get the same
    assert fresh.miou == with_bn.miou


def test_recalibrate_bn_recomputes_statistics() -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    batches = [torch.randn(2, 3, 5, 5) * 3 + 1 for _ in range(3)]
    assert recalibrate_bn(net, batches) == 6
    bn = net[1]
    assert isinstance(bn, torch.nn.BatchNorm2d)
    with torch.no_grad():
        feats = torch.cat([net[0](b) for b in batches])
    torch.testing.assert_close(bn.running_mean, feats.mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-5)
    assert bn.momentum == 0.1 and not net.training


def test_local_evaluator_and_cache_key(trained: tuple[Path, Path], tmp_path: Path) -> None:
    root, ckpt = trained
    spec = EvaluatorSpec(str(ckpt), str(root), calib_images=4, val_images=2, latency_seconds=0.05)
    ev = LocalEvaluator(spec)
    (res,) = ev.evaluate([get_preset("hyctas-s")])
    assert {"miou", "latency_ms", "gmacs", "params_m"} <= set(res)
    assert (
        spec.cache_key()
        == EvaluatorSpec(
            str(ckpt), str(root), calib_images=4, val_images=2, latency_seconds=0.05, device="cpu"
        ).cache_key()
    )
    assert spec.cache_key() != EvaluatorSpec(str(ckpt), str(root), calib_images=5, val_images=2).cache_key()
