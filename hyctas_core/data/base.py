"""Common base of the segmentation datasets: sample format, deterministic augmentation, errors.

Sample format (``dataset[i]``, a dict):

* ``"image"``: float32 tensor 3xHxW, RGB normalised with :data:`~hyctas_core.data.transforms.MEAN`
  / :data:`~hyctas_core.data.transforms.STD`;
* ``"label"``: int64 tensor HxW of train ids ``0..num_classes-1``, ``ignore_index`` (255) for
  ignored / void / padded pixels;
* ``"name"``: str, a stable identifier of the sample (e.g. ``frankfurt_000000_000294``);
* ``"instances"`` (only with ``return_instances=True``): int64 tensor HxW, a per-image instance
  index map: 0 = no instance (stuff, void, ignored thing classes, crowd regions, padding) and
  ``1..K`` = the K instances of the image. It is *not* the raw Cityscapes ``label_id*1000+k``
  encoding; the class of instance k is the label under its pixels, and
  :meth:`SegmentationDataset.semantic_for_instance` gives the index -> train id table of the
  un-augmented sample.

Augmentation is deterministic: item ``i`` is transformed with
``np.random.default_rng([seed, epoch, i])``, so any DataLoader order and worker count yields
identical samples. Call :meth:`SegmentationDataset.set_epoch` before creating each epoch's
DataLoader iterator (worker processes copy the dataset when the iterator starts; with
``persistent_workers=True`` they would not see a later ``set_epoch``).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from hyctas_core.data.labels import IGNORE_INDEX
from hyctas_core.data.transforms import SegTransform

__all__ = [
    "DatasetError",
    "RawSample",
    "SegmentationDataset",
    "check_same_size",
    "label_frequencies",
    "load_rgb",
    "load_single_channel",
    "subset_indices",
]

_SINGLE_CHANNEL_MODES = frozenset({"L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N"})


class DatasetError(ValueError):
    """A problem with the data on disk (missing file, bad format, unknown label value)."""


@dataclass(frozen=True)
class RawSample:
    """One un-augmented sample as decoded from disk.

    Attributes:
        image: HxWx3 uint8 RGB image.
        label: HxW uint8 train-id map (``ignore_index`` for ignored pixels).
        name: Stable sample identifier.
        instances: HxW int32 instance index map (0 = none, 1..K), or None when not requested.
        instance_classes: Train id of each instance index 1..K, or None when not requested.
    """

    image: np.ndarray
    label: np.ndarray
    name: str
    instances: np.ndarray | None = None
    instance_classes: dict[int, int] | None = None


def load_rgb(path: Path) -> np.ndarray:
    """Read an image file as an HxWx3 uint8 RGB array.

    Raises:
        DatasetError: If the file is missing or cannot be decoded.
    """
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file not found") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read image ({exc})") from None


def load_single_channel(path: Path, what: str) -> np.ndarray:
    """Read a single-channel PNG (mode L, P, I or I;16) as an HxW integer array.

    Args:
        path: The PNG file.
        what: What the file holds, for error messages (e.g. ``"label"``).

    Raises:
        DatasetError: If the file is missing, cannot be decoded, or is not single-channel.
    """
    try:
        with Image.open(path) as im:
            if im.mode not in _SINGLE_CHANNEL_MODES:
                raise DatasetError(
                    f"{path}: {what} PNG must be single-channel (mode L, P, I or I;16), got mode {im.mode!r} "
                    f"with {len(im.getbands())} bands"
                )
            return np.asarray(im)
    except FileNotFoundError:
        raise DatasetError(f"{path}: {what} file not found") from None
    except DatasetError:
        raise
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read {what} PNG ({exc})") from None


def check_same_size(image: np.ndarray, other: np.ndarray, image_path: Path, other_path: Path) -> None:
    """Check that a label / instance map has the image's height and width.

    Raises:
        DatasetError: If ``other`` is not the size of ``image`` (names ``other_path``).
    """
    if other.shape[:2] != image.shape[:2]:
        raise DatasetError(
            f"{other_path}: size {other.shape[1]}x{other.shape[0]} (WxH) does not match image {image_path} "
            f"of size {image.shape[1]}x{image.shape[0]}"
        )


class SegmentationDataset(Dataset[dict[str, Any]], abc.ABC):
    """Abstract base of the segmentation datasets (see the module docstring for the sample dict).

    Subclasses set ``_names`` (one per sample, in index order) and ``_class_names`` (one per
    train id) and implement :meth:`load` (decode sample i from disk, un-augmented). Instance
    support is optional: a dataset without instances returns all-zero maps.

    Args:
        transform: The augmentation; None = evaluation transform (normalisation only).
        return_instances: Add the ``"instances"`` map to each sample.
        seed: Base seed (>= 0) of the per-item random generators.
        limit: Keep only the first ``limit`` samples (each subclass says in which order), or None.

    Raises:
        ValueError: If ``seed`` is negative, ``limit`` is not positive, or the transform's
            ignore index differs from the dataset's.
    """

    ignore_index: int = IGNORE_INDEX
    _names: tuple[str, ...]
    _class_names: tuple[str, ...]

    def __init__(
        self,
        transform: SegTransform | None = None,
        return_instances: bool = False,
        seed: int = 0,
        limit: int | None = None,
    ) -> None:
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be a positive number of images or None, got {limit}")
        self.limit = limit  # a subclass keeps only the first ``limit`` samples
        self.transform = transform if transform is not None else SegTransform(crop_size=None, train=False)
        if self.transform.ignore_index != self.ignore_index:
            raise ValueError(
                f"transform.ignore_index {self.transform.ignore_index} differs from the dataset's "
                f"ignore index {self.ignore_index}"
            )
        self.return_instances = return_instances
        self.seed = int(seed)
        self.epoch = 0

    @property
    def num_classes(self) -> int:
        """Number of train classes (label values ``0..num_classes-1``)."""
        return len(self._class_names)

    @property
    def class_names(self) -> tuple[str, ...]:
        """Name of each train id."""
        return self._class_names

    @property
    def names(self) -> tuple[str, ...]:
        """The sample names, in index order."""
        return self._names

    def __len__(self) -> int:
        """Number of samples."""
        return len(self._names)

    @abc.abstractmethod
    def load(self, index: int, instances: bool = False) -> RawSample:
        """Decode sample ``index`` (0 <= index < len) from disk, without augmentation.

        Args:
            index: Sample index.
            instances: Also decode the instance map and the instance classes.

        Raises:
            DatasetError: If a file is missing or malformed.
        """

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentation draws the next samples use.

        Raises:
            ValueError: If ``epoch`` is negative.
        """
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def _index(self, index: int) -> int:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} samples")
        return index % n

    def rng_for(self, index: int) -> np.random.Generator:
        """The random generator of item ``index`` in the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, self._index(index)])

    def semantic_for_instance(self, index: int) -> dict[int, int]:
        """Train id of each instance index 1..K of sample ``index`` (un-augmented)."""
        raw = self.load(self._index(index), instances=True)
        return dict(raw.instance_classes or {})

    def __getitem__(self, index: int) -> dict[str, Any]:
        """The augmented sample ``index`` as a dict (see the module docstring)."""
        i = self._index(index)
        raw = self.load(i, instances=self.return_instances)
        image, label, instances = self.transform(raw.image, raw.label, self.rng_for(i), raw.instances)
        sample: dict[str, Any] = {"image": image, "label": label, "name": raw.name}
        if self.return_instances:
            if instances is None:
                instances = torch.zeros_like(label)
            sample["instances"] = instances
        return sample


def subset_indices(n: int, k: int, seed: int, stream: int) -> list[int]:
    """A fixed, seeded choice of ``min(k, n)`` indices out of ``n`` (sorted)."""
    k = min(k, n)
    return sorted(np.random.default_rng([seed, stream]).choice(n, size=k, replace=False).tolist())


def _segmentation_base(dataset: Any) -> SegmentationDataset | None:
    """The :class:`SegmentationDataset` under ``dataset`` (wrappers keep it as ``.dataset``)."""
    for _ in range(8):
        if isinstance(dataset, SegmentationDataset):
            return dataset
        dataset = getattr(dataset, "dataset", None)
    return None


def label_frequencies(dataset: Any, num_classes: int, *, max_images: int = 256, seed: int = 0) -> np.ndarray:
    """The share of each train id among the labelled pixels of ``dataset``.

    Reads the label maps of at most ``max_images`` images, a fixed seeded subset when there are
    more: the un-augmented ones (:meth:`SegmentationDataset.load`) where ``dataset`` is, or
    wraps as ``.dataset``, a :class:`SegmentationDataset`; else ``dataset[i]["label"]``.

    Returns:
        float64 array ``(num_classes,)`` summing to 1.

    Raises:
        DatasetError: if no image has a labelled pixel.
    """
    base = _segmentation_base(dataset)
    indices = subset_indices(len(base if base is not None else dataset), max_images, seed, stream=11)
    counts = np.zeros(num_classes, np.int64)
    for i in indices:
        label = np.asarray(base.load(i).label if base is not None else dataset[i]["label"])
        valid = label[(label >= 0) & (label < num_classes)].astype(np.int64)
        counts += np.bincount(valid.ravel(), minlength=num_classes)
    total = int(counts.sum())
    if total == 0:
        raise DatasetError(f"no labelled pixels in the {len(indices)} label maps read")
    return counts / total
