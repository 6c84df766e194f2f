"""Augmentation pipeline for segmentation samples (image, semantic label, optional instance map).

The training recipe follows the official HyCTAS / detectron2 pipeline: random scale (uniform
in ``scale_range``), random crop with padding, random horizontal flip and per-channel
normalisation with the ImageNet ``MEAN`` / ``STD`` on the 0-255 scale. Every random draw comes
from the ``np.random.Generator`` passed to :meth:`SegTransform.__call__`, so a sample is fully
determined by the generator's state.

Resizing uses Pillow: bilinear for images, nearest for labels and instance maps (instance maps
go through Pillow's 32-bit integer mode ``"I"``, so ids above 255 survive).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

__all__ = ["MEAN", "STD", "SegTransform", "normalize"]

MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
STD: tuple[float, float, float] = (58.395, 57.12, 57.375)

_MEAN = np.asarray(MEAN, dtype=np.float32)
_STD = np.asarray(STD, dtype=np.float32)


def normalize(image: np.ndarray) -> np.ndarray:
    """Normalise an HxWx3 RGB image on the 0-255 scale to ``(x - MEAN) / STD`` (float32, HxWx3)."""
    return (image.astype(np.float32) - _MEAN) / _STD


def _resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an HxWx3 uint8 image to ``size`` = (H, W)."""
    if image.shape[:2] == size:
        return image
    pil = Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(pil)


def _resize_nearest(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an HxW integer map to ``size`` = (H, W), keeping its dtype."""
    if arr.shape == size:
        return arr
    if arr.dtype == np.uint8:
        pil = Image.fromarray(arr)
    else:
        pil = Image.fromarray(arr.astype(np.int32))  # Pillow mode "I"
    out = np.asarray(pil.resize((size[1], size[0]), Image.Resampling.NEAREST))
    return out.astype(arr.dtype, copy=False)


def _pad_to(arr: np.ndarray, size: tuple[int, int], value: float | int) -> np.ndarray:
    """Pad ``arr`` (HxW or HxWxC) at the bottom / right up to at least ``size`` with ``value``."""
    h, w = arr.shape[:2]
    ph, pw = max(size[0] - h, 0), max(size[1] - w, 0)
    if ph == 0 and pw == 0:
        return arr
    widths = [(0, ph), (0, pw)] + [(0, 0)] * (arr.ndim - 2)
    return np.pad(arr, widths, mode="constant", constant_values=value)


def _check_size(value: tuple[int, int] | None, field: str) -> None:
    if value is None:
        return
    if len(value) != 2 or any(int(v) != v or v < 1 for v in value):
        raise ValueError(f"SegTransform.{field} must be a pair of positive ints (H, W), got {value!r}")


@dataclass(frozen=True)
class SegTransform:
    """Joint transform of an image, its semantic label and (optionally) its instance map.

    Training (``train=True``), in this order: optional resize to ``base_size``; random scale
    ``s ~ U(scale_range)`` (output size ``round(H*s) x round(W*s)``); if ``crop_size`` is set,
    padding at the bottom / right up to the crop size (label: ``ignore_index``, instances: 0,
    image: ``MEAN``, i.e. 0 after normalisation) followed by a uniformly random crop; random
    horizontal flip with probability 0.5 when ``flip``; normalisation. Evaluation
    (``train=False``): only the optional ``base_size`` resize (image bilinear, label and
    instances nearest) and normalisation; no randomness.

    The draws are, in order: scale, crop top, crop left, flip (the crop draws only when a crop
    is made, the flip draw only when ``flip``), so the output is a pure function of the inputs
    and the generator state.

    Attributes:
        crop_size: Training crop (H, W), or None for no crop.
        scale_range: Bounds (low, high) of the uniform random scale factor.
        flip: Random horizontal flip during training.
        train: Training (random) or evaluation (deterministic) mode.
        ignore_index: Label value used to pad the label.
        base_size: Optional (H, W) every image is resized to before anything else.
    """

    crop_size: tuple[int, int] | None
    scale_range: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    train: bool = True
    ignore_index: int = 255
    base_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        _check_size(self.crop_size, "crop_size")
        _check_size(self.base_size, "base_size")
        lo, hi = self.scale_range
        if not (0 < lo <= hi):
            raise ValueError(f"SegTransform.scale_range must satisfy 0 < low <= high, got {self.scale_range!r}")
        if not 0 <= self.ignore_index <= 255:
            raise ValueError(f"SegTransform.ignore_index must be in 0..255, got {self.ignore_index}")

    def __call__(
        self,
        image: np.ndarray,
        label: np.ndarray,
        rng: np.random.Generator,
        instances: np.ndarray | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Transform one sample.

        Args:
            image: HxWx3 uint8 RGB image.
            label: HxW integer label map (train ids, ``ignore_index`` = ignored).
            rng: Source of every random draw (unused in evaluation mode).
            instances: Optional HxW integer instance map (0 = no instance).

        Returns:
            ``(image, label, instances)``: a float32 3xHxW normalised tensor, an int64 HxW tensor
            and an int64 HxW tensor (None when ``instances`` is None), all of the same H, W.

        Raises:
            ValueError: If the array shapes or dtypes are not as described above.
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be an HxWx3 uint8 array, got shape {image.shape} dtype {image.dtype}")
        if label.shape != image.shape[:2] or not np.issubdtype(label.dtype, np.integer):
            raise ValueError(
                f"label must be an integer array of shape {image.shape[:2]}, "
                f"got shape {label.shape} dtype {label.dtype}"
            )
        if instances is not None and (
            instances.shape != image.shape[:2] or not np.issubdtype(instances.dtype, np.integer)
        ):
            raise ValueError(
                f"instances must be an integer array of shape {image.shape[:2]}, "
                f"got shape {instances.shape} dtype {instances.dtype}"
            )

        if self.base_size is not None:
            image = _resize_image(image, self.base_size)
            label = _resize_nearest(label, self.base_size)
            if instances is not None:
                instances = _resize_nearest(instances, self.base_size)

        if not self.train:
            return _to_tensors(normalize(image), label, instances)

        h, w = image.shape[:2]
        scale = float(rng.uniform(self.scale_range[0], self.scale_range[1]))
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        image = _resize_image(image, size)
        label = _resize_nearest(label, size)
        if instances is not None:
            instances = _resize_nearest(instances, size)

        img = normalize(image)  # padding with 0 here == padding the raw image with MEAN
        if self.crop_size is not None:
            ch, cw = self.crop_size
            img = _pad_to(img, self.crop_size, 0.0)
            label = _pad_to(label, self.crop_size, self.ignore_index)
            if instances is not None:
                instances = _pad_to(instances, self.crop_size, 0)
            ph, pw = label.shape
            top = int(rng.integers(0, ph - ch + 1))
            left = int(rng.integers(0, pw - cw + 1))
            img = img[top : top + ch, left : left + cw]
            label = label[top : top + ch, left : left + cw]
            if instances is not None:
                instances = instances[top : top + ch, left : left + cw]

        if self.flip and rng.random() < 0.5:
            img = img[:, ::-1]
            label = label[:, ::-1]
            if instances is not None:
                instances = instances[:, ::-1]

        return _to_tensors(img, label, instances)


def _to_tensors(
    img: np.ndarray, label: np.ndarray, instances: np.ndarray | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """HxWx3 float image, HxW label / instances -> contiguous 3xHxW float32, HxW int64 tensors."""
    img_t = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32))
    label_t = torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64))
    inst_t = None if instances is None else torch.from_numpy(np.ascontiguousarray(instances, dtype=np.int64))
    return img_t, label_t, inst_t
