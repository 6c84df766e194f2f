"""Panoptic segmentation on searched backbones: Panoptic-DeepLab style heads, targets, loss,
post-processing and PQ evaluation.

Paper: Cheng et al., "Panoptic-DeepLab", arXiv 1911.10194, as used by HyCTAS (arXiv 2403.10413)
on its searched networks. The official HyCTAS code ships the data pipeline and the losses
but no post-processing and no PQ evaluation; both are here.

- :class:`PanopticHead`: centre heatmap + offsets from the fused backbone features
  (``HyCTASNet(..., panoptic=True)`` returns ``"center"`` and ``"offset"`` besides ``"out"``);
- :func:`make_targets` / :class:`PanopticTargetDataset`: Gaussian centres, offsets, weights;
- :class:`PanopticLoss`: weighted top-k cross-entropy + 200 x centre MSE + 0.01 x offset L1;
- :func:`postprocess`: centre NMS, nearest-centre grouping, majority vote, stuff by area;
  :func:`encode_panoptic_png`: the COCO panoptic PNG + ``segments_info`` of a prediction;
- :func:`evaluate_panoptic`: PQ / SQ / RQ (all, things, stuff, per class) via
  :func:`hyctas_core.metrics.pq_compute`.
"""

from hyctas_core.panoptic.evaluate import (
    PanopticEvaluation,
    evaluate_panoptic,
    panoptic_from_labels,
    write_coco_panoptic,
)
from hyctas_core.panoptic.head import PanopticHead
from hyctas_core.panoptic.loss import PanopticLoss
from hyctas_core.panoptic.postprocess import (
    Segment,
    encode_panoptic_png,
    find_centers,
    group_pixels,
    id_to_rgb,
    postprocess,
    postprocess_batch,
    segments_info,
    semantic_argmax,
    to_coco_panoptic,
)
from hyctas_core.panoptic.targets import (
    TARGET_KEYS,
    PanopticTargetDataset,
    PanopticTargets,
    instance_centers,
    make_targets,
)

__all__ = [
    "TARGET_KEYS",
    "PanopticEvaluation",
    "PanopticHead",
    "PanopticLoss",
    "PanopticTargetDataset",
    "PanopticTargets",
    "Segment",
    "encode_panoptic_png",
    "evaluate_panoptic",
    "find_centers",
    "group_pixels",
    "id_to_rgb",
    "instance_centers",
    "make_targets",
    "panoptic_from_labels",
    "postprocess",
    "postprocess_batch",
    "segments_info",
    "semantic_argmax",
    "to_coco_panoptic",
    "write_coco_panoptic",
]
