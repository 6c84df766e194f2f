"""SegTransform: shapes, determinism, padding, flip, scale range, eval normalisation, instance geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hyctas_core.data.transforms import MEAN, STD, SegTransform


def _sample(h: int = 24, w: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random image, a blocky label (values 0..3) and instances on the label-1 pixels."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    label = np.zeros((h, w), dtype=np.uint8)
    label[: h // 2, : w // 2] = 1
    label[h // 2 :, w // 2 :] = 2
    label[:4, -4:] = 3
    instances = np.zeros((h, w), dtype=np.int32)
    instances[: h // 2, : w // 4] = 1
    instances[: h // 2, w // 4 : w // 2] = 70000  # above 16 bits: must survive resizing
    return image, label, instances


def _denorm(img: torch.Tensor) -> np.ndarray:
    """3xHxW normalised tensor -> HxWx3 float64 on the 0-255 scale."""
    out: np.ndarray = img.numpy().transpose(1, 2, 0).astype(np.float64) * np.array(STD) + np.array(MEAN)
    return out


def test_train_output_shapes_and_dtypes() -> None:
    image, label, instances = _sample()
    t = SegTransform(crop_size=(16, 20))
    img, lab, inst = t(image, label, np.random.default_rng(0), instances)
    assert img.shape == (3, 16, 20) and img.dtype == torch.float32
    assert lab.shape == (16, 20) and lab.dtype == torch.int64
    assert inst is not None and inst.shape == (16, 20) and inst.dtype == torch.int64
    assert img.is_contiguous() and lab.is_contiguous() and inst.is_contiguous()
    _, _, none = t(image, label, np.random.default_rng(0))
    assert none is None


def test_deterministic_for_a_seed_and_different_across_seeds() -> None:
    image, label, instances = _sample()
    t = SegTransform(crop_size=(16, 20))
    a = t(image, label, np.random.default_rng(7), instances)
    b = t(image, label, np.random.default_rng(7), instances)
    for x, y in zip(a, b, strict=True):
        assert x is not None and y is not None and torch.equal(x, y)
    outs = [t(image, label, np.random.default_rng(s), instances)[0] for s in range(6)]
    assert sum(not torch.equal(outs[0], o) for o in outs[1:]) >= 4


def test_padding_uses_ignore_index_zero_and_mean() -> None:
    image, label, instances = _sample(h=10, w=12)
    t = SegTransform(crop_size=(20, 30), scale_range=(1.0, 1.0), flip=False, ignore_index=250)
    img, lab, inst = t(image, label, np.random.default_rng(3), instances)
    assert inst is not None
    assert img.shape == (3, 20, 30)
    # the padded canvas is exactly the crop: the original sits at the top-left
    np.testing.assert_array_equal(lab[:10, :12].numpy(), label)
    np.testing.assert_array_equal(inst[:10, :12].numpy(), instances)
    assert (lab[10:, :] == 250).all() and (lab[:, 12:] == 250).all()
    assert (inst[10:, :] == 0).all() and (inst[:, 12:] == 0).all()
    assert (img[:, 10:, :] == 0).all() and (img[:, :, 12:] == 0).all()
    np.testing.assert_allclose(_denorm(img)[:10, :12], image, atol=1e-3)


def test_flip_moves_image_label_and_instances_together() -> None:
    h, w = 6, 8
    label = np.tile(np.arange(w, dtype=np.uint8), (h, 1))  # column index: asymmetric
    image = np.zeros((h, w, 3), dtype=np.uint8)
    image[..., 0] = label * 20
    image[..., 1] = 7
    instances = label.astype(np.int32) + 100
    t = SegTransform(crop_size=None, scale_range=(1.0, 1.0), flip=True)
    flipped = kept = 0
    for seed in range(20):
        img, lab, inst = t(image, label, np.random.default_rng(seed), instances)
        assert inst is not None
        cols = lab[0].numpy()
        if cols[0] == w - 1:
            flipped += 1
            np.testing.assert_array_equal(lab.numpy(), label[:, ::-1])
        else:
            kept += 1
            np.testing.assert_array_equal(lab.numpy(), label)
        np.testing.assert_allclose(_denorm(img)[..., 0], lab.numpy() * 20.0, atol=1e-3)
        np.testing.assert_array_equal(inst.numpy(), lab.numpy() + 100)
    assert flipped > 0 and kept > 0


def test_no_flip_when_disabled() -> None:
    image, label, _ = _sample()
    t = SegTransform(crop_size=None, scale_range=(1.0, 1.0), flip=False)
    for seed in range(8):
        _, lab, _ = t(image, label, np.random.default_rng(seed))
        np.testing.assert_array_equal(lab.numpy(), label)


def test_scale_range_is_respected() -> None:
    image, label, _ = _sample(h=20, w=30)
    fixed = SegTransform(crop_size=None, scale_range=(2.0, 2.0), flip=False)
    img, lab, _ = fixed(image, label, np.random.default_rng(0))
    assert img.shape == (3, 40, 60) and lab.shape == (40, 60)

    # a crop larger than any scaled image: the valid (non-ignored) region is the scaled size
    huge = SegTransform(crop_size=(200, 200), scale_range=(0.5, 1.5), flip=False)
    heights = []
    for seed in range(12):
        _, lab, _ = huge(image, label, np.random.default_rng(seed))
        valid = (lab != 255).numpy()
        rows, cols = np.flatnonzero(valid.any(1)), np.flatnonzero(valid.any(0))
        vh, vw = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert 10 <= vh <= 30 and 15 <= vw <= 45
        assert abs(vw / vh - 1.5) < 0.15  # the same factor on both axes
        heights.append(vh)
    assert len(set(heights)) > 3  # the scale is actually random


def test_eval_is_deterministic_and_normalises_exactly() -> None:
    image, label, instances = _sample()
    t = SegTransform(crop_size=(8, 8), train=False)
    rng = np.random.default_rng(5)
    img, lab, inst = t(image, label, rng, instances)
    assert rng.random() == np.random.default_rng(5).random()  # no draw consumed
    expected = (image.astype(np.float64) - np.array(MEAN)) / np.array(STD)
    np.testing.assert_allclose(img.numpy().transpose(1, 2, 0), expected, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(lab.numpy(), label)
    assert inst is not None
    np.testing.assert_array_equal(inst.numpy(), instances)
    img2, _, _ = t(image, label, np.random.default_rng(99), instances)
    assert torch.equal(img, img2)


def test_base_size_resizes_first() -> None:
    image, label, instances = _sample(h=24, w=40)
    ev = SegTransform(crop_size=None, train=False, base_size=(12, 20))
    img, lab, inst = ev(image, label, np.random.default_rng(0), instances)
    assert img.shape == (3, 12, 20) and lab.shape == (12, 20)
    assert inst is not None and inst.shape == (12, 20)
    assert set(np.unique(lab.numpy())) <= {0, 1, 2, 3}
    tr = SegTransform(crop_size=None, scale_range=(2.0, 2.0), flip=False, base_size=(12, 20))
    img, _, _ = tr(image, label, np.random.default_rng(0))
    assert img.shape == (3, 24, 40)


def test_instances_follow_label_geometry() -> None:
    image, label, instances = _sample(h=30, w=44)
    t = SegTransform(crop_size=(24, 24), scale_range=(0.6, 1.7))
    for seed in range(10):
        _, lab, inst = t(image, label, np.random.default_rng(seed), instances)
        assert inst is not None
        # instances live exactly on the label-1 pixels, before and after the transform
        np.testing.assert_array_equal((inst > 0).numpy(), (lab == 1).numpy())
        assert set(np.unique(inst.numpy())) <= {0, 1, 70000}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"crop_size": (0, 10)},
        {"crop_size": (10, 10), "scale_range": (2.0, 1.0)},
        {"crop_size": (10, 10), "scale_range": (0.0, 1.0)},
        {"crop_size": (10, 10), "ignore_index": 300},
        {"crop_size": None, "base_size": (5,)},
    ],
)
def test_invalid_configuration_is_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="SegTransform"):
        SegTransform(**kwargs)  # type: ignore[arg-type]


def test_invalid_arrays_are_rejected() -> None:
    image, label, instances = _sample()
    t = SegTransform(crop_size=(8, 8))
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="image"):
        t(image.astype(np.float32), label, rng)
    with pytest.raises(ValueError, match="label"):
        t(image, label[:-1], rng)
    with pytest.raises(ValueError, match="instances"):
        t(image, label, rng, instances[:, :-1])
