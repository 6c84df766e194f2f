"""The serving backends agree: eager, TorchScript and ONNX Runtime give the same labels, any size, any batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hyctas_core.retrain import load_model
from hyctas_core.segment import predict_labels
from services.serve.segmenter import BACKENDS, Segmenter, SegmenterConfig
from tests.fixtures import panoptic_checkpoint, tiny_retrained


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_retrained(tmp_path_factory.mktemp("segmenter"))[0]


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    sizes = [(64, 128), (48, 80), (64, 128), (33, 65)]
    return [(rng.random((h, w, 3)) * 255).astype(np.uint8) for h, w in sizes]


@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_match_the_network(checkpoint: Path, backend: str) -> None:
    """Mixed sizes in one call (grouped into batches) give the labels of the network called image by image."""
    net, _, _ = load_model(checkpoint)
    images = _images()
    expected = [predict_labels(net, [im])[0] for im in images]
    assert len(np.unique(np.concatenate([e.ravel() for e in expected]))) >= 3  # not a constant map
    segmenter = Segmenter(SegmenterConfig(str(checkpoint), backend=backend, cache_sizes=2))
    got = segmenter.predict(images)
    assert [g.shape for g in got] == [e.shape for e in expected]
    agree = np.mean([np.mean(g == e) for g, e in zip(got, expected, strict=True)])
    assert agree > 0.999, agree  # compiled kernels may flip a pixel whose two top logits tie within 1e-6
    assert len(segmenter._cache) <= 2  # noqa: SLF001 - the LRU of compiled sizes is bounded
    assert segmenter.identity["backend"] == backend


def test_unknown_backend_is_refused(checkpoint: Path) -> None:
    with pytest.raises(ValueError, match="unknown backend"):
        SegmenterConfig(str(checkpoint), backend="tensorrt")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch", "torchscript"])
def test_cuda_matches_cpu(checkpoint: Path, backend: str) -> None:
    assert torch.cuda.is_available()
    images = _images()
    cpu = Segmenter(SegmenterConfig(str(checkpoint), backend=backend)).predict(images)
    gpu = Segmenter(SegmenterConfig(str(checkpoint), backend=backend, device="cuda")).predict(images)
    agree = np.mean([np.mean(c == g) for c, g in zip(cpu, gpu, strict=True)])
    assert agree > 0.99, agree


def test_panoptic_output(checkpoint: Path, tmp_path: Path) -> None:
    """A panoptic model gives a COCO-panoptic PNG whose segment ids are exactly its segments_info."""
    import io

    from PIL import Image

    from hyctas_core.panoptic.postprocess import id_to_rgb

    pan = Segmenter(SegmenterConfig(str(panoptic_checkpoint(checkpoint, tmp_path / "pan.pt")), backend="torch"))
    assert pan.identity["task"] == "panoptic"
    image = _images()[0]
    png, info = pan.predict_panoptic(image)
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int64)
    assert rgb.shape == (*image.shape[:2], 3)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    assert info and {s["id"] for s in info} == set(np.unique(ids)) - {0}
    for s in info:
        assert s["area"] == int((ids == s["id"]).sum())
    assert (id_to_rgb(ids) == rgb).all()
    semantic = Segmenter(SegmenterConfig(str(checkpoint), backend="torch"))
    with pytest.raises(ValueError, match="no panoptic head"):
        semantic.predict_panoptic(image)
