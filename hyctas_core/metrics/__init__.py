"""Segmentation metrics that follow the official evaluation conventions.

* Semantic segmentation: a confusion matrix over ``num_classes`` classes with an ignore label,
  per-class IoU and mIoU as in the Cityscapes benchmark scripts (a class with neither
  ground-truth nor predicted pixels has IoU NaN and is left out of the mean; a class that only
  appears in the prediction has IoU 0 and counts). As there, a predicted value outside the
  evaluated classes (void, 255, an unevaluated label id) is a miss: a false negative of the
  pixel's ground-truth class and a false positive of none. :func:`evaluate_semseg_files` reads
  Cityscapes (``*_gtFine_labelIds.png``) or ADE20K (``ADEChallengeData2016``) ground truth and
  single-channel prediction PNGs of train ids or (Cityscapes, as the official server takes
  them) label ids.
* Panoptic segmentation: :func:`pq_compute` computes PQ / SQ / RQ with the matching rules of
  the COCO ``panopticapi`` (IoU > 0.5 within a category, prediction pixels on void excluded
  from the union, crowd regions neither matched nor counted as false negatives, unmatched
  predictions lying mostly on void or same-category crowd not counted as false positives).

Every malformed input raises :class:`MetricsError` with a one-line message naming the file.
"""

from __future__ import annotations

from hyctas_core.metrics.confusion import ConfusionMatrix, MetricsError
from hyctas_core.metrics.panoptic_quality import PanopticCategory, PanopticResult, PQClassStat, PQSummary, pq_compute
from hyctas_core.metrics.semseg import (
    ADE20K_CLASS_NAMES,
    PRED_IDS,
    PredIds,
    SemsegDataset,
    SemsegResult,
    evaluate_semseg_files,
)

__all__ = [
    "ADE20K_CLASS_NAMES",
    "ConfusionMatrix",
    "MetricsError",
    "PQClassStat",
    "PQSummary",
    "PanopticCategory",
    "PanopticResult",
    "PRED_IDS",
    "PredIds",
    "SemsegDataset",
    "SemsegResult",
    "evaluate_semseg_files",
    "pq_compute",
]
