"""Frozen configuration dataclasses for the HyCTAS library."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["ModelConfig"]


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the supernet and of every network built from an architecture.

    The defaults follow the paper where it is explicit and the official code otherwise.
    """

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
    # Squeeze-excitation reduction in the branch-fusion block (official: 1).
    se_reduction: int = 4
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
        if self.attn_heads < 1 or not 0 < self.attn_ratio <= 1:
            raise ValueError(
                f"attn_heads >= 1 and 0 < attn_ratio <= 1 required, got {self.attn_heads}, {self.attn_ratio}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s) {unknown}; known: {sorted(names)}")
        return cls(**data)
