"""TorchScript and ONNX export of extracted networks match eager outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from hyctas_core.config import ModelConfig
from hyctas_core.export import export_onnx, export_torchscript
from hyctas_core.presets import get_preset
from hyctas_core.search_space import Arch, sample_arch
from hyctas_core.supernet import Supernet
from tests.core.helpers import randomize

SIZE = (72, 104)


@pytest.fixture(scope="module")
def extracted() -> torch.nn.Module:
    rng = np.random.default_rng(11)
    arch = next(a for a in iter(lambda: sample_arch(rng, 8, num_branches=3), None) if _has_attention(a))
    supernet = randomize(Supernet(ModelConfig(base_channels=4, num_layers=8, num_classes=6)), seed=3)
    return supernet.extract(arch).eval()


def _has_attention(arch: Arch) -> bool:
    return any(c.op == "sa" for b in arch.branches for c in b.cells)


def test_torchscript_matches_eager(extracted: torch.nn.Module, tmp_path: Path) -> None:
    x = torch.randn(1, 3, *SIZE)
    export_torchscript(extracted, SIZE, tmp_path / "net.pt")
    loaded = torch.jit.load(str(tmp_path / "net.pt"))
    with torch.no_grad():
        ref = extracted(x)["out"]
        out = loaded(x)
    assert ref.abs().mean() > 1e-2
    assert (out - ref).abs().max().item() < 1e-4


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_onnx_matches_eager(extracted: torch.nn.Module, tmp_path: Path, exporter: str) -> None:
    x = torch.randn(1, 3, *SIZE)
    path = export_onnx(extracted, SIZE, tmp_path / "net.onnx", exporter=exporter)  # type: ignore[arg-type]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    (out,) = session.run(["logits"], {"image": x.numpy()})
    with torch.no_grad():
        ref = extracted(x)["out"].numpy()
    assert np.abs(out - ref).max() < 1e-4


def test_preset_exports_with_output_stride_4(tmp_path: Path) -> None:
    cfg = ModelConfig(base_channels=4, num_layers=20, num_classes=3, output_stride=4)
    net = randomize(Supernet(cfg), seed=5).extract(get_preset("hyctas-l")).eval()
    path = export_onnx(net, (64, 96), tmp_path / "l.onnx", exporter="torchscript")
    x = torch.randn(1, 3, 64, 96)
    (out,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})
    with torch.no_grad():
        ref = net(x)["out"].numpy()
    # 20 cells of random weights give logits of magnitude ~20: compare relative to that.
    assert np.abs(out - ref).max() < 1e-4 * max(1.0, float(np.abs(ref).max()))
