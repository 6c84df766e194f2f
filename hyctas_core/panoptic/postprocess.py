"""Panoptic-DeepLab post-processing: centre keypoints, pixel grouping, majority-vote fusion.

From the semantic logits, the centre heatmap and the offsets of one image (all at input size):

1. semantic map = argmax of the logits;
2. centres = local maxima of the heatmap (max-pool NMS over ``nms_kernel`` pixels) above
   ``threshold``, the ``top_k`` strongest; the max-pool comparison is evaluated only at the
   pixels above the threshold when they are few (the usual case), else over the whole map;
3. every pixel of a thing class votes for the centre nearest to ``pixel + offset`` (a distance
   argmin computed in chunks of pixels, so memory stays bounded);
4. each instance takes the class most of its pixels have (majority vote);
5. every stuff class covering at least ``stuff_area`` pixels is one segment; thing pixels when
   there is no centre, and smaller stuff regions, stay void.

The result is a map of segment ids (0 = void, 1..N) plus one :class:`Segment` per id: the form
of the COCO panoptic format, which :func:`to_coco_panoptic` and :func:`encode_panoptic_png` write
(RGB-encoded id PNG + ``segments_info``). Everything is vectorised torch and runs on the device
of its inputs.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hyctas_core.config import PanopticConfig

__all__ = [
    "Segment",
    "encode_panoptic_png",
    "find_centers",
    "group_pixels",
    "id_to_rgb",
    "postprocess",
    "postprocess_batch",
    "segments_info",
    "semantic_argmax",
    "to_coco_panoptic",
]

# Distances computed at once while grouping: pixels x centres (4 bytes each, 16 MiB).
_CHUNK_ELEMENTS = 1 << 22


def semantic_argmax(logits: torch.Tensor) -> torch.Tensor:
    """``logits.argmax(0)`` of (C, H, W) logits, several times faster on CPU (same result, ties included).

    torch's CPU argmax over a leading dimension is not vectorised; ``amax`` is. The first class
    reaching the maximum gets the largest weight ``C - c``, so ``C - amax(weight * is_max)`` is the
    first maximal class, as ``argmax`` returns. NaN logits give class ``C - 1``.
    """
    c = logits.shape[0]
    if logits.device.type != "cpu" or logits.stride(0) == 1:  # GPU, or channels-last: argmax is fast
        return logits.argmax(0)
    best = logits.amax(0)  # (H, W)
    dtype = torch.uint8 if c < 256 else torch.int32
    weight = torch.arange(c, 0, -1, dtype=dtype, device=logits.device).view(c, 1, 1)
    first = (logits == best) * weight  # (C, H, W): C - c where class c is maximal, else 0
    return (c - first.amax(0).long()).clamp_(max=c - 1)


def _is_local_max(heat: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, kernel: int) -> torch.Tensor:
    """Whether ``heat[ys, xs]`` equals the max of its ``kernel`` x ``kernel`` window (padding -inf).

    The same test as comparing with ``max_pool2d(heat, kernel, 1, kernel // 2)``, evaluated at the
    given pixels only: after thresholding they are few, so this is much cheaper than pooling the
    whole map.
    """
    r = kernel // 2
    padded = F.pad(heat, (r, r, r, r), value=-math.inf)
    d = torch.arange(-r, r + 1, device=heat.device)
    dy, dx = d.repeat_interleave(kernel), d.repeat(kernel)  # (k*k,) window offsets
    local = torch.empty(len(ys), dtype=torch.bool, device=heat.device)
    step = max(1, _CHUNK_ELEMENTS // (kernel * kernel))
    for s in range(0, len(ys), step):
        y, x = ys[s : s + step, None] + r + dy, xs[s : s + step, None] + r + dx  # (n, k*k)
        local[s : s + step] = heat[ys[s : s + step], xs[s : s + step]] >= padded[y, x].amax(dim=1)
    return local


@dataclass(frozen=True)
class Segment:
    """One segment of a panoptic id map.

    Attributes:
        id: the segment's value in the id map (1..N).
        category: its train id.
        isthing: an instance of a thing class (False: a stuff region, or a crowd region).
        area: pixels.
        iscrowd: a crowd region (ground truth only).
        score: the centre heatmap value of a predicted instance, else None.
    """

    id: int
    category: int
    isthing: bool
    area: int
    iscrowd: bool = False
    score: float | None = None


def find_centers(
    center: torch.Tensor, *, threshold: float = 0.1, nms_kernel: int = 7, top_k: int = 200
) -> tuple[torch.Tensor, torch.Tensor]:
    """Instance centres: local maxima of a heatmap above ``threshold``, strongest first.

    Args:
        center: (H, W) or (1, H, W) heatmap.
        threshold: keep maxima strictly above it.
        nms_kernel: odd size of the max-pool window a maximum must dominate.
        top_k: keep at most this many.

    Returns:
        ``(centers, scores)``: (K, 2) int64 (y, x) and (K,) heatmap values, by decreasing score
        (ties: row-major order).

    Raises:
        ValueError: ``nms_kernel`` is not odd and positive.
    """
    if nms_kernel < 1 or nms_kernel % 2 == 0:
        raise ValueError(f"nms_kernel must be an odd number >= 1, got {nms_kernel}")
    heat = center.reshape(center.shape[-2], center.shape[-1]).float()
    ys, xs = (heat > threshold).nonzero(as_tuple=True)
    if len(ys) * nms_kernel**2 <= 4 * heat.numel():  # few candidates: test their windows only
        keep = _is_local_max(heat, ys, xs, nms_kernel)
    else:  # max-pool NMS over the whole map; separable, as the max over a square window is
        r = nms_kernel // 2
        pooled = F.max_pool2d(heat[None, None], (1, nms_kernel), stride=1, padding=(0, r))
        pooled = F.max_pool2d(pooled, (nms_kernel, 1), stride=1, padding=(r, 0))[0, 0]
        keep = heat[ys, xs] == pooled[ys, xs]
    ys, xs = ys[keep], xs[keep]
    scores = heat[ys, xs]
    order = torch.sort(scores, descending=True, stable=True).indices[:top_k]
    return torch.stack([ys[order], xs[order]], dim=1), scores[order]


def group_pixels(
    offset: torch.Tensor, centers: torch.Tensor, mask: torch.Tensor, *, chunk_elements: int = _CHUNK_ELEMENTS
) -> torch.Tensor:
    """Assign every ``mask`` pixel to the centre nearest to where its offset points.

    Args:
        offset: (2, H, W) offsets (dy, dx) in pixels, from each pixel to its centre.
        centers: (K, 2) centres (y, x), K >= 1.
        mask: (H, W) bool, the pixels to group.
        chunk_elements: pixels x centres distances computed at once (bounds memory).

    Returns:
        (H, W) int64: ``k + 1`` for a pixel assigned to ``centers[k]``, 0 off the mask. Ties go
        to the earlier centre.
    """
    h, w = mask.shape
    ys, xs = mask.nonzero(as_tuple=True)
    points = torch.stack([ys, xs], dim=1).to(offset.dtype) + offset[:, ys, xs].t()  # (N, 2): where offsets point
    targets = centers.to(offset.dtype)
    nearest = torch.empty_like(ys)
    step = max(1, chunk_elements // max(len(centers), 1))
    for s in range(0, len(ys), step):
        # direct differences, not the matmul expansion, whose rounding at image-sized
        # coordinates could pick a farther centre
        d = torch.cdist(points[s : s + step], targets, compute_mode="donot_use_mm_for_euclid_dist")  # (n, K)
        nearest[s : s + step] = d.argmin(dim=1)
    out = torch.zeros(h, w, dtype=torch.long, device=mask.device)
    out[ys, xs] = nearest + 1
    return out


def postprocess(
    semantic: torch.Tensor,
    center: torch.Tensor,
    offset: torch.Tensor,
    *,
    thing_ids: Sequence[int],
    threshold: float = 0.1,
    nms_kernel: int = 7,
    top_k: int = 200,
    stuff_area: int = 2048,
    chunk_elements: int = _CHUNK_ELEMENTS,
) -> tuple[torch.Tensor, list[Segment]]:
    """The panoptic segmentation of one image (see the module docstring).

    Args:
        semantic: (C, H, W) logits, or an (H, W) map of train ids.
        center: (1, H, W) or (H, W) centre heatmap.
        offset: (2, H, W) offsets (dy, dx) in pixels.
        thing_ids: train ids with instances.
        threshold / nms_kernel / top_k: centre keypoint selection (:func:`find_centers`).
        stuff_area: smaller stuff regions are left void.
        chunk_elements: memory bound of the grouping (:func:`group_pixels`).

    Returns:
        ``(ids, segments)``: (H, W) int32 segment ids (0 = void, 1..N) and the N segments in
        id order: instances by decreasing centre score, then stuff by train id.

    Raises:
        ValueError: the inputs differ in size.
    """
    sem = semantic_argmax(semantic) if semantic.dim() == 3 else semantic.long()
    h, w = sem.shape
    if tuple(center.shape[-2:]) != (h, w) or tuple(offset.shape) != (2, h, w):
        raise ValueError(
            f"semantic {tuple(semantic.shape)}, center {tuple(center.shape)} and offset {tuple(offset.shape)} "
            "must share one (H, W)"
        )
    device = sem.device
    num_classes = max(int(sem.max()) + 1 if sem.numel() else 1, max(thing_ids, default=-1) + 1)
    is_thing = torch.zeros(num_classes, dtype=torch.bool, device=device)
    is_thing[list(thing_ids)] = True
    thing_mask = is_thing[sem]
    centers, scores = find_centers(center, threshold=threshold, nms_kernel=nms_kernel, top_k=top_k)
    k = len(centers)
    raw = torch.zeros(h, w, dtype=torch.long, device=device)  # 0 void, 1..K instances, K+1+c stuff c
    instance_class = torch.zeros(k + 1, dtype=torch.long, device=device)
    if k and bool(thing_mask.any()):
        raw = group_pixels(offset.float(), centers, thing_mask, chunk_elements=chunk_elements)
        votes = torch.bincount(raw[thing_mask] * num_classes + sem[thing_mask], minlength=(k + 1) * num_classes)
        instance_class = votes.view(k + 1, num_classes).argmax(dim=1)  # ties: the lower train id
    areas = torch.bincount(sem.flatten(), minlength=num_classes)
    stuff_ok = ~is_thing & (areas >= max(stuff_area, 1))
    raw = torch.where(stuff_ok[sem], sem + k + 1, raw)
    counts = torch.bincount(raw.flatten(), minlength=k + 1 + num_classes)
    present = counts > 0
    present[0] = False
    lut = torch.zeros_like(counts)
    lut[present] = torch.arange(1, int(present.sum()) + 1, device=device)
    ids = lut[raw].to(torch.int32)
    segments: list[Segment] = []
    score_list, class_list, count_list = scores.tolist(), instance_class.tolist(), counts.tolist()
    for j in torch.nonzero(present).flatten().tolist():
        if j <= k:
            segments.append(Segment(len(segments) + 1, class_list[j], True, count_list[j], score=score_list[j - 1]))
        else:
            segments.append(Segment(len(segments) + 1, j - k - 1, False, count_list[j]))
    return ids, segments


def postprocess_batch(out: dict[str, torch.Tensor], cfg: PanopticConfig) -> list[tuple[torch.Tensor, list[Segment]]]:
    """:func:`postprocess` of every image of a network's output dict (``"out"``, ``"center"``, ``"offset"``)."""
    if "center" not in out or "offset" not in out:
        raise ValueError("the network has no panoptic head: its output lacks 'center' and 'offset'")
    return [
        postprocess(
            logits,
            center,
            offset,
            thing_ids=cfg.thing_ids,
            threshold=cfg.center_threshold,
            nms_kernel=cfg.nms_kernel,
            top_k=cfg.top_k,
            stuff_area=cfg.stuff_area,
        )
        for logits, center, offset in zip(out["out"], out["center"], out["offset"], strict=True)
    ]


# -- COCO panoptic format -------------------------------------------------------------------
def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """(H, W) segment ids -> (H, W, 3) uint8 RGB, ``id = R + 256 G + 256^2 B`` (COCO panoptic)."""
    v = ids.astype(np.int64)
    if v.size and (v.min() < 0 or v.max() >= 1 << 24):
        raise ValueError("segment ids must lie in 0..2^24-1 to be RGB-encoded")
    return np.stack([v % 256, v // 256 % 256, v // 65536], axis=-1).astype(np.uint8)


def segments_info(
    ids: torch.Tensor, segments: Sequence[Segment], category_ids: Sequence[int] | None = None
) -> list[dict[str, Any]]:
    """COCO ``segments_info`` of an id map: id, category_id, iscrowd, isthing, area, bbox (x, y, w, h).

    Args:
        ids: (H, W) segment ids.
        segments: the segments of ``ids``.
        category_ids: the category id of each train id (e.g. the dataset's); default: the train id.
    """
    h, w = ids.shape
    n = max((s.id for s in segments), default=0)
    flat = ids.reshape(-1).long().cpu()
    ys = torch.arange(h).repeat_interleave(w)
    xs = torch.arange(w).repeat(h)
    y0 = torch.full((n + 1,), h).scatter_reduce(0, flat, ys, "amin")
    y1 = torch.full((n + 1,), -1).scatter_reduce(0, flat, ys, "amax")
    x0 = torch.full((n + 1,), w).scatter_reduce(0, flat, xs, "amin")
    x1 = torch.full((n + 1,), -1).scatter_reduce(0, flat, xs, "amax")
    info = []
    for s in segments:
        i = s.id
        row: dict[str, Any] = {
            "id": i,
            "category_id": int(category_ids[s.category]) if category_ids is not None else s.category,
            "iscrowd": int(s.iscrowd),
            "isthing": int(s.isthing),
            "area": s.area,
            "bbox": [int(x0[i]), int(y0[i]), int(x1[i] - x0[i] + 1), int(y1[i] - y0[i] + 1)],
        }
        if s.score is not None:
            row["score"] = round(s.score, 6)
        info.append(row)
    return info


def to_coco_panoptic(
    ids: torch.Tensor, segments: Sequence[Segment], category_ids: Sequence[int] | None = None
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The COCO panoptic form of a panoptic segmentation: (H, W, 3) uint8 RGB ids and ``segments_info``."""
    return id_to_rgb(ids.cpu().numpy()), segments_info(ids, segments, category_ids)


def encode_panoptic_png(
    ids: torch.Tensor, segments: Sequence[Segment], category_ids: Sequence[int] | None = None
) -> tuple[bytes, list[dict[str, Any]]]:
    """PNG bytes of the RGB-encoded id map, and its ``segments_info`` (what a server returns).

    Args:
        ids: (H, W) segment ids from :func:`postprocess`.
        segments: its segments.
        category_ids: the category id of each train id; default: the train id.
    """
    from PIL import Image

    rgb, info = to_coco_panoptic(ids, segments, category_ids)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)  # id maps compress well even at level 1
    return buf.getvalue(), info
