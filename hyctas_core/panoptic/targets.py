"""Training targets of the Panoptic-DeepLab heads, computed from a semantic label and an instance map.

For every instance (pixels of one index ``k >= 1`` of the instance map) its centre is the mean
of its pixel coordinates, rounded to the nearest pixel. Targets (Cheng et al., arXiv 1911.10194):

- ``center`` (1, H, W): the maximum over instances of ``exp(-d^2 / (2 sigma^2))``, ``d`` the
  distance to the instance centre (0 beyond ``ceil(3 sigma)`` pixels along either axis), so
  each centre pixel holds exactly 1;
- ``offset`` (2, H, W): ``(cy - y, cx - x)`` on the pixels of each instance, 0 elsewhere.
  Offsets point at the same integer pixel that carries the heatmap peak, so a perfect
  prediction groups every pixel exactly (detectron2 points them at the unrounded mean);
- ``center_weights`` (H, W): 1, except 0 on ignored pixels and on crowd regions (pixels of a
  thing class without an instance index, e.g. Cityscapes groups such as ``car`` id 26);
- ``offset_weights`` (H, W): 1 on instance pixels only (``ignore_stuff_in_offset``), else
  ``center_weights``;
- ``semantic_weights`` (H, W): ``small_instance_weight`` on the pixels of instances smaller
  than ``small_instance_area`` pixels, 1 elsewhere (the semantic loss multiplies by it).

Targets are computed after augmentation (crop, scale, flip), from the sample's own maps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from hyctas_core.config import PanopticConfig

__all__ = ["TARGET_KEYS", "PanopticTargetDataset", "PanopticTargets", "instance_centers", "make_targets"]

TARGET_KEYS = ("center", "center_weights", "offset", "offset_weights", "semantic_weights")


@dataclass(frozen=True)
class PanopticTargets:
    """Targets of one sample (see the module docstring); ``centers`` is (K, 2) int64 (y, x)."""

    center: torch.Tensor
    center_weights: torch.Tensor
    offset: torch.Tensor
    offset_weights: torch.Tensor
    semantic_weights: torch.Tensor
    centers: torch.Tensor

    def as_dict(self) -> dict[str, torch.Tensor]:
        """The per-pixel targets, keyed as in a training batch (:data:`TARGET_KEYS`)."""
        return {k: getattr(self, k) for k in TARGET_KEYS}


def instance_centers(instances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rounded centres of mass and areas of instances ``1..K`` of an (H, W) index map.

    Returns:
        ``(centers, areas)``: (K + 1, 2) int64 (y, x) and (K + 1,) int64, indexed by instance
        (row 0 = background); an index with no pixels has area 0 and centre (0, 0).
    """
    h, w = instances.shape
    flat = instances.reshape(-1).long()
    k = int(flat.max()) if flat.numel() else 0
    ys = torch.arange(h, dtype=torch.float64).repeat_interleave(w)
    xs = torch.arange(w, dtype=torch.float64).repeat(h)
    areas = torch.bincount(flat, minlength=k + 1)
    denom = areas.clamp(min=1).double()
    cy = torch.bincount(flat, weights=ys, minlength=k + 1) / denom
    cx = torch.bincount(flat, weights=xs, minlength=k + 1) / denom
    centers = torch.stack([cy, cx], dim=1).round().long()  # float64 means: exact up to huge images
    return centers, areas


def _gaussian_patch(cy: int, cx: int, h: int, w: int, sigma: float) -> tuple[slice, slice, torch.Tensor]:
    r = math.ceil(3 * sigma)
    y0, y1, x0, x1 = max(cy - r, 0), min(cy + r + 1, h), max(cx - r, 0), min(cx + r + 1, w)
    dy = (torch.arange(y0, y1, dtype=torch.float32) - cy).square()
    dx = (torch.arange(x0, x1, dtype=torch.float32) - cx).square()
    return slice(y0, y1), slice(x0, x1), torch.exp(-(dy[:, None] + dx[None, :]) / (2 * sigma**2))


def make_targets(
    label: torch.Tensor,
    instances: torch.Tensor,
    *,
    thing_ids: Sequence[int],
    sigma: float = 8.0,
    small_instance_area: int = 4096,
    small_instance_weight: float = 3.0,
    ignore_stuff_in_offset: bool = True,
    ignore_index: int = 255,
) -> PanopticTargets:
    """Panoptic-DeepLab targets of one sample.

    Args:
        label: (H, W) integer train ids, ``ignore_index`` = ignored.
        instances: (H, W) integer instance indices, 0 = no instance, 1..K (gaps allowed).
        thing_ids: train ids with instances; their pixels without an instance are crowd.
        sigma: standard deviation of the centre Gaussians, pixels.
        small_instance_area / small_instance_weight: semantic weight of small instances.
        ignore_stuff_in_offset: learn offsets on instance pixels only.
        ignore_index: the ignored label.

    Returns:
        The targets (see the module docstring).

    Raises:
        ValueError: the maps differ in shape or the instance map has negative values.
    """
    if label.shape != instances.shape or label.dim() != 2:
        raise ValueError(
            f"label and instances must be (H, W) maps of one shape, got {label.shape} and {instances.shape}"
        )
    inst = instances.long()
    if inst.numel() and int(inst.min()) < 0:
        raise ValueError("instance indices must be >= 0 (0 = no instance)")
    h, w = label.shape
    centers, areas = instance_centers(inst)
    present = torch.nonzero(areas[1:] > 0).flatten() + 1
    center = torch.zeros(h, w)
    for k in present.tolist():
        ys, xs, patch = _gaussian_patch(int(centers[k, 0]), int(centers[k, 1]), h, w, sigma)
        region = center[ys, xs]  # a view: overlapping instances keep the larger value
        region.copy_(torch.maximum(region, patch))
    on_instance = inst > 0
    yy = torch.arange(h).view(h, 1).expand(h, w)
    xx = torch.arange(w).view(1, w).expand(h, w)
    offset = torch.stack([centers[inst, 0] - yy, centers[inst, 1] - xx]).float()  # (2, H, W)
    offset *= on_instance
    valid = label != ignore_index
    is_thing = torch.isin(label, torch.tensor(sorted(thing_ids), dtype=label.dtype))
    center_weights = (valid & ~(is_thing & ~on_instance)).float()
    offset_weights = (on_instance & valid).float() if ignore_stuff_in_offset else center_weights.clone()
    small = (areas < small_instance_area) & (areas > 0)
    small[0] = False
    semantic_weights = torch.where(small[inst], small_instance_weight, 1.0).float()
    return PanopticTargets(
        center=center.unsqueeze(0),
        center_weights=center_weights,
        offset=offset,
        offset_weights=offset_weights,
        semantic_weights=semantic_weights,
        centers=centers[present],
    )


class PanopticTargetDataset(Dataset[dict[str, Any]]):
    """Adds the panoptic targets (:data:`TARGET_KEYS`) to the items of a dataset.

    Args:
        dataset: items with ``"label"`` and ``"instances"`` (a segmentation dataset built with
            ``return_instances=True``); ``set_epoch`` is passed on.
        cfg: target settings (thing ids, sigma, small-instance weighting).
        ignore_index: the ignored label.
    """

    def __init__(self, dataset: Dataset[dict[str, Any]], cfg: PanopticConfig, ignore_index: int = 255) -> None:
        self.dataset, self.cfg, self.ignore_index = dataset, cfg, ignore_index

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.dataset[index])
        if "instances" not in item:
            raise ValueError("panoptic targets need instance maps: build the dataset with return_instances=True")
        targets = make_targets(
            item["label"],
            item["instances"],
            thing_ids=self.cfg.thing_ids,
            sigma=self.cfg.sigma,
            small_instance_area=self.cfg.small_instance_area,
            small_instance_weight=self.cfg.small_instance_weight,
            ignore_stuff_in_offset=self.cfg.ignore_stuff_in_offset,
            ignore_index=self.ignore_index,
        )
        item.update(targets.as_dict())
        return item
