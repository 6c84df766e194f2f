"""Label ids, palettes and the shared-material groups of the synthetic scenes."""

from __future__ import annotations

from typing import Any

from numpy.typing import NDArray

GENERATOR_VERSION = 2  # 2: per-scene shared materials (see ALIKE_GROUPS)


MIN_SIZE = (64, 128)


MAX_SIDE = 4096


Arr = NDArray[Any]


Box = tuple[int, int, int, int]  # y0, x0, y1, x1 (end-exclusive)


Mask = tuple[Box, Arr]


Pt = tuple[float, float]


# Cityscapes label ids used here.
STATIC = 4  # void: bins and benches


ROAD, SIDEWALK, BUILDING, WALL, FENCE = 7, 8, 11, 12, 13


POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY = 17, 19, 20, 21, 22, 23


PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE = 24, 25, 26, 27, 28, 31, 32, 33


_GROUND = (ROAD, SIDEWALK, TERRAIN)


# Shared palettes: classes that must be told apart by context draw from the same lists.
_GREENS = ((52, 78, 30), (70, 100, 38), (88, 118, 50), (60, 92, 55), (104, 128, 58), (78, 96, 40), (120, 138, 70))


_DRY = ((140, 128, 82), (122, 112, 70), (150, 140, 95))


_FACADES = (
    (200, 182, 152),
    (214, 212, 204),
    (142, 140, 136),
    (150, 84, 62),
    (122, 92, 72),
    (208, 194, 142),
    (110, 120, 134),
    (196, 150, 138),
    (170, 160, 146),
)


_CONCRETE = ((150, 148, 142), (128, 126, 122), (172, 168, 160))


_VEHICLE = (
    (226, 226, 222),
    (188, 190, 194),
    (128, 130, 134),
    (58, 60, 64),
    (26, 26, 30),
    (152, 28, 28),
    (40, 60, 132),
    (38, 82, 62),
    (212, 172, 42),
    (170, 150, 118),
    (92, 42, 32),
    (82, 112, 152),
)


_BUS = ((226, 226, 222), (212, 172, 42), (152, 28, 28), (40, 60, 132), (38, 110, 70), (202, 112, 42), (188, 190, 194))


_CLOTHES = (
    (30, 30, 34),
    (52, 70, 110),
    (220, 220, 215),
    (150, 30, 36),
    (190, 170, 130),
    (80, 80, 84),
    (40, 70, 50),
    (110, 70, 50),
    (200, 120, 40),
    (70, 50, 100),
    (150, 150, 155),
    (30, 50, 80),
)


_SKIN = ((232, 192, 162), (200, 150, 118), (150, 104, 76), (104, 72, 54))


_LAMPS = ((236, 44, 34), (244, 172, 30), (40, 224, 124))


_SIGN_COLOURS = ((200, 30, 30), (36, 84, 176), (232, 202, 40), (236, 236, 232), (30, 120, 70))


# Per-scene shared materials: with probability ``ALIKE_P`` each, a scene paints a confusable
# class group with ONE material, so that up close the classes look the same and only layout
# and extent tell them apart (a local window cannot; context and several scales can):
# - "ground": sidewalks in the road's asphalt (no paving joints), set apart by the kerb line
#   and where they lie in the street's layout;
# - "fleet": cars, trucks, buses and trams in one paint, set apart by their extent;
# - "greens": trees, hedges and grass in one green, set apart by shape and height;
# - "facades": buildings and walls in one facade material, set apart by height and windows.
ALIKE_GROUPS: tuple[str, ...] = ("ground", "fleet", "greens", "facades")


ALIKE_P = 0.7
