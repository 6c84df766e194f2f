"""Frozen configuration dataclasses for the HyCTAS library."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from hyctas_core.configbase import ConfigBase

__all__ = ["CITYSCAPES_THING_IDS", "ModelConfig", "PanopticConfig"]

# Cityscapes train ids of the classes with instances: person, rider, car, truck, bus, train,
# motorcycle, bicycle (cityscapesScripts labels.py, hasInstances).
CITYSCAPES_THING_IDS: tuple[int, ...] = (11, 12, 13, 14, 15, 16, 17, 18)


@dataclass(frozen=True)
class ModelConfig(ConfigBase):
    """Shape of the supernet and of every network built from an architecture.

    The defaults follow the paper where it is explicit and the official code otherwise.
    """

    config_name: ClassVar[str] = "model config"

    # F, the "filter multiplier": full widths are 8F / 16F / 32F at strides 8 / 16 / 32.
    # Paper: 12 for HyCTAS-S, 16 for -L; the official yaml uses 16.
    base_channels: int = 12
    # Cells per branch in the supernet (official HyCTAS default: 20).
    num_layers: int = 20
    num_classes: int = 19
    # 8: predict at 1/8 then upsample; 4: fuse the 1/4 stem feature first (official model_type 1).
    output_stride: int = 8
    # Width multiplier of the stem (official stem_head_width[0]).
    stem_width: float = 1.0
    # Memory-efficient self-attention: heads and the 1x1 bottleneck ratio (paper: "smaller
    # than input/output channels"; the official code uses 1 head at full width).
    attn_heads: int = 2
    attn_ratio: float = 0.5
    # Width of the attention's queries and keys relative to its values (official: 1/8, the
    # SAGAN / DANet position attention).
    attn_qk_ratio: float = 1.0
    # Squeeze-excitation reduction in the branch-fusion block (official: 1).
    se_reduction: int = 4
    # "light": 3x3 conv-BN-ReLU -> classifier. "official": the official HRTSemHead blocks, an
    # attention refinement at half resolution, a zoomed double conv, then the 3x3 conv.
    head: str = "light"
    align_corners: bool = False

    def __post_init__(self) -> None:
        if self.base_channels < 1:
            raise ValueError(f"base_channels must be >= 1, got {self.base_channels}")
        if self.num_layers < 3:
            raise ValueError(f"num_layers must be >= 3 (two down-samplings and a last cell), got {self.num_layers}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.output_stride not in (4, 8):
            raise ValueError(f"output_stride must be 4 or 8, got {self.output_stride}")
        if self.head not in ("light", "official"):
            raise ValueError(f"head must be 'light' or 'official', got {self.head!r}")
        if not 0 < self.attn_qk_ratio <= 1:
            raise ValueError(f"attn_qk_ratio must be in (0, 1], got {self.attn_qk_ratio}")
        if self.attn_heads < 1 or not 0 < self.attn_ratio <= 1:
            raise ValueError(
                f"attn_heads >= 1 and 0 < attn_ratio <= 1 required, got {self.attn_heads}, {self.attn_ratio}"
            )


@dataclass(frozen=True)
class PanopticConfig(ConfigBase):
    """Targets, loss weights and post-processing of the Panoptic-DeepLab style heads.

    Defaults follow Panoptic-DeepLab on Cityscapes (Cheng et al., arXiv 1911.10194, and the
    detectron2 project the official HyCTAS code trains with); sizes are in input pixels.
    """

    config_name: ClassVar[str] = "panoptic config"

    # Train ids with instances ("things"); every other class is stuff.
    thing_ids: tuple[int, ...] = CITYSCAPES_THING_IDS
    # Standard deviation of the Gaussian drawn at each instance centre, pixels.
    sigma: float = 8.0
    # Instances smaller than this (pixels, after augmentation) weigh `small_instance_weight`
    # in the semantic loss, so that small objects are not drowned by large stuff regions.
    small_instance_area: int = 4096
    small_instance_weight: float = 3.0
    # Offsets are learnt on thing pixels only (stuff has no centre to point at).
    ignore_stuff_in_offset: bool = True
    # Loss weights (official code and Panoptic-DeepLab): centre MSE x 200, offset L1 x 0.01.
    center_weight: float = 200.0
    offset_weight: float = 0.01
    # Post-processing: centre keypoints are local maxima over nms_kernel x nms_kernel pixels
    # with a heatmap value above center_threshold, at most top_k of them per image.
    center_threshold: float = 0.1
    nms_kernel: int = 7
    top_k: int = 200
    # Stuff regions smaller than this many pixels are left void.
    stuff_area: int = 2048

    def __post_init__(self) -> None:
        if any(int(t) != t or not 0 <= t < 255 for t in self.thing_ids) or len(set(self.thing_ids)) != len(
            self.thing_ids
        ):
            raise ValueError(f"thing_ids must be distinct train ids in 0..254, got {self.thing_ids!r}")
        if self.sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma}")
        if self.small_instance_area < 0 or self.small_instance_weight <= 0:
            raise ValueError(
                "small_instance_area >= 0 and small_instance_weight > 0 required, got "
                f"{self.small_instance_area}, {self.small_instance_weight}"
            )
        if self.center_weight < 0 or self.offset_weight < 0:
            raise ValueError(
                f"center_weight and offset_weight must be >= 0, got {self.center_weight}, {self.offset_weight}"
            )
        if self.nms_kernel < 1 or self.nms_kernel % 2 == 0:
            raise ValueError(f"nms_kernel must be an odd number >= 1, got {self.nms_kernel}")
        if self.top_k < 1 or self.stuff_area < 0:
            raise ValueError(f"top_k >= 1 and stuff_area >= 0 required, got {self.top_k}, {self.stuff_area}")
