"""Panoptic quality of a network with a panoptic head, through the project's own PQ metric.

Ground truth comes from a dataset's semantic label and instance map (the form every loader
returns with ``return_instances=True``): each instance is a segment of the class most of its
pixels carry, the pixels of a thing class without an instance form one crowd segment per
class (Cityscapes' panoptic conversion does the same), each stuff class present is one
segment, and ignored pixels are void. Predictions come from :func:`~hyctas_core.panoptic.
postprocess.postprocess`. Both are written in the COCO panoptic format (RGB-encoded PNGs and a
JSON each) and scored by :func:`hyctas_core.metrics.pq_compute` (panopticapi matching rules).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from hyctas_core.config import PanopticConfig
from hyctas_core.metrics import ConfusionMatrix, PanopticResult, pq_compute
from hyctas_core.panoptic.postprocess import Segment, postprocess, semantic_argmax, to_coco_panoptic

__all__ = ["PanopticEvaluation", "evaluate_panoptic", "panoptic_from_labels", "write_coco_panoptic"]


def panoptic_from_labels(
    label: torch.Tensor, instances: torch.Tensor, *, thing_ids: Sequence[int], ignore_index: int = 255
) -> tuple[torch.Tensor, list[Segment]]:
    """The ground-truth panoptic segmentation of a semantic label and an instance map.

    Args:
        label: (H, W) train ids, ``ignore_index`` = void.
        instances: (H, W) instance indices, 0 = none.
        thing_ids: train ids with instances.
        ignore_index: the void label.

    Returns:
        ``(ids, segments)`` as :func:`~hyctas_core.panoptic.postprocess.postprocess` returns
        them: instances (by index), then crowd regions, then stuff (by train id).
    """
    sem = label.long()
    valid = sem != ignore_index
    num_classes = max(int(sem[valid].max()) + 1 if bool(valid.any()) else 1, max(thing_ids, default=-1) + 1)
    sem = torch.where(valid, sem, 0)
    is_thing = torch.zeros(num_classes, dtype=torch.bool)
    is_thing[list(thing_ids)] = True
    inst = torch.where(valid, instances.long(), 0)
    k = int(inst.max()) if inst.numel() else 0
    thing = is_thing[sem] & valid
    raw = inst.clone()  # 1..K instances; K+1+c crowd of class c; K+1+C+c stuff c; 0 void
    raw = torch.where(thing & (inst == 0), sem + k + 1, raw)
    raw = torch.where(valid & ~is_thing[sem], sem + k + 1 + num_classes, raw)
    on_instance = inst > 0
    votes = torch.bincount(inst[on_instance] * num_classes + sem[on_instance], minlength=(k + 1) * num_classes)
    instance_class = votes.view(k + 1, num_classes).argmax(dim=1).tolist()
    counts = torch.bincount(raw.flatten(), minlength=k + 1 + 2 * num_classes)
    present = counts > 0
    present[0] = False
    lut = torch.zeros_like(counts)
    lut[present] = torch.arange(1, int(present.sum()) + 1)
    segments: list[Segment] = []
    for j in torch.nonzero(present).flatten().tolist():
        n, area = len(segments) + 1, int(counts[j])
        if j <= k:
            segments.append(Segment(n, instance_class[j], True, area))
        elif j <= k + num_classes:
            segments.append(Segment(n, j - k - 1, True, area, iscrowd=True))
        else:
            segments.append(Segment(n, j - k - 1 - num_classes, False, area))
    return lut[raw].to(torch.int32), segments


def write_coco_panoptic(
    folder: Path,
    file_name: str,
    ids: torch.Tensor,
    segments: Sequence[Segment],
    *,
    image_id: int | str,
    category_ids: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Write ``folder/file_name`` (RGB-encoded ids) and return its COCO ``annotations`` entry."""
    rgb, info = to_coco_panoptic(ids, segments, category_ids)
    Image.fromarray(rgb).save(folder / file_name)
    return {"image_id": image_id, "file_name": file_name, "segments_info": info}


@dataclass(frozen=True)
class PanopticEvaluation:
    """PQ / SQ / RQ (all, things, stuff, per class) and the semantic confusion matrix.

    Attributes:
        result: the PQ matching counts (:func:`hyctas_core.metrics.pq_compute`).
        confusion: semantic confusion matrix of the argmax predictions (mIoU).
        postprocess_ms: median post-processing time per image, milliseconds.
    """

    result: PanopticResult
    confusion: ConfusionMatrix
    postprocess_ms: float

    @property
    def pq(self) -> float:
        """PQ over all categories (0-1; NaN without any segment)."""
        return self.result.all.pq

    def to_dict(self) -> dict[str, Any]:
        """``pq``, ``sq``, ``rq`` (all categories), ``things``, ``stuff``, ``per_class``, ``miou``, ..."""
        res = self.result.to_dict()
        miou = self.confusion.miou
        return {
            **{k: res["all"][k] for k in ("pq", "sq", "rq")},
            "things": res["things"],
            "stuff": res["stuff"],
            "miou": None if np.isnan(miou) else float(miou),
            "num_images": res["num_images"],
            "postprocess_ms": round(self.postprocess_ms, 3),
            "per_class": res["per_class"],
        }


@torch.no_grad()
def evaluate_panoptic(
    model: nn.Module,
    dataset: Dataset[dict[str, Any]],
    *,
    cfg: PanopticConfig,
    num_classes: int,
    indices: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    category_ids: Sequence[int] | None = None,
    device: torch.device | str = "cpu",
    out_dir: Path | None = None,
    ignore_index: int = 255,
) -> PanopticEvaluation:
    """Score ``model``'s panoptic predictions on ``dataset[indices]`` (batch 1).

    Args:
        model: returns ``{"out", "center", "offset"}`` (a network with a panoptic head).
        dataset: items with ``"image"``, ``"label"`` and ``"instances"``.
        cfg: thing ids and post-processing settings.
        num_classes: number of train ids.
        indices: the items to score; default all.
        class_names: category names (default ``class_<id>``).
        category_ids: category id of each train id in the written JSON (default the train id).
        device: where the model runs.
        out_dir: keep the COCO panoptic files here (``panoptic_{gt,pred}.json`` and the
            ``panoptic_{gt,pred}/`` PNG folders); default a temporary directory.
        ignore_index: the void label.

    Returns:
        The evaluation.

    Raises:
        ValueError: items without instance maps, or a model without a panoptic head.
    """
    model.eval()
    names = list(class_names) if class_names is not None else [f"class_{t}" for t in range(num_classes)]
    cats = list(category_ids) if category_ids is not None else list(range(num_classes))
    if len(names) != num_classes or len(cats) != num_classes:
        raise ValueError(f"need {num_classes} class names and category ids, got {len(names)} and {len(cats)}")
    things = set(cfg.thing_ids)
    categories = [{"id": cats[t], "name": names[t], "isthing": int(t in things)} for t in range(num_classes)]
    order = list(indices) if indices is not None else list(range(len(dataset)))  # type: ignore[arg-type]
    loader = DataLoader(dataset, batch_size=1, sampler=order, num_workers=0)
    confusion = ConfusionMatrix(num_classes, ignore_index=ignore_index)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(out_dir) if out_dir is not None else Path(tmp)
        gt_dir, pred_dir = root / "panoptic_gt", root / "panoptic_pred"
        gt_dir.mkdir(parents=True, exist_ok=True)
        pred_dir.mkdir(parents=True, exist_ok=True)
        gt_anns, pred_anns, images, times = [], [], [], []
        for index, batch in zip(order, loader, strict=True):
            if "instances" not in batch:
                raise ValueError(
                    "panoptic evaluation needs instance maps: build the dataset with return_instances=True"
                )
            out = model(batch["image"].to(device))
            if "center" not in out or "offset" not in out:
                raise ValueError("the network has no panoptic head: its output lacks 'center' and 'offset'")
            t0 = time.perf_counter()
            semantic = semantic_argmax(out["out"][0])
            ids, segments = postprocess(
                semantic,
                out["center"][0],
                out["offset"][0],
                thing_ids=cfg.thing_ids,
                threshold=cfg.center_threshold,
                nms_kernel=cfg.nms_kernel,
                top_k=cfg.top_k,
                stuff_area=cfg.stuff_area,
            )
            times.append((time.perf_counter() - t0) * 1000)
            label = batch["label"][0]
            confusion.update(semantic[None].cpu(), batch["label"])
            gt_ids, gt_segments = panoptic_from_labels(
                label, batch["instances"][0], thing_ids=cfg.thing_ids, ignore_index=ignore_index
            )
            name = str(batch["name"][0]) if "name" in batch else f"image_{index}"
            file_name = f"{index:06d}_{name}.png"
            h, w = label.shape
            images.append({"id": index, "file_name": f"{index:06d}_{name}", "height": h, "width": w})
            gt_anns.append(
                write_coco_panoptic(gt_dir, file_name, gt_ids, gt_segments, image_id=index, category_ids=cats)
            )
            pred_anns.append(
                write_coco_panoptic(pred_dir, file_name, ids.cpu(), segments, image_id=index, category_ids=cats)
            )
        gt_json, pred_json = root / "panoptic_gt.json", root / "panoptic_pred.json"
        gt_json.write_text(json.dumps({"images": images, "annotations": gt_anns, "categories": categories}))
        pred_json.write_text(json.dumps({"images": images, "annotations": pred_anns, "categories": categories}))
        result = pq_compute(gt_json, gt_dir, pred_json, pred_dir)
    return PanopticEvaluation(result, confusion, statistics.median(times) if times else 0.0)
