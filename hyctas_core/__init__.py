"""HyCTAS: hybrid convolutional-transformer architecture search for real-time segmentation.

The method as a library (search space, supernet, search, evaluation), importable without any
service. Paper: Yu et al., arXiv 2403.10413. The names below are imported lazily, so that
``import hyctas_core.storage`` (used by the services) does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hyctas_core.config import ModelConfig, PanopticConfig
    from hyctas_core.memory import MemoryBudget
    from hyctas_core.network import HyCTASNet, build
    from hyctas_core.presets import get_preset
    from hyctas_core.search_space import (
        Arch,
        ArchError,
        Branch,
        Cell,
        VectorCodec,
        sample_arch,
        validate,
    )
    from hyctas_core.supernet import Supernet

_EXPORTS = {
    "ModelConfig": "hyctas_core.config",
    "PanopticConfig": "hyctas_core.config",
    "HyCTASNet": "hyctas_core.network",
    "build": "hyctas_core.network",
    "get_preset": "hyctas_core.presets",
    "Arch": "hyctas_core.search_space",
    "ArchError": "hyctas_core.search_space",
    "Branch": "hyctas_core.search_space",
    "Cell": "hyctas_core.search_space",
    "MemoryBudget": "hyctas_core.memory",
    "VectorCodec": "hyctas_core.search_space",
    "sample_arch": "hyctas_core.search_space",
    "validate": "hyctas_core.search_space",
    "Supernet": "hyctas_core.supernet",
}

__all__ = [
    "Arch",
    "ArchError",
    "Branch",
    "Cell",
    "HyCTASNet",
    "MemoryBudget",
    "ModelConfig",
    "PanopticConfig",
    "Supernet",
    "VectorCodec",
    "build",
    "get_preset",
    "sample_arch",
    "validate",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'hyctas_core' has no attribute {name!r}")
