"""Cityscapes label definitions (ids, train ids, categories), as in cityscapesScripts' labels.py.

Facts from the Cityscapes benchmark definition: 34 label ids (0..33) map to 19 train ids
(0..18); every other id is ignored (255). Eight of the 19 classes have instances (things).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "CITYSCAPES_LABELS",
    "IGNORE_INDEX",
    "NUM_CLASSES",
    "TRAIN_ID_COLORS",
    "TRAIN_ID_NAMES",
    "VALID_IDS",
    "THING_TRAIN_IDS",
    "Label",
    "id_to_train_id_lut",
    "train_id_to_id",
]

IGNORE_INDEX = 255
NUM_CLASSES = 19


@dataclass(frozen=True)
class Label:
    name: str
    id: int
    train_id: int  # 255 = ignored in evaluation
    category: str
    has_instances: bool
    color: tuple[int, int, int]


CITYSCAPES_LABELS: tuple[Label, ...] = (
    Label("unlabeled", 0, 255, "void", False, (0, 0, 0)),
    Label("ego vehicle", 1, 255, "void", False, (0, 0, 0)),
    Label("rectification border", 2, 255, "void", False, (0, 0, 0)),
    Label("out of roi", 3, 255, "void", False, (0, 0, 0)),
    Label("static", 4, 255, "void", False, (0, 0, 0)),
    Label("dynamic", 5, 255, "void", False, (111, 74, 0)),
    Label("ground", 6, 255, "void", False, (81, 0, 81)),
    Label("road", 7, 0, "flat", False, (128, 64, 128)),
    Label("sidewalk", 8, 1, "flat", False, (244, 35, 232)),
    Label("parking", 9, 255, "flat", False, (250, 170, 160)),
    Label("rail track", 10, 255, "flat", False, (230, 150, 140)),
    Label("building", 11, 2, "construction", False, (70, 70, 70)),
    Label("wall", 12, 3, "construction", False, (102, 102, 156)),
    Label("fence", 13, 4, "construction", False, (190, 153, 153)),
    Label("guard rail", 14, 255, "construction", False, (180, 165, 180)),
    Label("bridge", 15, 255, "construction", False, (150, 100, 100)),
    Label("tunnel", 16, 255, "construction", False, (150, 120, 90)),
    Label("pole", 17, 5, "object", False, (153, 153, 153)),
    Label("polegroup", 18, 255, "object", False, (153, 153, 153)),
    Label("traffic light", 19, 6, "object", False, (250, 170, 30)),
    Label("traffic sign", 20, 7, "object", False, (220, 220, 0)),
    Label("vegetation", 21, 8, "nature", False, (107, 142, 35)),
    Label("terrain", 22, 9, "nature", False, (152, 251, 152)),
    Label("sky", 23, 10, "sky", False, (70, 130, 180)),
    Label("person", 24, 11, "human", True, (220, 20, 60)),
    Label("rider", 25, 12, "human", True, (255, 0, 0)),
    Label("car", 26, 13, "vehicle", True, (0, 0, 142)),
    Label("truck", 27, 14, "vehicle", True, (0, 0, 70)),
    Label("bus", 28, 15, "vehicle", True, (0, 60, 100)),
    Label("caravan", 29, 255, "vehicle", True, (0, 0, 90)),
    Label("trailer", 30, 255, "vehicle", True, (0, 0, 110)),
    Label("train", 31, 16, "vehicle", True, (0, 80, 100)),
    Label("motorcycle", 32, 17, "vehicle", True, (0, 0, 230)),
    Label("bicycle", 33, 18, "vehicle", True, (119, 11, 32)),
)

_BY_TRAIN_ID = {lab.train_id: lab for lab in CITYSCAPES_LABELS if lab.train_id != IGNORE_INDEX}
TRAIN_ID_NAMES: tuple[str, ...] = tuple(_BY_TRAIN_ID[t].name for t in range(NUM_CLASSES))
TRAIN_ID_COLORS: tuple[tuple[int, int, int], ...] = tuple(_BY_TRAIN_ID[t].color for t in range(NUM_CLASSES))
THING_TRAIN_IDS: frozenset[int] = frozenset(t for t, lab in _BY_TRAIN_ID.items() if lab.has_instances)
VALID_IDS: frozenset[int] = frozenset(lab.id for lab in CITYSCAPES_LABELS)


def id_to_train_id_lut() -> np.ndarray:
    """A 256-entry lookup table label id -> train id (255 for ignored or unknown ids)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for lab in CITYSCAPES_LABELS:
        lut[lab.id] = lab.train_id
    return lut


def train_id_to_id(train_id: int) -> int:
    """The Cityscapes label id of a train id (0..18)."""
    if train_id not in _BY_TRAIN_ID:
        raise ValueError(f"train id {train_id} not in 0..{NUM_CLASSES - 1}")
    return _BY_TRAIN_ID[train_id].id
