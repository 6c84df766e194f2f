"""HyCTAS: hybrid convolutional-transformer architecture search for real-time segmentation.

The method as a library (search space, supernet, search, evaluation), importable without any
service. Paper: Yu et al., arXiv 2403.10413.
"""

from hyctas_core.config import ModelConfig
from hyctas_core.network import HyCTASNet, build
from hyctas_core.presets import get_preset
from hyctas_core.search_space import Arch, ArchError, Branch, Cell, MemoryBudget, VectorCodec, sample_arch, validate
from hyctas_core.supernet import Supernet

__all__ = [
    "Arch",
    "ArchError",
    "Branch",
    "Cell",
    "HyCTASNet",
    "MemoryBudget",
    "ModelConfig",
    "Supernet",
    "VectorCodec",
    "build",
    "get_preset",
    "sample_arch",
    "validate",
]
__version__ = "0.1.0"
