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


def test_a_trained_checkpoint_exports_as_one_onnx_file_matching_its_weights(tmp_path: Path) -> None:
    """``hyctas export --checkpoint``: the retrained weights, not a fresh network; one file."""
    from typer.testing import CliRunner

    from hyctas_cli.main import app
    from hyctas_core.export import check_onnx_file
    from hyctas_core.retrain import load_model
    from tests.fixtures import tiny_retrained

    checkpoint, _ = tiny_retrained(tmp_path)
    out = tmp_path / "trained.onnx"
    result = CliRunner().invoke(
        app, ["export", "--checkpoint", str(checkpoint), "--input-size", "64x128", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "trained network" in result.output
    assert check_onnx_file(out) == [] and not Path(str(out) + ".data").exists()  # the weights are inside
    moved = tmp_path / "elsewhere" / "model.onnx"
    moved.parent.mkdir()
    out.rename(moved)  # one file travels alone
    net, _, _ = load_model(checkpoint)
    x = torch.randn(1, 3, 64, 128)
    (got,) = ort.InferenceSession(str(moved), providers=["CPUExecutionProvider"]).run(["logits"], {"image": x.numpy()})
    with torch.no_grad():
        want = net.eval()(x)["out"].numpy()
    assert np.abs(want).max() > 1e-2  # the checkpoint's (randomised) weights give non-trivial logits
    assert np.abs(got - want).max() < 1e-4 * max(1.0, float(np.abs(want).max()))
    # A fresh network of the same arch differs: the export really carries the trained weights.
    fresh = tmp_path / "fresh.onnx"
    assert (
        CliRunner()
        .invoke(
            app,
            ["export", "--preset", "hyctas-s", "--base-channels", "4", "--input-size", "64x128", "--out", str(fresh)],
        )
        .exit_code
        == 0
    )
    (other,) = ort.InferenceSession(str(fresh), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"image": x.numpy()}
    )
    assert np.abs(other - want).max() > 1e-3
    bad = CliRunner().invoke(
        app, ["export", "--checkpoint", str(checkpoint), "--preset", "hyctas-s", "--out", str(out)]
    )
    assert bad.exit_code == 2 and "give no --preset" in bad.output


def test_an_onnx_file_whose_external_weights_are_missing_is_named(tmp_path: Path) -> None:
    import onnx
    from onnx import helper, numpy_helper

    from hyctas_core.export import check_onnx_file

    weight = numpy_helper.from_array(np.ones((4, 4), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
        [weight],
    )
    model = helper.make_model(graph)
    path = tmp_path / "big.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="big.onnx.data", size_threshold=0)
    assert check_onnx_file(path) == [tmp_path / "big.onnx.data"]
    (tmp_path / "big.onnx.data").unlink()
    with pytest.raises(FileNotFoundError, match=r"big.onnx: its weights are in big.onnx.data, which is not beside it"):
        check_onnx_file(path)
    (tmp_path / "junk.onnx").write_text("not a model")
    with pytest.raises(ValueError, match="not an ONNX model"):
        check_onnx_file(tmp_path / "junk.onnx")
