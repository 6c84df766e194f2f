"""The built-in synthetic street-scene benchmark, written in the Cityscapes on-disk layout.

Every scene is a perspective street rendered from a pinhole camera over a ground plane: sky,
buildings with windows on both sides, a road with lane markings, raised sidewalks with kerbs,
walls, fences, trees and grass, poles carrying lights and signs, people, riders on bicycles
and motorcycles, cars, trucks, buses and trams. Geometry lives in metres, so objects shrink
toward the horizon; a z-buffer gives correct occlusion. Several class pairs share their colour
distributions on purpose (road/sidewalk, vegetation/terrain, building/wall, person/rider,
car/truck/bus/train, sign/light), so only shape, position and context separate them: a
per-pixel colour classifier scores poorly, while a segmentation network with a larger
receptive field scores well. Labels are real Cityscapes label ids; instance ids follow the
Cityscapes convention (``label_id * 1000 + k`` for things, the plain label id for stuff).

Rendering is pure numpy plus Pillow's polygon rasteriser. Every random draw comes from the
``np.random.Generator`` passed in; :func:`generate` seeds image ``i`` of a split from
``(seed, split, i)`` only, so files are byte-identical across runs and independent of how many
images are generated.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw

from hyctas_core.data.labels import (
    CITYSCAPES_LABELS,
    IGNORE_INDEX,
    NUM_CLASSES,
    TRAIN_ID_NAMES,
    id_to_train_id_lut,
)

__all__ = [
    "ALIKE_GROUPS",
    "ALIKE_P",
    "CITIES",
    "GENERATOR_VERSION",
    "METADATA_FILE",
    "MIN_SIZE",
    "SPLITS",
    "SynthScene",
    "check_generate_args",
    "write_instance_png",
    "generate",
    "render_scene",
    "scene_rng",
    "scene_stem",
]

GENERATOR_VERSION = 2  # 2: per-scene shared materials (see ALIKE_GROUPS)
METADATA_FILE = "README_SYNTH.json"
MIN_SIZE = (64, 128)
MAX_SIDE = 4096
SPLITS: tuple[str, ...] = ("train", "val")
CITIES: dict[str, tuple[str, ...]] = {"train": ("synthA", "synthB", "synthC"), "val": ("synthD", "synthE")}
_FRAME = 19  # Cityscapes' annotated frames are frame 19 of each 30-frame snippet

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


@dataclass(frozen=True)
class SynthScene:
    """One rendered scene.

    Attributes:
        image: ``uint8`` array ``(H, W, 3)``, RGB.
        label_ids: ``uint8`` array ``(H, W)`` of Cityscapes label ids.
        instance_ids: ``int32`` array ``(H, W)``: ``label_id * 1000 + k`` on things (``k``
            counts the visible instances of that class from 0), the plain label id on stuff.
    """

    image: Arr
    label_ids: Arr
    instance_ids: Arr

    def train_ids(self) -> Arr:
        """The label map as Cityscapes train ids (0..18, 255 ignored)."""
        return id_to_train_id_lut()[self.label_ids]


# --------------------------------------------------------------------------------------------
# Camera and canvas
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Camera:
    """A level pinhole camera at height ``hc`` metres looking down +Z; image rows grow down."""

    h: int
    w: int
    f: float
    vx: float
    hy: float
    hc: float

    def pt(self, x: float, y: float, z: float) -> Pt:
        z = max(z, 0.3)
        return self.vx + self.f * x / z, self.hy + self.f * (self.hc - y) / z

    def k(self, z: float) -> float:
        """Pixels per metre at depth ``z``."""
        return self.f / max(z, 0.3)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, step: float) -> Arr:
    gh, gw = int(h / step) + 2, int(w / step) + 2
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    up = np.asarray(Image.fromarray(grid).resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
    return up / max(float(up.std()), 1e-6)


class _Canvas:
    """Colour, label, instance and depth buffers; ``paint`` is a z-buffered masked write."""

    def __init__(self, rng: np.random.Generator, h: int, w: int) -> None:
        self.h, self.w = h, w
        self.rgb = np.zeros((h, w, 3), np.float32)
        self.label = np.full((h, w), SKY, np.uint8)
        self.inst = np.full((h, w), -1, np.int32)
        self.depth = np.full((h, w), np.inf, np.float32)
        self.inst_labels: list[int] = []
        sc = w / 1024
        self.n_fine = rng.standard_normal((h, w), dtype=np.float32)
        self.n_med = _smooth_noise(rng, h, w, max(2.0, 5.0 * sc))
        self.n_coarse = _smooth_noise(rng, h, w, max(6.0, 40.0 * sc))

    def new_instance(self, label: int) -> int:
        self.inst_labels.append(label)
        return len(self.inst_labels) - 1

    # -- masks ----------------------------------------------------------------------------
    def _local(self, xs: Sequence[float], ys: Sequence[float], pad: float) -> Box | None:
        x0f, x1f, y0f, y1f = min(xs) - pad, max(xs) + pad, min(ys) - pad, max(ys) + pad
        if not all(math.isfinite(v) for v in (x0f, x1f, y0f, y1f)):
            return None
        x0, y0 = max(0, int(math.floor(x0f))), max(0, int(math.floor(y0f)))
        x1, y1 = min(self.w, int(math.ceil(x1f)) + 1), min(self.h, int(math.ceil(y1f)) + 1)
        if x1 <= x0 or y1 <= y0:
            return None
        return y0, x0, y1, x1

    def _draw(self, box: Box, fn: Callable[[ImageDraw.ImageDraw, float, float], None]) -> Mask | None:
        y0, x0, y1, x1 = box
        im = Image.new("L", (x1 - x0, y1 - y0), 0)
        fn(ImageDraw.Draw(im), float(x0), float(y0))
        m = np.asarray(im) > 0
        return (box, m) if m.any() else None

    def poly(self, pts: Sequence[Pt]) -> Mask | None:
        box = self._local([p[0] for p in pts], [p[1] for p in pts], 0.0)
        if box is None:
            return None

        def fn(d: ImageDraw.ImageDraw, ox: float, oy: float) -> None:
            d.polygon([(x - ox, y - oy) for x, y in pts], fill=255)

        return self._draw(box, fn)

    def polys(self, many: Sequence[Sequence[Pt]]) -> Mask | None:
        allp = [p for pts in many for p in pts]
        if not allp:
            return None
        box = self._local([p[0] for p in allp], [p[1] for p in allp], 0.0)
        if box is None:
            return None

        def fn(d: ImageDraw.ImageDraw, ox: float, oy: float) -> None:
            for pts in many:
                d.polygon([(x - ox, y - oy) for x, y in pts], fill=255)

        return self._draw(box, fn)

    def line(self, pts: Sequence[Pt], width: float) -> Mask | None:
        wpx = max(1, int(round(width)))
        box = self._local([p[0] for p in pts], [p[1] for p in pts], wpx / 2 + 1)
        if box is None:
            return None

        def fn(d: ImageDraw.ImageDraw, ox: float, oy: float) -> None:
            d.line([(x - ox, y - oy) for x, y in pts], fill=255, width=wpx, joint="curve" if len(pts) > 2 else None)

        return self._draw(box, fn)

    def ellipses(self, ells: Sequence[tuple[float, float, float, float]]) -> Mask | None:
        """Union of ellipses ``(cx, cy, rx, ry)``; tiny ones become a single pixel."""
        xs = [e[0] - e[2] for e in ells] + [e[0] + e[2] for e in ells]
        ys = [e[1] - e[3] for e in ells] + [e[1] + e[3] for e in ells]
        box = self._local(xs, ys, 1.0)
        if box is None:
            return None

        def fn(d: ImageDraw.ImageDraw, ox: float, oy: float) -> None:
            for cx, cy, rx, ry in ells:
                if rx < 0.6 or ry < 0.6:
                    d.point((int(cx - ox), int(cy - oy)), fill=255)
                else:
                    d.ellipse((cx - rx - ox, cy - ry - oy, cx + rx - ox, cy + ry - oy), fill=255)

        return self._draw(box, fn)

    def rect(self, x0: float, y0: float, x1: float, y1: float) -> Mask | None:
        """An axis-aligned rectangle, at least one pixel wide and tall."""
        xa = int(math.floor(x0 + 0.5))
        xb = max(xa + 1, int(math.floor(x1 + 0.5)))
        ya = int(math.floor(y0 + 0.5))
        yb = max(ya + 1, int(math.floor(y1 + 0.5)))
        xa, xb, ya, yb = max(xa, 0), min(xb, self.w), max(ya, 0), min(yb, self.h)
        if xb <= xa or yb <= ya:
            return None
        return (ya, xa, yb, xb), np.ones((yb - ya, xb - xa), bool)

    # -- writes ---------------------------------------------------------------------------
    def texture(self, box: Box, rgb: Sequence[float] | Arr, tex: tuple[float, float, float]) -> Arr:
        y0, x0, y1, x1 = box
        g = 1.0 + tex[0] * self.n_fine[y0:y1, x0:x1]
        if tex[1]:
            g = g + tex[1] * self.n_med[y0:y1, x0:x1]
        if tex[2]:
            g = g + tex[2] * self.n_coarse[y0:y1, x0:x1]
        return np.asarray(rgb, np.float32)[None, None, :] * g[..., None]

    def paint(
        self,
        bm: Mask | None,
        depth: float | Arr,
        label: int,
        color: Sequence[float] | Arr,
        *,
        tex: tuple[float, float, float] = (0.04, 0.03, 0.0),
        inst: int = -1,
        alpha: Arr | None = None,
    ) -> None:
        if bm is None:
            return
        box, m = bm
        y0, x0, y1, x1 = box
        dv = self.depth[y0:y1, x0:x1]
        win = m & (depth <= dv)
        if not win.any():
            return
        col = np.asarray(color, np.float32)
        if col.ndim == 1:
            col = self.texture(box, col, tex)
        rgb = self.rgb[y0:y1, x0:x1]
        if alpha is None:
            rgb[win] = col[win]
        else:
            a = alpha[win][:, None]
            rgb[win] = col[win] * a + rgb[win] * (1.0 - a)
        dv[win] = depth[win] if isinstance(depth, np.ndarray) else depth
        self.label[y0:y1, x0:x1][win] = label
        self.inst[y0:y1, x0:x1][win] = inst

    def on_ground(
        self, bm: Mask | None, *, factor: float = 1.0, color: Sequence[float] | Arr | None = None, a: float = 1.0
    ) -> None:
        """Darken (shadows) or paint over (road markings) pixels that still show the ground."""
        if bm is None:
            return
        (y0, x0, y1, x1), m = bm
        lab = self.label[y0:y1, x0:x1]
        sel = m & ((lab == ROAD) | (lab == SIDEWALK) | (lab == TERRAIN))
        rgb = self.rgb[y0:y1, x0:x1]
        if color is None:
            rgb[sel] *= factor
        else:
            shade = rgb[sel].mean(axis=1, keepdims=True) / 110.0
            rgb[sel] = rgb[sel] * (1 - a) + np.asarray(color, np.float32) * np.clip(shade, 0.6, 1.3) * a


# --------------------------------------------------------------------------------------------
# Scene layout
# --------------------------------------------------------------------------------------------


@dataclass
class _Side:
    """One side of the street; ``u`` is the distance outward from the road edge."""

    s: int  # -1 left, +1 right
    edge: float
    lawn_w: float
    lawn_spans: list[tuple[float, float]]
    walk_w: float
    garden_w: float
    back_paved: bool

    @property
    def boundary_u(self) -> float:
        return self.lawn_w + self.walk_w

    @property
    def facade_u(self) -> float:
        return self.lawn_w + self.walk_w + self.garden_w

    def x(self, u: float) -> float:
        return self.edge + self.s * u


@dataclass
class _Frame:
    """A vehicle's local frame: ``l`` along its length from the near end, ``w`` across it."""

    cross: bool
    xc: float
    z0: float
    length: float
    width: float

    @property
    def x0(self) -> float:
        return self.xc - (self.length if self.cross else self.width) / 2

    def world(self, at: float, w: float) -> tuple[float, float]:
        """(X, Z) of local (l, w)."""
        if self.cross:
            return self.x0 + at, self.z0 + w
        return self.x0 + w, self.z0 + at

    def box(self, l0: float, l1: float, w0: float, w1: float) -> tuple[float, float, float, float]:
        xa, za = self.world(l0, w0)
        xb, zb = self.world(l1, w1)
        return min(xa, xb), max(xa, xb), min(za, zb), max(za, zb)

    def visible_side(self) -> float | None:
        """The ``w`` of the long side facing the camera, if any."""
        if self.cross:
            return 0.0
        if self.x0 + self.width < 0:
            return self.width
        if self.x0 > 0:
            return 0.0
        return None

    def visible_end(self) -> float | None:
        """The ``l`` of the end facing the camera, if any."""
        if not self.cross:
            return 0.0
        if self.x0 + self.length < 0:
            return self.length
        if self.x0 > 0:
            return 0.0
        return None


def _u(rng: np.random.Generator, a: float, b: float) -> float:
    return float(rng.uniform(a, b))


def _pick(rng: np.random.Generator, options: Sequence[tuple[int, int, int]], jitter: float = 0.1) -> Arr:
    base = np.asarray(options[int(rng.integers(len(options)))], np.float32)
    return np.clip(base * rng.uniform(1 - jitter, 1 + jitter) + rng.normal(0, 8 * jitter, 3), 4, 252).astype(np.float32)


class _Scene:
    """Builds one street scene into a :class:`_Canvas`."""

    def __init__(self, rng: np.random.Generator, size: tuple[int, int], alike_p: float = ALIKE_P) -> None:
        h, w = size
        self.rng = rng
        r = rng
        self.cam = _Camera(
            h, w, f=w * _u(r, 0.78, 1.02), vx=w * _u(r, 0.42, 0.58), hy=h * _u(r, 0.36, 0.5), hc=_u(r, 1.3, 1.75)
        )
        self.cv = _Canvas(r, h, w)
        self.kerb_h = _u(r, 0.1, 0.18)
        self.z_end = float(np.exp(_u(r, math.log(70), math.log(230))))
        self.sun = _u(r, 0.75, 1.25)  # global light level
        self.sun_side = -1 if r.random() < 0.5 else 1  # the facades on this side are lit
        # Buildings on the other side cast shadows across the street (weak when overcast).
        self.shadow_len = _u(r, 0.2, 1.2)  # shadow length per metre of building height
        self.shadow_skew = _u(r, -0.6, 0.6)  # shift along the street per metre of height
        self.shadow_factor = _u(r, 0.45, 0.75)
        # Road: lanes, optional parking strips; the camera drives in one of the right lanes.
        self.n_lanes = int(r.integers(2, 5))
        lane_w = _u(r, 2.9, 3.6)
        park_l = 2.3 if r.random() < 0.35 else 0.0
        park_r = 2.3 if r.random() < 0.4 else 0.0
        cam_lane = int(r.integers(self.n_lanes // 2, self.n_lanes))
        cam_at = park_l + (cam_lane + 0.5) * lane_w + _u(r, -0.4, 0.4)
        self.road_left = -cam_at
        self.road_right = self.road_left + park_l + self.n_lanes * lane_w + park_r
        self.lanes = [self.road_left + park_l + (i + 0.5) * lane_w for i in range(self.n_lanes)]
        self.lane_w = lane_w
        self.park: list[tuple[float, int]] = []  # (x, side) of parking strips
        if park_l:
            self.park.append((self.road_left + 1.15, -1))
        if park_r:
            self.park.append((self.road_right - 1.15, 1))
        self.sides = {s: self._side(s) for s in (-1, 1)}
        # Optional intersection with a crossing street; crosswalk before it.
        self.cross_z: tuple[float, float] | None = None
        if r.random() < 0.55:
            z0 = _u(r, 14, min(50.0, self.z_end * 0.6))
            self.cross_z = (z0, z0 + _u(r, 9, 16))
        self.crosswalk: tuple[float, float] | None = None
        if self.cross_z is not None and r.random() < 0.8:
            self.crosswalk = (self.cross_z[0] - 4.5, self.cross_z[0] - 1.0)
        elif self.cross_z is None and r.random() < 0.4:
            zc = _u(r, 10, 35)
            self.crosswalk = (zc, zc + 3.5)
        self.tram_x: float | None = None
        if r.random() < 0.4:
            self.tram_x = self.lanes[int(r.integers(self.n_lanes))]
        self.occupied: list[tuple[float, float, float, float]] = []  # ground footprints (x0, x1, z0, z1)
        self.gaps: list[tuple[int, float, float]] = []  # (side, z0, z1) between buildings
        self.alike = frozenset(k for k in ALIKE_GROUPS if r.random() < alike_p)
        self._shared: dict[str, Arr] = {}

    def material(self, group: str, options: Sequence[tuple[int, int, int]], jitter: float = 0.1) -> Arr:
        """A colour from ``options``; the scene's one shared colour where ``group`` is alike.

        A shared colour is drawn on first use and then varied by only 3 % per use, so the
        classes of the group keep the same appearance up close.
        """
        if group not in self.alike:
            return _pick(self.rng, options, jitter)
        if group not in self._shared:
            self._shared[group] = _pick(self.rng, options, jitter)
        return self._shared[group] * (1 + self.rng.uniform(-0.03, 0.03, 3))

    def wall_material(self, p_facade: float) -> Arr:
        """A wall's colour: a facade's with probability ``p_facade`` (always when facades are alike)."""
        if self.rng.random() < p_facade or "facades" in self.alike:
            return self.material("facades", _FACADES)
        return _pick(self.rng, _CONCRETE)

    def _side(self, s: int) -> _Side:
        r = self.rng
        lawn_w = _u(r, 0.9, 2.2) if r.random() < 0.3 else 0.0
        spans: list[tuple[float, float]] = []
        if lawn_w:
            if r.random() < 0.5:
                spans = [(0.0, 1e9)]
            else:
                z = _u(r, 0, 6)
                while z < self.z_end:
                    ln = _u(r, 2, 8)
                    spans.append((z, z + ln))
                    z += ln + _u(r, 3, 10)
        return _Side(
            s=s,
            edge=self.road_left if s < 0 else self.road_right,
            lawn_w=lawn_w,
            lawn_spans=spans,
            walk_w=_u(r, 1.6, 4.5),
            garden_w=_u(r, 1.5, 5.0) if r.random() < 0.35 else 0.0,
            back_paved=r.random() < 0.25,
        )

    def in_cross(self, z0: float, z1: float | None = None) -> bool:
        if self.cross_z is None:
            return False
        z1 = z0 if z1 is None else z1
        return z1 > self.cross_z[0] - 1.5 and z0 < self.cross_z[1] + 1.5

    def free(self, x0: float, x1: float, z0: float, z1: float, gap: float = 1.5) -> bool:
        """Claim a ground footprint if it keeps ``gap`` metres (along Z) from every claimed one."""
        for a0, a1, b0, b1 in self.occupied:
            if x0 < a1 + 0.3 and x1 > a0 - 0.3 and z0 < b1 + gap and z1 > b0 - gap:
                return False
        self.occupied.append((x0, x1, z0, z1))
        return True

    def depth_z(self, near: float, far: float) -> float:
        """A log-uniform depth: as many objects near as far, like real streets."""
        return float(np.exp(_u(self.rng, math.log(near), math.log(far))))

    # -- projection helpers --------------------------------------------------------------------
    def plane_poly(self, plane: str, c: float, ab: Sequence[Pt]) -> list[Pt]:
        """Project points ``(a, b)`` of the plane ``X = c`` (a = Z) or ``Z = c`` (a = X); b = Y."""
        if plane == "x":
            return [self.cam.pt(c, b, a) for a, b in ab]
        return [self.cam.pt(a, b, c) for a, b in ab]

    def plane_rect(self, plane: str, c: float, a0: float, a1: float, b0: float, b1: float) -> list[Pt]:
        return self.plane_poly(plane, c, [(a0, b0), (a1, b0), (a1, b1), (a0, b1)])

    def ground_poly(self, pts: Sequence[Pt], y: float = 0.0) -> list[Pt]:
        """Project ground points ``(X, Z)`` at height ``y``."""
        return [self.cam.pt(x, y, z) for x, z in pts]

    # -- rendering -----------------------------------------------------------------------------
    def render(self) -> SynthScene:
        self.sky()
        self.ground()
        self.markings()
        self.street_end()
        for s in (-1, 1):
            self.buildings(self.sides[s])
        for s in (-1, 1):
            self.boundaries(self.sides[s])
        self.trees()
        self.poles_and_signs()
        self.traffic_lights()
        self.statics()
        self.cyclists()
        self.vehicles()
        self.people()
        return self.finish()

    def sky(self) -> None:
        cv, cam, r = self.cv, self.cam, self.rng
        rows = np.arange(cam.h, dtype=np.float32) + 0.5
        t = np.clip((cam.hy - rows) / max(cam.hy, 1.0), 0, 1) ** 0.7
        if r.random() < 0.35:  # overcast: greys that overlap concrete and facades
            self.shadow_factor = _u(r, 0.85, 0.95)
            g = _u(r, 170, 225)
            hor, zen = np.array([g, g, g + 4]), np.array([g - 25, g - 20, g - 8])
        else:
            hor = np.array([_u(r, 160, 200), _u(r, 185, 215), _u(r, 210, 235)])
            zen = np.array([_u(r, 50, 100), _u(r, 100, 140), _u(r, 170, 215)])
        col = hor[None, :] * (1 - t[:, None]) + zen[None, :] * t[:, None]
        cloud = np.clip(cv.n_coarse * 0.6 + cv.n_med * 0.15 - _u(r, 0.2, 1.2), 0, 1)[..., None] * _u(r, 0.2, 0.6)
        cv.rgb[:] = col[:, None, :] * (1 + 0.02 * cv.n_fine[..., None]) * (1 - cloud) + 235 * cloud
        cv.rgb *= self.sun

    def ground(self) -> None:
        cv, cam, r = self.cv, self.cam, self.rng
        i0 = int(math.floor(cam.hy)) + 1
        if i0 >= cam.h:
            return
        dy = (np.arange(i0, cam.h, dtype=np.float32) + 0.5 - cam.hy)[:, None]
        xs = (np.arange(cam.w, dtype=np.float32) + 0.5 - cam.vx)[None, :]
        zr = np.minimum(cam.f * cam.hc / dy, 1e4)
        zs = np.minimum(cam.f * (cam.hc - self.kerb_h) / dy, 1e4)
        xr, xsw = xs * zr / cam.f, xs * zs / cam.f
        mid = (self.road_left + self.road_right) / 2
        left = xr < mid
        ur = np.where(left, self.road_left - xr, xr - self.road_right)
        us = np.where(left, self.road_left - xsw, xsw - self.road_right)
        sl, sr = self.sides[-1], self.sides[1]
        lawn_w = np.where(left, sl.lawn_w, sr.lawn_w)
        bound_u = np.where(left, sl.boundary_u, sr.boundary_u)
        facade_u = np.where(left, sl.facade_u, sr.facade_u)
        zs_full = np.broadcast_to(zs, us.shape)
        in_span = np.zeros(us.shape, bool)
        for side, sel in ((sl, left), (sr, ~left)):
            for a, b in side.lawn_spans:
                in_span |= sel & (zs_full >= a) & (zs_full < b)
        pav = us > 0
        kerb = (ur > 0) & ~pav
        lawn = pav & (us < lawn_w) & in_span
        walk = pav & ~lawn & (us < bound_u)
        garden = pav & (us >= bound_u) & (us < facade_u)
        back = pav & (us >= facade_u)
        back_paved = np.where(left, sl.back_paved, sr.back_paved) & back
        # class index: 0 road, 1 sidewalk, 2 kerb, 3 grass, 4 paved back yard
        idx = np.zeros(us.shape, np.uint8)
        idx[walk] = 1
        idx[kerb] = 2
        idx[lawn | garden | back] = 3
        idx[back_paved] = 4
        if self.cross_z is not None:
            cross = (ur > 0) & (zr >= self.cross_z[0]) & (zr <= self.cross_z[1])
            idx[cross] = 0
        on_road = (idx == 0) | (idx == 2)
        depth = np.where(on_road, np.broadcast_to(zr, us.shape), zs_full).astype(np.float32)
        # Road and sidewalk greys overlap; which one is lighter changes from scene to scene.
        tint = np.array([1 + _u(r, -0.04, 0.04), 1.0, 1 + _u(r, -0.04, 0.05)])
        road_c = _u(r, 62, 130) * tint
        walk_v = _u(r, 75, 150)
        walk_c = walk_v * (np.array([1.12, 0.96, 0.9]) if r.random() < 0.25 else tint)
        alike = "ground" in self.alike
        if alike:  # the sidewalk in the road's asphalt: only the kerb line and the layout differ
            walk_c = road_c * _u(r, 0.97, 1.03)
        kerb_c = walk_c * _u(r, 1.05, 1.3)
        if "greens" in self.alike:
            grass_c = self.material("greens", _GREENS, 0.12)
        else:
            grass_c = _pick(r, _DRY if r.random() < 0.3 else _GREENS, 0.12)
        yard_c = _u(r, 80, 150) * tint
        base = np.stack([road_c, walk_c, kerb_c, grass_c, yard_c]).astype(np.float32)
        walk_f, walk_m, walk_cn = (0.06, 0.05, 0.08) if alike else (0.05, 0.04, 0.05)
        a_f = np.array([0.06, walk_f, 0.04, 0.16, 0.05], np.float32)
        a_m = np.array([0.05, walk_m, 0.02, 0.14, 0.04], np.float32)
        a_c = np.array([0.08, walk_cn, 0.03, 0.12, 0.05], np.float32)
        nf, nm, nc = cv.n_fine[i0:], cv.n_med[i0:], cv.n_coarse[i0:]
        g = 1 + a_f[idx] * nf + a_m[idx] * nm + a_c[idx] * nc
        # Pavement joints on sidewalks (faded out where they would alias).
        pw, pl = _u(r, 0.3, 0.8), _u(r, 0.3, 1.0)
        fx, fz = np.mod(xsw / pw, 1.0), np.mod(zs_full / pl, 1.0)
        joint = ((fx < 0.08) | (fz < 0.08)) & (idx == 1)
        fade = np.clip(cam.f / zs_full * min(pw, pl) / 6 - 0.5, 0, 1)
        g = g - joint * fade * (0.0 if alike else _u(r, 0.05, 0.2))
        # Asphalt repairs (on the sidewalk too where it is asphalt).
        g = g - ((nc > 1.1) & ((idx == 0) | ((idx == 1) & alike))) * _u(r, 0.0, 0.12)
        lab_lut = np.array([ROAD, SIDEWALK, SIDEWALK, TERRAIN, SIDEWALK], np.uint8)
        cv.rgb[i0:] = base[idx] * g[..., None] * self.sun
        cv.label[i0:] = lab_lut[idx]
        cv.depth[i0:] = depth
        cv.inst[i0:] = -1

    def markings(self) -> None:
        cv, r = self.cv, self.rng
        white = np.array([226, 226, 218]) * self.sun
        yellow = np.array([222, 182, 60]) * self.sun
        wear = _u(r, 0.55, 0.95)
        z_hi = min(self.z_end, 400.0)
        half = 0.07
        n = self.n_lanes
        for i in range(1, n):
            xb = self.lanes[i - 1] + self.lane_w / 2
            opposite = i == n // 2
            if opposite:
                col = yellow if r.random() < 0.3 else white
                bm = cv.polys(
                    [
                        self.ground_poly([(xb - half, za), (xb + half, za), (xb + half, zb), (xb - half, zb)])
                        for za, zb in self._z_pieces(1.0, z_hi, 1e9, 0.0)
                    ]
                )
                cv.on_ground(bm, color=col, a=wear)
            else:
                dash, gap = _u(r, 2.5, 4), _u(r, 4, 9)
                pieces = self._z_pieces(_u(r, 0.5, 6), z_hi, dash, gap)
                bm = cv.polys(
                    [
                        self.ground_poly([(xb - half, a), (xb + half, a), (xb + half, b), (xb - half, b)])
                        for a, b in pieces
                    ]
                )
                cv.on_ground(bm, color=white, a=wear)
        for xe in (self.road_left + (2.3 if self.park and self.park[0][1] < 0 else 0.4), self.road_right - 0.4):
            if r.random() < 0.5:
                pieces = self._z_pieces(1.0, z_hi, 1e9, 0.0)
                bm = cv.polys(
                    [
                        self.ground_poly([(xe - 0.06, a), (xe + 0.06, a), (xe + 0.06, b), (xe - 0.06, b)])
                        for a, b in pieces
                    ]
                )
                cv.on_ground(bm, color=white, a=wear)
        if self.crosswalk is not None:
            za, zb = self.crosswalk
            stripes = []
            x = self.road_left + 0.3
            while x < self.road_right - 0.5:
                stripes.append(self.ground_poly([(x, za), (x + 0.5, za), (x + 0.5, zb), (x, zb)]))
                x += 1.0
            cv.on_ground(cv.polys(stripes), color=white, a=wear)
        if self.tram_x is not None:
            for dx in (-0.72, 0.72):
                xr = self.tram_x + dx
                bm = cv.poly(
                    self.ground_poly([(xr - 0.05, 1.0), (xr + 0.05, 1.0), (xr + 0.05, z_hi), (xr - 0.05, z_hi)])
                )
                cv.on_ground(bm, color=(150, 150, 156), a=0.8)

    def _z_pieces(self, start: float, stop: float, dash: float, gap: float) -> list[tuple[float, float]]:
        out = []
        z = start
        while z < stop:
            a, b = z, min(z + dash, stop)
            if not self.in_cross(a, b) or self.cross_z is None:
                out.append((a, b))
            elif a < self.cross_z[0] - 1.5:
                out.append((a, self.cross_z[0] - 1.5))
            z += dash + gap
        return out

    # -- structures ----------------------------------------------------------------------------
    def _facade_texture(
        self,
        box: Box,
        a: Arr,
        b: Arr,
        mpp_a: Arr,
        mpp_b: Arr,
        base: Arr,
        style: dict[str, float],
        top: float,
    ) -> Arr:
        """Window grid in facade coordinates (a along, b up, metres), box-filtered when far."""
        cv = self.cv
        col = cv.texture(box, base, (0.05, 0.05, 0.06))
        fh, wh, sill = style["floor_h"], style["win_h"], style["sill"]
        cw, ww = style["col_w"], style["win_w"]
        fa = np.mod(a - style["phase"], cw)
        fb = np.mod(b - style["ground_floor"], fh)
        in_floors = (b > style["ground_floor"]) & (b < top - 0.9)
        win = in_floors & (fa < ww) & (fb > sill) & (fb < sill + wh)
        px = np.minimum(ww / np.maximum(mpp_a, 1e-6), wh / np.maximum(mpp_b, 1e-6))
        alpha = np.clip(px / 2.5 - 0.2, 0, 1)
        area = (ww / cw) * (wh / fh)
        mix = np.where(win, alpha, 0) + (1 - alpha) * area * in_floors
        if style["shop"] > 0:
            shop = (b < style["ground_floor"] - 0.5) & (b > 0.4) & (np.mod(a - style["phase"], 2 * cw) < 1.6 * cw)
            mix = np.where(shop, np.maximum(mix, 0.9), mix)
        glass = np.array([style["glass_r"], style["glass_g"], style["glass_b"]], np.float32)
        gcol = glass[None, None, :] * (1 + 0.25 * cv.n_coarse[box[0] : box[2], box[1] : box[3], None])
        out: Arr = col * (1 - mix[..., None]) + gcol * mix[..., None]
        cornice = (b > top - 0.5) & (b < top)
        out[cornice] *= 0.85
        return out

    def _style(self) -> dict[str, float]:
        r = self.rng
        fh = _u(r, 2.8, 3.6)
        cw = _u(r, 1.8, 4.0)
        g = _u(r, 25, 80)
        return {
            "floor_h": fh,
            "win_h": fh * _u(r, 0.35, 0.6),
            "sill": _u(r, 0.7, 1.0),
            "col_w": cw,
            "win_w": cw * _u(r, 0.3, 0.65),
            "phase": _u(r, 0, cw),
            "ground_floor": _u(r, 3.0, 4.5),
            "shop": float(r.random() < 0.5),
            "glass_r": g,
            "glass_g": g + _u(r, 0, 15),
            "glass_b": g + _u(r, 5, 30),
        }

    def _side_wall(
        self,
        x: float,
        z0: float,
        z1: float,
        y0: float,
        y1: float,
        label: int,
        base: Arr,
        style: dict[str, float] | None,
        inst: int = -1,
    ) -> None:
        """A vertical plane ``X = x`` from ``z0`` to ``z1`` (a facade or a wall), per-pixel depth."""
        cam, cv = self.cam, self.cv
        z0 = max(z0, 0.6)
        if z1 <= z0:
            return
        bm = cv.poly(self.plane_rect("x", x, z0, z1, y0, y1))
        if bm is None:
            return
        box = bm[0]
        xs = np.arange(box[1], box[3], dtype=np.float32) + 0.5 - cam.vx
        ys = np.arange(box[0], box[2], dtype=np.float32) + 0.5 - cam.hy
        with np.errstate(divide="ignore", invalid="ignore"):
            zz = cam.f * x / xs[None, :]
        zz = np.broadcast_to(np.where(zz > 0, np.minimum(zz, 1e4), 1e4), (len(ys), len(xs))).astype(np.float32)
        yy = cam.hc - ys[:, None] * zz / cam.f
        if style is not None:
            col = self._facade_texture(box, zz, yy, zz * zz / (cam.f * abs(x)), zz / cam.f, base, style, y1)
        else:
            col = cv.texture(box, base, (0.05, 0.05, 0.07))
            seams = np.mod(zz, 2.5) < 0.05
            col[seams] *= 0.8
        cv.paint(bm, zz, label, col, inst=inst)

    def _end_wall(
        self,
        z: float,
        xa: float,
        xb: float,
        y0: float,
        y1: float,
        label: int,
        base: Arr,
        style: dict[str, float] | None,
    ) -> None:
        """A vertical plane ``Z = z`` facing the camera."""
        cam, cv = self.cam, self.cv
        if z < 0.6:
            return
        bm = cv.poly(self.plane_rect("z", z, min(xa, xb), max(xa, xb), y0, y1))
        if bm is None:
            return
        box = bm[0]
        xs = (np.arange(box[1], box[3], dtype=np.float32) + 0.5 - cam.vx) * z / cam.f
        ys = cam.hc - (np.arange(box[0], box[2], dtype=np.float32) + 0.5 - cam.hy) * z / cam.f
        aa, bb = np.broadcast_arrays(xs[None, :], ys[:, None])
        mpp = np.full(aa.shape, z / cam.f, np.float32)
        col = (
            self._facade_texture(box, aa, bb, mpp, mpp, base, style, y1)
            if style
            else cv.texture(box, base, (0.05, 0.05, 0.07))
        )
        cv.paint(bm, z, label, col)

    def street_end(self) -> None:
        cam, r = self.cam, self.rng
        z = self.z_end
        half = z * cam.w / cam.f + 50
        x = -half
        while x < half:
            wd = _u(r, 10, 40)
            if r.random() < 0.25:  # a far tree line
                self._canopy_wall(x, x + wd, z + 15, _u(r, 6, 14))
            else:
                base = self.material("facades", _FACADES) * self.sun * _u(r, 0.8, 1.0)
                self._end_wall(z + _u(r, 0, 10), x, x + wd, 0.0, _u(r, 8, 35), BUILDING, base, self._style())
            x += wd
        # Beyond everything: a continuous low skyline so the street never ends in nothing.
        self._end_wall(
            z + 40,
            -half * 1.5,
            half * 1.5,
            0.0,
            _u(r, 5, 12),
            BUILDING,
            self.material("facades", _FACADES) * self.sun * 0.8,
            None,
        )

    def _canopy_wall(self, xa: float, xb: float, z: float, height: float) -> None:
        cam, cv, r = self.cam, self.cv, self.rng
        k = cam.k(z)
        ells = []
        x = xa
        while x < xb:
            rad = _u(r, 2, 5)
            cx, cy = cam.pt(x, height - rad * 0.5, z)
            ells.append((cx, cy, rad * k, rad * k * 0.9))
            x += rad * 1.2
        x0, y0 = cam.pt(xa, height - 2, z)
        x1, y1 = cam.pt(xb, 0, z)
        bm = cv.polys([[(x0, y0), (x1, y0), (x1, y1), (x0, y1)]])
        green = self.material("greens", _GREENS) * self.sun
        cv.paint(bm, z, VEGETATION, green, tex=(0.15, 0.22, 0.1))
        cv.paint(cv.ellipses(ells), z, VEGETATION, green, tex=(0.15, 0.22, 0.1))

    def buildings(self, side: _Side) -> None:
        r = self.rng
        lit = self.sun * (_u(r, 1.0, 1.15) if side.s == self.sun_side else _u(r, 0.6, 0.85))
        z = 0.5
        prev_setback = 0.0
        while z < self.z_end:
            ln = _u(r, 6, 28)
            if self.cross_z is not None and z < self.cross_z[1] and z + ln > self.cross_z[0]:
                if z < self.cross_z[0]:
                    ln = self.cross_z[0] - z
                else:
                    z = self.cross_z[1]
                    ln = _u(r, 6, 28)
                    self._building(side, z, z + ln, lit, corner=True)
                    z += ln
                    continue
            if r.random() < 0.15 and z > 3:  # a gap: back yard, trees, maybe a wall
                gap_end = z + _u(r, 4, 14)
                self.gaps.append((side.s, z, gap_end))
                z = gap_end
                continue
            setback = 0.0 if r.random() < 0.6 else _u(r, 0.3, 2.0)
            self._building(side, z, z + ln, lit, setback=setback, corner=setback > prev_setback + 0.2)
            prev_setback = setback
            z += ln
        if self.cross_z is not None:
            # Buildings along the crossing street, seen end-on.
            za = self.cross_z[1]
            x_out = side.x(side.facade_u)
            self._building_end_face(side, za, x_out + side.s * _u(r, 0, 4), x_out + side.s * 60, lit)

    def _building(
        self, side: _Side, z0: float, z1: float, lit: float, *, setback: float = 0.0, corner: bool = False
    ) -> None:
        r = self.rng
        x = side.x(side.facade_u + setback)
        top = _u(r, 5, 30) if r.random() < 0.85 else _u(r, 30, 45)
        base = self.material("facades", _FACADES) * lit
        style = self._style()
        self._side_wall(x, z0, z1, self.kerb_h, top, BUILDING, base, style)
        if side.s != self.sun_side:
            reach, skew = top * self.shadow_len, top * self.shadow_skew
            pts = [(x, z0), (x - side.s * reach, z0 + skew), (x - side.s * reach, z1 + skew), (x, z1)]
            self.cv.on_ground(self.cv.poly(self.ground_poly(pts)), factor=self.shadow_factor)
        if corner or r.random() < 0.5:
            self._end_wall(z0, x, x + side.s * _u(r, 8, 25), self.kerb_h, top, BUILDING, base * 0.85, style)

    def _building_end_face(self, side: _Side, z: float, xa: float, xb: float, lit: float) -> None:
        r = self.rng
        base = self.material("facades", _FACADES) * lit
        self._end_wall(z, xa, xb, 0.0, _u(r, 6, 25), BUILDING, base, self._style())

    def boundaries(self, side: _Side) -> None:
        """Walls, fences and hedges along the outer edge of the sidewalk and in gaps."""
        r = self.rng
        z = _u(r, 0.5, 8)
        u_line = side.boundary_u if side.garden_w > 0 else side.facade_u - 0.25
        while z < self.z_end * 0.8:
            ln = _u(r, 5, 30)
            if self.in_cross(z, z + ln):
                z += ln
                continue
            x = side.x(u_line)
            p = r.random()
            if p < 0.35:
                base = self.wall_material(0.5) * self.sun * _u(r, 0.75, 1.05)
                hgt = _u(r, 0.6, 2.4) if r.random() < 0.8 else _u(r, 2.4, 3.5)
                self._side_wall(x, z, z + ln, self.kerb_h, self.kerb_h + hgt, WALL, base, None)
            elif p < 0.7:
                self._fence(x, z, z + ln, _u(r, 0.9, 2.0))
            elif p < 0.8 and side.garden_w > 0:
                green = self.material("greens", _GREENS) * self.sun
                self._side_wall(x, z, z + ln, self.kerb_h, self.kerb_h + _u(r, 0.7, 1.6), VEGETATION, green, None)
            z += ln + _u(r, 0, 10)
        for s, za, zb in self.gaps:
            if s == side.s and r.random() < 0.6:
                x = side.x(side.facade_u + _u(r, -0.2, 0.5))
                if r.random() < 0.5:
                    base = self.wall_material(0.6) * self.sun * 0.9
                    self._side_wall(x, za, zb, self.kerb_h, self.kerb_h + _u(r, 1.2, 3.5), WALL, base, None)
                else:
                    self._fence(x, za, zb, _u(r, 1.2, 2.2))

    def _fence(self, x: float, z0: float, z1: float, height: float) -> None:
        cam, cv, r = self.cam, self.cv, self.rng
        z0 = max(z0, 0.6)
        bm = cv.poly(self.plane_rect("x", x, z0, z1, self.kerb_h, self.kerb_h + height))
        if bm is None:
            return
        box, m = bm
        xs = np.arange(box[1], box[3], dtype=np.float32) + 0.5 - cam.vx
        ys = np.arange(box[0], box[2], dtype=np.float32) + 0.5 - cam.hy
        with np.errstate(divide="ignore", invalid="ignore"):
            zz = cam.f * x / xs[None, :]
        zz = np.broadcast_to(np.where(zz > 0, np.minimum(zz, 1e4), 1e4), (len(ys), len(xs))).astype(np.float32)
        yy = cam.hc - ys[:, None] * zz / cam.f - self.kerb_h
        mpp_a = zz * zz / (cam.f * abs(x))
        mpp_b = zz / cam.f
        kind = int(r.integers(3))
        post = np.mod(zz, _u(r, 2.0, 3.0)) < np.maximum(0.08, mpp_a)
        rail = (np.abs(yy - height) < np.maximum(0.05, mpp_b * 0.6)) | (
            np.abs(yy - 0.15) < np.maximum(0.04, mpp_b * 0.6)
        )
        if kind == 0:  # vertical bars
            sp = _u(r, 0.12, 0.25)
            bars = np.mod(zz, sp) < np.maximum(0.035, mpp_a)
            solid = post | rail | bars
            alpha = np.where(solid, 1.0, np.clip(mpp_a / sp - 0.5, 0, 0.8))
        elif kind == 1:  # mesh: the whole panel is fence, half see-through
            sp = _u(r, 0.08, 0.2)
            mesh = (np.mod(zz / 3 + yy, sp) < 0.02) | (np.mod(zz / 3 - yy, sp) < 0.02)
            solid = post | rail
            alpha = np.where(solid, 1.0, np.where(mesh, 0.8, 0.35))
        else:  # rails and posts
            mid = np.abs(yy - height / 2) < np.maximum(0.05, mpp_b * 0.6)
            solid = post | rail | mid
            alpha = np.where(solid, 1.0, np.clip(mpp_a / 2.5 - 0.5, 0, 0.8))
        keep = m & (alpha > 0.3)
        col = _pick(r, ((54, 58, 62), (40, 70, 50), (210, 210, 205), (120, 90, 60), (150, 150, 150))) * self.sun
        cv.paint((box, keep), zz, FENCE, col, tex=(0.05, 0.03, 0.0), alpha=alpha.astype(np.float32))

    # -- nature and street furniture --------------------------------------------------------
    def trees(self) -> None:
        r = self.rng
        for s in (-1, 1):
            side = self.sides[s]
            spots: list[tuple[float, float]] = []
            if side.lawn_w:
                z = _u(r, 2, 12)
                step = _u(r, 7, 15)
                while z < self.z_end * 0.7:
                    if not self.in_cross(z):
                        spots.append((side.x(side.lawn_w / 2), z))
                    z += step * _u(r, 0.8, 1.2)
            if side.garden_w:
                for _ in range(int(r.integers(1, 5))):
                    z = self.depth_z(5, self.z_end * 0.7)
                    if not self.in_cross(z):
                        spots.append((side.x(side.boundary_u + side.garden_w * _u(r, 0.3, 0.7)), z))
            for gs, za, zb in self.gaps:
                if gs == s:
                    spots.append((side.x(side.facade_u + _u(r, 1, 6)), (za + zb) / 2))
            if not side.lawn_w and r.random() < 0.5:  # trees in pits on the sidewalk
                for _ in range(int(r.integers(1, 4))):
                    z = self.depth_z(4, 60)
                    if not self.in_cross(z):
                        spots.append((side.x(side.lawn_w + 0.6), z))
            for x, z in spots:
                self._tree(x, z, self.kerb_h)

    def _tree(self, x: float, z: float, ground: float) -> None:
        cam, cv, r = self.cam, self.cv, self.rng
        k = cam.k(z)
        trunk_h = _u(r, 1.8, 3.5)
        rad = _u(r, 1.4, 3.5)
        tw = _u(r, 0.18, 0.4)
        bx, by = cam.pt(x, ground, z)
        _, ty = cam.pt(x, ground + trunk_h + rad * 0.6, z)
        bark = np.array([_u(r, 60, 95), _u(r, 52, 80), _u(r, 40, 62)], np.float32) * self.sun
        cv.paint(cv.rect(bx - tw * k / 2, ty, bx + tw * k / 2, by), z, VEGETATION, bark, tex=(0.08, 0.05, 0.0))
        cy_w = ground + trunk_h + rad
        ells = []
        for _ in range(int(r.integers(3, 7))):
            ox, oy = _u(r, -0.6, 0.6) * rad, _u(r, -0.4, 0.5) * rad
            rr = rad * _u(r, 0.5, 0.85)
            cx, cy = cam.pt(x + ox, cy_w + oy, z)
            ells.append((cx, cy, rr * k, rr * k * _u(r, 0.8, 1.1)))
        bm = cv.ellipses(ells)
        if bm is None:
            return
        box, m = bm
        holes = (cv.n_med[box[0] : box[2], box[1] : box[3]] > 1.5) & (cv.n_fine[box[0] : box[2], box[1] : box[3]] > 0.0)
        green = self.material("greens", _GREENS, 0.15) * self.sun * _u(r, 0.85, 1.1)
        col = cv.texture(box, green, (0.14, 0.24, 0.1))
        rows = np.linspace(1.1, 0.75, box[2] - box[0], dtype=np.float32)[:, None, None]
        cv.paint((box, m & ~holes), z - 0.3, VEGETATION, col * rows)

    def _pole(self, x: float, z: float, ground: float, height: float, diam: float, col: Arr) -> None:
        cam, cv = self.cam, self.cv
        k = cam.k(z)
        bx, by = cam.pt(x, ground, z)
        _, ty = cam.pt(x, ground + height, z)
        wpx = diam * k
        cv.paint(cv.rect(bx - wpx / 2, ty, bx + wpx / 2, by), z, POLE, col, tex=(0.03, 0.02, 0.0))

    def _sign(self, x: float, y: float, z: float, size: float) -> None:
        cam, cv, r = self.cam, self.cv, self.rng
        k = cam.k(z)
        cx, cy = cam.pt(x, y, z)
        rad = size * k / 2
        shape = int(r.integers(5))
        if shape == 0:  # circle
            n, rot = 16, 0.0
        elif shape == 1:  # triangle
            n, rot = 3, -math.pi / 2 if r.random() < 0.7 else math.pi / 2
        elif shape == 2:  # rectangle
            n, rot = 4, math.pi / 4
        elif shape == 3:  # octagon
            n, rot = 8, math.pi / 8
        else:  # diamond
            n, rot = 4, 0.0
        sx = 1.0 if shape != 2 or r.random() < 0.5 else _u(r, 1.3, 2.0)

        def ngon(scale: float) -> list[Pt]:
            return [
                (
                    cx + sx * scale * rad * math.cos(rot + 2 * math.pi * i / n),
                    cy + scale * rad * math.sin(rot + 2 * math.pi * i / n),
                )
                for i in range(n)
            ]

        rim = _pick(r, _SIGN_COLOURS, 0.08) * self.sun
        face = _pick(r, _SIGN_COLOURS, 0.08) * self.sun
        cv.paint(cv.poly(ngon(1.0)), z, SIGN, rim, tex=(0.03, 0.0, 0.0))
        cv.paint(cv.poly(ngon(0.72)), z - 0.01, SIGN, face, tex=(0.03, 0.0, 0.0))
        if rad > 4 and r.random() < 0.6:
            cv.paint(cv.poly(ngon(0.3)), z - 0.02, SIGN, (30, 30, 32), tex=(0.03, 0.0, 0.0))

    def poles_and_signs(self) -> None:
        cam, r = self.cam, self.rng
        grey = _pick(r, ((120, 122, 126), (150, 152, 150), (60, 64, 62), (90, 92, 96))) * self.sun
        for s in (-1, 1):
            side = self.sides[s]
            if r.random() < 0.85:  # street lamps
                u_pole = side.lawn_w / 2 if side.lawn_w else 0.4
                z = _u(r, 3, 20)
                step = _u(r, 15, 35)
                while z < self.z_end * 0.9:
                    if not self.in_cross(z):
                        x = side.x(u_pole)
                        hp = _u(r, 6, 9)
                        self._pole(x, z, self.kerb_h, hp, _u(r, 0.12, 0.2), grey)
                        arm = _u(r, 0.8, 2.0)
                        p0, p1 = cam.pt(x, hp, z), cam.pt(x - s * arm, hp + 0.25, z)
                        k = cam.k(z)
                        self.cv.paint(self.cv.line([p0, p1], 0.1 * k), z, POLE, grey, tex=(0.03, 0.0, 0.0))
                        head = self.cv.rect(p1[0] - 0.3 * k, p1[1] - 0.05 * k, p1[0] + 0.3 * k, p1[1] + 0.12 * k)
                        self.cv.paint(head, z - 0.01, POLE, grey * 0.8, tex=(0.03, 0.0, 0.0))
                        if r.random() < 0.25:
                            self._sign(x, _u(r, 2.6, 3.4), z - 0.05, _u(r, 0.5, 0.8))
                    z += step * _u(r, 0.9, 1.1)
        for _ in range(int(r.integers(2, 8))):
            side = self.sides[-1 if r.random() < 0.5 else 1]
            z = self.depth_z(5, 70)
            if self.in_cross(z):
                continue
            u = 0.3 if r.random() < 0.6 else side.boundary_u - 0.3
            x = side.x(u)
            size = _u(r, 0.5, 0.9)
            hp = _u(r, 2.0, 2.8)
            self._pole(x, z, self.kerb_h, hp + size * 0.5, _u(r, 0.05, 0.09), grey)
            self._sign(x, self.kerb_h + hp + size * 0.5, z - 0.05, size)
            if r.random() < 0.3:
                self._sign(x, self.kerb_h + hp - size * 0.6, z - 0.05, size * 0.8)
        for _ in range(int(r.integers(0, 4))):  # bare poles and bollards
            side = self.sides[-1 if r.random() < 0.5 else 1]
            z = self.depth_z(4, 60)
            if not self.in_cross(z):
                self._pole(side.x(_u(r, 0.2, 0.5)), z, self.kerb_h, _u(r, 0.8, 4.0), _u(r, 0.06, 0.15), grey)

    def _light(self, x: float, y_top: float, z: float, ped: bool) -> None:
        cam, cv, r = self.cam, self.cv, self.rng
        k = cam.k(z)
        wd = _u(r, 0.28, 0.36) * (0.85 if ped else 1.0)
        n = 2 if ped else 3
        ht = wd * (n + 0.2)
        cx, ty = cam.pt(x, y_top, z)
        housing = _pick(r, ((28, 30, 30), (42, 44, 40), (60, 62, 58), (170, 150, 40)), 0.1) * self.sun
        if r.random() < 0.35:  # back plate
            cv.paint(
                cv.rect(cx - wd * k * 0.85, ty - 0.08 * k, cx + wd * k * 0.85, ty + (ht + 0.08) * k),
                z,
                LIGHT,
                housing * 0.8,
            )
        cv.paint(cv.rect(cx - wd * k / 2, ty, cx + wd * k / 2, ty + ht * k), z - 0.01, LIGHT, housing)
        lit = int(r.integers(n))
        lamp_r = wd * 0.34 * k
        for i in range(n):
            cy = ty + (0.1 + wd * (i + 0.5)) * k
            j = i if n == 3 else (0 if i == 0 else 2)
            col = np.array(_LAMPS[j], np.float32) * (1.0 if i == lit else 0.3)
            cv.paint(cv.ellipses([(cx, cy, lamp_r, lamp_r)]), z - 0.02, LIGHT, col, tex=(0.03, 0.0, 0.0))

    def traffic_lights(self) -> None:
        cam, r = self.cam, self.rng
        grey = _pick(r, ((100, 102, 106), (60, 64, 62), (150, 152, 150))) * self.sun
        spots: list[float] = []
        if self.cross_z is not None:
            spots += [self.cross_z[0] - 1.5, self.cross_z[1] + 1.5]
        elif self.crosswalk is not None:
            spots.append(self.crosswalk[0] - 0.8)
        elif r.random() < 0.6:
            spots.append(_u(r, 15, 70))
        for z in spots:
            for s in (-1, 1):
                side = self.sides[s]
                x = side.x(0.45)
                if r.random() < 0.85:
                    hp = _u(r, 2.4, 3.6)
                    self._pole(x, z, self.kerb_h, hp + 1.1, _u(r, 0.08, 0.14), grey)
                    self._light(x, self.kerb_h + hp + 1.0, z - 0.1, ped=False)
                    if r.random() < 0.4:
                        self._light(x, self.kerb_h + _u(r, 2.0, 2.3), z - 0.1, ped=True)
                if s == 1 and r.random() < 0.6:  # overhead mast arm
                    hp = _u(r, 5.5, 6.8)
                    self._pole(x, z, self.kerb_h, hp, _u(r, 0.16, 0.24), grey)
                    reach = _u(r, 3, 8)
                    k = cam.k(z)
                    p0, p1 = cam.pt(x, hp - 0.2, z), cam.pt(x - reach, hp - 0.2, z)
                    self.cv.paint(self.cv.line([p0, p1], 0.14 * k), z, POLE, grey, tex=(0.03, 0.0, 0.0))
                    for xl in np.linspace(x - reach + 0.3, x - 1.0, int(r.integers(1, 3))):
                        self._light(float(xl), hp - 0.25, z - 0.1, ped=False)

    def statics(self) -> None:
        """A few bins and benches: Cityscapes' void class 'static', used sparingly."""
        cam, cv, r = self.cam, self.cv, self.rng
        for _ in range(int(r.integers(0, 3))):
            side = self.sides[-1 if r.random() < 0.5 else 1]
            z = self.depth_z(5, 40)
            if self.in_cross(z):
                continue
            x = side.x(side.lawn_w + side.walk_w * _u(r, 0.6, 0.9))
            wd, ht = _u(r, 0.5, 1.6), _u(r, 0.8, 1.1)
            x0, y0 = cam.pt(x - wd / 2, self.kerb_h + ht, z)
            x1, y1 = cam.pt(x + wd / 2, self.kerb_h, z)
            col = _pick(r, ((50, 70, 50), (90, 92, 96), (120, 90, 60), (40, 40, 44))) * self.sun
            cv.paint(cv.rect(x0, y0, x1, y1), z, STATIC, col)

    # -- vehicles --------------------------------------------------------------------------------
    def _box(
        self,
        fr: _Frame,
        l0: float,
        l1: float,
        w0: float,
        w1: float,
        y0: float,
        y1: float,
        col: Arr,
        depth: float,
        label: int,
        inst: int,
    ) -> None:
        """Paint the visible faces of a box given in the vehicle frame."""
        cv, cam = self.cv, self.cam
        x0, x1, z0, z1 = fr.box(l0, l1, w0, w1)
        faces: list[tuple[list[Pt], float]] = []
        if y1 < cam.hc:
            faces.append((self.ground_poly([(x0, z0), (x1, z0), (x1, z1), (x0, z1)], y1), 1.08))
        if x1 < 0:
            faces.append((self.plane_rect("x", x1, z0, z1, y0, y1), 0.88))
        elif x0 > 0:
            faces.append((self.plane_rect("x", x0, z0, z1, y0, y1), 0.88))
        faces.append((self.plane_rect("z", z0, x0, x1, y0, y1), 1.0))
        for pts, shade in faces:
            cv.paint(cv.poly(pts), depth, label, col * shade, tex=(0.03, 0.02, 0.02), inst=inst)

    def _end_rect(self, fr: _Frame, at: float, w0: float, w1: float, y0: float, y1: float) -> list[Pt]:
        xa, za = fr.world(at, w0)
        xb, zb = fr.world(at, w1)
        if fr.cross:
            return self.plane_rect("x", xa, min(za, zb), max(za, zb), y0, y1)
        return self.plane_rect("z", za, min(xa, xb), max(xa, xb), y0, y1)

    def _side_rect(self, fr: _Frame, w: float, l0: float, l1: float, y0: float, y1: float) -> list[Pt]:
        xa, za = fr.world(l0, w)
        xb, zb = fr.world(l1, w)
        if fr.cross:
            return self.plane_rect("z", za, min(xa, xb), max(xa, xb), y0, y1)
        return self.plane_rect("x", xa, min(za, zb), max(za, zb), y0, y1)

    def _wheel(self, fr: _Frame, w: float, at: float, rad: float, depth: float, label: int, inst: int) -> None:
        xa, za = fr.world(at, w)
        pts_ab = [(rad * math.cos(t), rad + rad * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 14, endpoint=False)]
        if fr.cross:
            pts = self.plane_poly("z", za, [(xa + a, b) for a, b in pts_ab])
        else:
            pts = self.plane_poly("x", xa, [(za + a, b) for a, b in pts_ab])
        self.cv.paint(self.cv.poly(pts), depth, label, (26, 26, 28), tex=(0.05, 0.0, 0.0), inst=inst)
        hub = [(a * 0.45, rad + (b - rad) * 0.45) for a, b in pts_ab]
        pts = (
            self.plane_poly("z", za, [(xa + a, b) for a, b in hub])
            if fr.cross
            else self.plane_poly("x", xa, [(za + a, b) for a, b in hub])
        )
        self.cv.paint(self.cv.poly(pts), depth - 1e-3, label, (120, 120, 124), tex=(0.05, 0.0, 0.0), inst=inst)

    def _shadow(self, fr: _Frame) -> None:
        x0, x1, z0, z1 = fr.box(-0.2, fr.length + 0.3, -0.15, fr.width + 0.15)
        self.cv.on_ground(
            self.cv.poly(self.ground_poly([(x0, z0), (x1, z0), (x1, z1), (x0, z1)])), factor=_u(self.rng, 0.35, 0.55)
        )

    def vehicle(self, label: int, fr: _Frame, front_near: bool) -> None:
        r, cv = self.rng, self.cv
        inst = cv.new_instance(label)
        depth = fr.z0
        L, W = fr.length, fr.width
        self._shadow(fr)

        def lf(a: float, b: float) -> tuple[float, float]:
            """Front-relative span -> frame l span."""
            return (a, b) if front_near else (L - b, L - a)

        glass = np.array([_u(r, 35, 75), _u(r, 45, 85), _u(r, 55, 100)], np.float32) * self.sun
        side_w = fr.visible_side()
        end_l = fr.visible_end()
        front_visible = end_l is not None and ((end_l == 0.0) == front_near)
        sun = self.sun
        if label == CAR:
            col = self.material("fleet", _VEHICLE + _BUS) * sun
            H = _u(r, 1.4, 1.65) if r.random() < 0.8 else _u(r, 1.8, 2.2)  # vans are cars too
            hb = H * _u(r, 0.5, 0.6)
            hood, trunk = _u(r, 0.8, 1.3), (_u(r, 0.5, 0.9) if H < 1.7 else 0.15)
            if end_l is not None:
                for wa in (0.12, W - 0.38):
                    cv.paint(
                        cv.poly(self._end_rect(fr, end_l + (0.6 if end_l == 0 else -0.6), wa, wa + 0.26, 0.0, 0.4)),
                        depth,
                        label,
                        (24, 24, 26),
                        inst=inst,
                    )
            self._box(fr, 0, L, 0, W, 0.28, hb, col, depth, label, inst)
            ca, cb = lf(hood, L - trunk)
            self._box(fr, ca, cb, 0.1, W - 0.1, hb, H, col, depth - 1e-3, label, inst)
            if side_w is not None:
                for wl in lf(0.75, 0.75) + lf(L - 0.8, L - 0.8):
                    self._wheel(fr, side_w, wl, 0.32, depth - 3e-3, label, inst)
                for a, b in (
                    lf(hood + 0.15, (hood + L - trunk) / 2 - 0.05),
                    lf((hood + L - trunk) / 2 + 0.05, L - trunk - 0.15),
                ):
                    sw = side_w if side_w == 0 else side_w - 0.1
                    pts = self._side_rect(fr, sw + (0.1 if side_w == 0 else 0), a, b, hb + 0.06, H - 0.07)
                    cv.paint(cv.poly(pts), depth - 2e-3, label, glass, tex=(0.03, 0.03, 0.08), inst=inst)
            if end_l is not None:
                cab_end = ca if end_l == 0 else cb
                cv.paint(
                    cv.poly(self._end_rect(fr, cab_end, 0.2, W - 0.2, hb + 0.06, H - 0.08)),
                    depth - 2e-3,
                    label,
                    glass,
                    tex=(0.03, 0.03, 0.08),
                    inst=inst,
                )
                lamp = (235, 235, 215) if front_visible else (200, 30, 28)
                for wa in (0.1, W - 0.4):
                    cv.paint(
                        cv.poly(self._end_rect(fr, end_l, wa, wa + 0.3, hb - 0.22, hb - 0.06)),
                        depth - 2e-3,
                        label,
                        lamp,
                        tex=(0.03, 0, 0),
                        inst=inst,
                    )
                cv.paint(
                    cv.poly(self._end_rect(fr, end_l, W / 2 - 0.26, W / 2 + 0.26, 0.36, 0.48)),
                    depth - 2e-3,
                    label,
                    (225, 225, 220),
                    tex=(0.03, 0, 0),
                    inst=inst,
                )
        elif label == TRUCK:
            cab_col = self.material("fleet", _VEHICLE + _BUS) * sun
            box_col = (self.material("fleet", _VEHICLE + _BUS) if r.random() < 0.6 else cab_col / sun) * sun
            cab_l, H = _u(r, 1.9, 2.4), _u(r, 2.9, 3.9)
            cab_h = min(H, _u(r, 2.5, 3.1))
            if end_l is not None:
                for wa in (0.1, W - 0.45):
                    cv.paint(
                        cv.poly(self._end_rect(fr, end_l + (0.9 if end_l == 0 else -0.9), wa, wa + 0.35, 0.0, 0.9)),
                        depth,
                        label,
                        (24, 24, 26),
                        inst=inst,
                    )
            a, b = lf(0.3, L - 0.3)
            self._box(fr, a, b, 0.25, W - 0.25, 0.45, 1.0, np.array([35, 35, 38], np.float32) * sun, depth, label, inst)
            a, b = lf(cab_l + 0.25, L)
            self._box(fr, a, b, 0, W, 1.0, H, box_col, depth - 1e-3, label, inst)
            a, b = lf(0, cab_l)
            self._box(fr, a, b, 0, W, 0.5, cab_h, cab_col, depth - 2e-3, label, inst)
            if side_w is not None:
                for wl in lf(1.1, 1.1) + lf(L - 1.5, L - 1.5) + lf(L - 2.6, L - 2.6):
                    self._wheel(fr, side_w, wl, 0.5, depth - 4e-3, label, inst)
                a, b = lf(0.3, cab_l - 0.2)
                cv.paint(
                    cv.poly(self._side_rect(fr, side_w, a, b, cab_h * 0.58, cab_h - 0.15)),
                    depth - 3e-3,
                    label,
                    glass,
                    tex=(0.03, 0.03, 0.08),
                    inst=inst,
                )
            if end_l is not None:
                if front_visible:
                    cv.paint(
                        cv.poly(self._end_rect(fr, end_l, 0.15, W - 0.15, cab_h * 0.55, cab_h - 0.15)),
                        depth - 3e-3,
                        label,
                        glass,
                        tex=(0.03, 0.03, 0.08),
                        inst=inst,
                    )
                    cv.paint(
                        cv.poly(self._end_rect(fr, end_l, 0.35, W - 0.35, 0.7, 1.2)),
                        depth - 3e-3,
                        label,
                        (30, 30, 32),
                        inst=inst,
                    )
                else:
                    for wa in (W / 2 - 0.02, 0.08, W - 0.1):
                        cv.paint(
                            cv.poly(self._end_rect(fr, end_l, wa, wa + 0.03, 1.1, H - 0.1)),
                            depth - 3e-3,
                            label,
                            box_col * 0.6,
                            inst=inst,
                        )
                    for wa in (0.1, W - 0.35):
                        cv.paint(
                            cv.poly(self._end_rect(fr, end_l, wa, wa + 0.25, 0.55, 0.75)),
                            depth - 3e-3,
                            label,
                            (200, 30, 28),
                            tex=(0.03, 0, 0),
                            inst=inst,
                        )
        elif label in (BUS, TRAIN):
            col = self.material("fleet", _VEHICLE + _BUS) * sun
            H = _u(r, 2.9, 3.3) if label == BUS else _u(r, 3.2, 3.7)
            y_floor = 0.3 if label == BUS else 0.45
            band = _pick(r, _BUS) * sun if r.random() < 0.5 else col * 0.8
            if end_l is not None:
                for wa in (0.15, W - 0.5):
                    cv.paint(
                        cv.poly(self._end_rect(fr, end_l + (1.5 if end_l == 0 else -1.5), wa, wa + 0.35, 0.0, 0.9)),
                        depth,
                        label,
                        (24, 24, 26),
                        inst=inst,
                    )
            self._box(fr, 0, L, 0, W, y_floor, H, col, depth, label, inst)
            win_lo, win_hi = (1.15, H - 0.35) if label == BUS else (1.35, H - 0.8)
            if side_w is not None:
                sw = side_w
                pitch = _u(r, 1.3, 1.8) if label == BUS else _u(r, 1.0, 1.5)
                pos = 0.3
                while pos + pitch < L - 0.2:
                    a, b = lf(pos, pos + pitch - 0.15)
                    cv.paint(
                        cv.poly(self._side_rect(fr, sw, a, b, win_lo, win_hi)),
                        depth - 2e-3,
                        label,
                        glass,
                        tex=(0.03, 0.03, 0.08),
                        inst=inst,
                    )
                    pos += pitch
                a, b = lf(0.0, L)
                cv.paint(
                    cv.poly(self._side_rect(fr, sw, a, b, win_lo - 0.35, win_lo - 0.15)),
                    depth - 2e-3,
                    label,
                    band,
                    inst=inst,
                )
                wheels = (
                    lf(2.4, 2.4) + lf(L - 3.0, L - 3.0)
                    if label == BUS
                    else tuple(v for q in range(int(L // 9)) for v in lf(2.0 + q * 9.0, 2.0 + q * 9.0))
                )
                for wl in wheels:
                    self._wheel(fr, sw, wl, 0.48 if label == BUS else 0.42, depth - 3e-3, label, inst)
            if end_l is not None:
                lo = 0.9 if front_visible else 1.7
                cv.paint(
                    cv.poly(self._end_rect(fr, end_l, 0.15, W - 0.15, lo, H - 0.25)),
                    depth - 2e-3,
                    label,
                    glass,
                    tex=(0.03, 0.03, 0.08),
                    inst=inst,
                )
                if label == BUS and front_visible:
                    cv.paint(
                        cv.poly(self._end_rect(fr, end_l, 0.4, W - 0.4, H - 0.45, H - 0.2)),
                        depth - 3e-3,
                        label,
                        (240, 150, 40),
                        inst=inst,
                    )
                lamp = (235, 235, 215) if front_visible else (200, 30, 28)
                for wa in (0.15, W - 0.45):
                    cv.paint(
                        cv.poly(self._end_rect(fr, end_l, wa, wa + 0.3, 0.5, 0.7)), depth - 3e-3, label, lamp, inst=inst
                    )
            if label == TRAIN:  # pantograph and roof equipment
                a, b = lf(L * 0.4, L * 0.4 + 1.2)
                xa, za = fr.world(a, W / 2)
                xb, zb = fr.world(b, W / 2)
                xm, zm = (xa + xb) / 2, (za + zb) / 2
                lw = max(1.0, 0.06 * self.cam.k(fr.z0))
                cam = self.cam
                arms = [cam.pt(xa, H, za), cam.pt(xm, H + 0.5, zm), cam.pt(xb, H, zb)]
                upper = [cam.pt(xa, H + 1.0, za), cam.pt(xm, H + 0.5, zm), cam.pt(xb, H + 1.0, zb)]
                bar_a, bar_b = fr.world(a, W / 2 - 0.8), fr.world(a, W / 2 + 0.8)
                bar = [cam.pt(bar_a[0], H + 1.0, bar_a[1]), cam.pt(bar_b[0], H + 1.0, bar_b[1])]
                for pts in (arms, upper, bar):
                    cv.paint(cv.line(pts, lw), depth, label, (50, 50, 52), inst=inst)

    def vehicles(self) -> None:
        r = self.rng
        if self.tram_x is not None and r.random() < 0.85:
            L = _u(r, 20, 35)
            z = self.depth_z(10, 60)
            toward = self.tram_x < 0 and r.random() < 0.8
            self.free(self.tram_x - 1.3, self.tram_x + 1.3, z, z + L)
            self.vehicle(TRAIN, _Frame(False, self.tram_x, z, L, 2.6), front_near=toward)
        n_lanes = self.n_lanes
        for i in range(int(r.integers(3, 13))):
            lane = int(r.integers(n_lanes))
            xc = self.lanes[lane] + _u(r, -0.3, 0.3)
            toward = lane < n_lanes // 2
            p = r.random()
            label, L, W = (CAR, _u(r, 3.8, 4.9), _u(r, 1.7, 1.95))
            if i == 0 and r.random() < 0.5 or p < 0.08:
                label, L, W = BUS, _u(r, 10, 13), 2.5
            elif i == 1 and r.random() < 0.45 or p < 0.16:
                label, L, W = TRUCK, _u(r, 6, 10), _u(r, 2.3, 2.5)
            z = self.depth_z(6 if abs(xc) < 1.5 else 3, 120)
            if not self.free(xc - W / 2, xc + W / 2, z, z + L):
                continue
            self.vehicle(label, _Frame(False, xc, z, L, W), front_near=toward)
        for xp, _s in self.park:  # parked cars, a few vans or trucks
            z = _u(r, 3, 9)
            while z < min(self.z_end, 90):
                L = _u(r, 3.8, 4.9)
                if r.random() < 0.75 and not self.in_cross(z, z + L) and self.free(xp - 0.9, xp + 0.9, z, z + L, 0.3):
                    label = CAR if r.random() < 0.92 else TRUCK
                    self.vehicle(
                        label,
                        _Frame(
                            False, xp + _u(r, -0.15, 0.15), z, L if label == CAR else 6.5, 1.8 if label == CAR else 2.3
                        ),
                        front_near=r.random() < 0.5,
                    )
                z += L + _u(r, 0.5, 4)
        if self.cross_z is not None:  # cross traffic, seen from the side
            z0, z1 = self.cross_z
            if r.random() < 0.4:
                L = _u(r, 25, 45)
                xc = _u(r, -15, 15)
                self.vehicle(
                    TRAIN, _Frame(True, xc, z0 + _u(r, 1, max(1.5, z1 - z0 - 4)), L, 2.7), front_near=r.random() < 0.5
                )
            used: list[tuple[float, float]] = []
            for _ in range(int(r.integers(0, 4))):
                p = r.random()
                label, L, W = (
                    (CAR, _u(r, 3.8, 4.9), 1.8)
                    if p < 0.7
                    else ((TRUCK, _u(r, 6, 10), 2.4) if p < 0.85 else (BUS, _u(r, 10, 13), 2.5))
                )
                xc = _u(r, -20, 20)
                if any(abs(xc - a) < (L + b) / 2 + 1 for a, b in used):
                    continue
                used.append((xc, L))
                self.vehicle(
                    label, _Frame(True, xc, z0 + _u(r, 0.5, max(1.0, z1 - z0 - 3)), L, W), front_near=r.random() < 0.5
                )

    # -- people ------------------------------------------------------------------------------------
    def _human(
        self, x: float, z: float, ground: float, *, label: int, inst: int, pose: str, facing: int, h: float
    ) -> None:
        """A person walking/standing (``pose`` walk, front) or riding (bike_side, bike_rear, moto_side, moto_rear)."""
        cam, cv, r = self.cam, self.cv, self.rng
        k = cam.k(z)
        fx, fy = cam.pt(x, ground, z)

        def T(u: float, v: float) -> Pt:
            return fx + facing * u * k, fy - v * k

        top = _pick(r, _CLOTHES, 0.15) * self.sun
        legs = _pick(r, _CLOTHES, 0.15) * self.sun
        skin = _pick(r, _SKIN, 0.08) * self.sun
        hair = np.array([_u(r, 20, 70), _u(r, 15, 55), _u(r, 10, 40)], np.float32) * self.sun
        d = z
        lw = 0.075 * h * k
        s = h / 1.75
        if pose == "walk" or pose == "front":
            side = pose == "walk"
            stride = _u(r, 0.0, 0.2) * h if side else 0.0
            hip_w = 0.0 if side else 0.045 * h
            for sign in (-1, 1):
                hip = T(sign * hip_w, 0.5 * h)
                knee = T(sign * (hip_w + stride * 0.45), 0.26 * h)
                foot = T(sign * (hip_w + stride), 0.0)
                cv.paint(cv.line([hip, knee, foot], lw), d, label, legs, inst=inst)
            sh = 0.065 * h if side else 0.12 * h
            torso = [T(-sh * 0.75, 0.48 * h), T(sh * 0.75, 0.48 * h), T(sh, 0.82 * h), T(-sh, 0.82 * h)]
            cv.paint(cv.poly(torso), d - 1e-3, label, top, inst=inst)
            swing = stride * 0.7
            for sign in (-1, 1):
                sx = 0.0 if side else sign * (sh + 0.02 * h)
                hand = T(sx + (sign * swing if side else sign * 0.02 * h), 0.46 * h)
                cv.paint(
                    cv.line([T(sx, 0.8 * h), hand], lw * 0.75), d - 2e-3 * (sign + 2), label, top * 0.92, inst=inst
                )
            if r.random() < 0.25:  # a bag
                bx = (-sh - 0.05 * h) if side else sh + 0.04 * h
                cv.paint(
                    cv.poly([T(bx, 0.45 * h), T(bx + 0.12 * h, 0.45 * h), T(bx + 0.12 * h, 0.62 * h), T(bx, 0.62 * h)]),
                    d - 5e-3,
                    label,
                    _pick(r, _CLOTHES) * self.sun,
                    inst=inst,
                )
            head = (0.02 * h if side else 0.0, 0.915 * h)
        else:
            # Riders: hips on the saddle, hands on the handlebar.
            if pose == "bike_side":
                hip, sho, hand = (-0.17, 0.95), (0.12, 1.45), (0.42, 1.02)
                knee, foot, knee2, foot2 = (0.12, 0.62), (0.05, 0.25), (0.02, 0.55), (-0.08, 0.36)
            elif pose == "moto_side":
                hip, sho, hand = (-0.15, 0.9), (0.08, 1.42), (0.45, 1.05)
                knee, foot, knee2, foot2 = (0.25, 0.8), (0.1, 0.42), (0.2, 0.78), (0.05, 0.42)
            else:
                hip, sho, hand = (0.0, 0.95), (0.0, 1.48), (0.26, 1.02)
                spread = 0.28 if pose == "moto_rear" else 0.14
                knee, foot, knee2, foot2 = (spread, 0.62), (spread * 0.8, 0.32), (-spread, 0.62), (-spread * 0.8, 0.32)
            if pose in ("bike_side", "moto_side"):
                for kn, ft in ((knee2, foot2), (knee, foot)):
                    cv.paint(
                        cv.line([T(hip[0] * s, hip[1] * s), T(kn[0] * s, kn[1] * s), T(ft[0] * s, ft[1] * s)], lw),
                        d + 0.02,
                        label,
                        legs,
                        inst=inst,
                    )
                hw = 0.07 * h
                torso = [
                    T(hip[0] * s - hw, hip[1] * s),
                    T(hip[0] * s + hw, hip[1] * s),
                    T(sho[0] * s + hw, sho[1] * s),
                    T(sho[0] * s - hw, sho[1] * s),
                ]
                cv.paint(cv.poly(torso), d - 1e-3, label, top, inst=inst)
                cv.paint(
                    cv.line([T(sho[0] * s, sho[1] * s - 0.04), T(hand[0] * s, hand[1] * s)], lw * 0.75),
                    d - 2e-3,
                    label,
                    top * 0.92,
                    inst=inst,
                )
            else:
                for kn, ft in ((knee, foot), (knee2, foot2)):
                    hx = 0.06 * h if kn[0] > 0 else -0.06 * h
                    cv.paint(
                        cv.line([T(hx, hip[1] * s), T(kn[0] * s, kn[1] * s), T(ft[0] * s, ft[1] * s)], lw),
                        d - 2e-3,
                        label,
                        legs,
                        inst=inst,
                    )
                sh = 0.13 * h
                torso = [T(-0.09 * h, hip[1] * s), T(0.09 * h, hip[1] * s), T(sh, sho[1] * s), T(-sh, sho[1] * s)]
                cv.paint(cv.poly(torso), d - 3e-3, label, top, inst=inst)
                for sign in (-1, 1):
                    cv.paint(
                        cv.line([T(sign * sh, sho[1] * s - 0.05), T(sign * hand[0] * s, hand[1] * s)], lw * 0.75),
                        d - 4e-3,
                        label,
                        top * 0.92,
                        inst=inst,
                    )
            head = (sho[0] * s + (0.06 if "side" in pose else 0.0), sho[1] * s + 0.16 * h * 0.75 + 0.03)
        hx, hy = T(*head)
        rx, ry = 0.055 * h * k, 0.068 * h * k
        helmet = pose.startswith("moto") or (pose.startswith("bike") and r.random() < 0.5)
        cv.paint(
            cv.ellipses([(hx, hy, rx, ry)]),
            d - 6e-3,
            label,
            skin if not helmet else _pick(r, _CLOTHES) * self.sun,
            inst=inst,
        )
        if not helmet and r.random() < 0.6:
            cv.paint(cv.ellipses([(hx, hy - ry * 0.3, rx, ry * 0.75)]), d - 7e-3, label, hair, inst=inst)

    def _bicycle(
        self, x: float, z: float, ground: float, *, inst: int, side_view: bool, facing: int, moto: bool
    ) -> None:
        cam, cv, r = self.cam, self.cv, self.rng
        k = cam.k(z)
        fx, fy = cam.pt(x, ground, z)
        label = MOTORCYCLE if moto else BICYCLE

        def T(u: float, v: float) -> Pt:
            return fx + facing * u * k, fy - v * k

        frame = _pick(r, _VEHICLE if moto else _CLOTHES, 0.15) * self.sun
        dark = np.array([28, 28, 30], np.float32)
        d = z
        if side_view and not moto:
            rad, tyre = 0.34, max(1.0, 0.05 * k)
            for cx in (-0.52, 0.52):
                cx_, cy_ = T(cx, rad)
                bm = cv.ellipses([(cx_, cy_, rad * k, rad * k)])
                if bm is not None:
                    box, m = bm
                    inner = cv.ellipses([(cx_, cy_, max(rad * k - tyre, 0.0), max(rad * k - tyre, 0.0))])
                    keep = m.copy()
                    if inner is not None and rad * k - tyre > 1.0:
                        (iy0, ix0, iy1, ix1), im = inner
                        sub = keep[iy0 - box[0] : iy1 - box[0], ix0 - box[1] : ix1 - box[1]]
                        sub &= ~im[: sub.shape[0], : sub.shape[1]]
                        hubm = cv.ellipses([(cx_, cy_, 0.05 * k, 0.05 * k)])
                        cv.paint(hubm, d - 1e-3, label, frame, inst=inst)
                    cv.paint((box, keep), d, label, dark, inst=inst)
            bb, saddle, bar, rear, front = (0.0, 0.3), (-0.17, 0.9), (0.42, 1.0), (-0.52, 0.34), (0.52, 0.34)
            w = max(1.0, 0.045 * k)
            for a, b in ((rear, saddle), (saddle, bb), (bb, rear), (bb, bar), (saddle, bar), (bar, front)):
                cv.paint(cv.line([T(*a), T(*b)], w), d - 2e-3, label, frame, inst=inst)
            cv.paint(cv.line([T(-0.27, 0.92), T(-0.07, 0.92)], w * 1.5), d - 3e-3, label, dark, inst=inst)
        elif side_view:
            rad = 0.31
            ells = [(*T(cx, rad), rad * k, rad * k) for cx in (-0.7, 0.7)]
            cv.paint(cv.ellipses(ells), d, label, dark, inst=inst)
            body = [T(-0.75, 0.55), T(-0.3, 0.88), T(0.35, 0.92), T(0.6, 0.78), T(0.45, 0.35), T(-0.35, 0.35)]
            cv.paint(cv.poly(body), d - 1e-3, label, frame, inst=inst)
            cv.paint(
                cv.poly([T(-0.25, 0.35), T(0.25, 0.35), T(0.2, 0.6), T(-0.2, 0.6)]),
                d - 2e-3,
                label,
                (70, 70, 74),
                inst=inst,
            )
            cv.paint(
                cv.line([T(0.6, 0.31), T(0.45, 1.05)], max(1.0, 0.06 * k)), d - 2e-3, label, (80, 80, 84), inst=inst
            )
        elif not moto:  # seen from behind or the front: a thin wheel and a handlebar
            cv.paint(
                cv.rect(*T(-0.03, 0.68), *T(0.03, 0.0)) if facing > 0 else cv.rect(*T(0.03, 0.68), *T(-0.03, 0.0)),
                d,
                label,
                dark,
                inst=inst,
            )
            cv.paint(cv.line([T(-0.3, 1.0), T(0.3, 1.0)], max(1.0, 0.04 * k)), d - 1e-3, label, frame, inst=inst)
            cv.paint(cv.line([T(0.0, 0.7), T(0.0, 1.0)], max(1.0, 0.04 * k)), d - 1e-3, label, frame, inst=inst)
            cv.paint(
                cv.rect(*T(-0.08, 0.95), *T(0.08, 0.88)) if facing > 0 else cv.rect(*T(0.08, 0.95), *T(-0.08, 0.88)),
                d - 2e-3,
                label,
                dark,
                inst=inst,
            )
        else:
            cv.paint(
                cv.rect(*T(-0.08, 0.62), *T(0.08, 0.0)) if facing > 0 else cv.rect(*T(0.08, 0.62), *T(-0.08, 0.0)),
                d,
                label,
                dark,
                inst=inst,
            )
            cv.paint(
                cv.rect(*T(-0.26, 0.95), *T(0.26, 0.42)) if facing > 0 else cv.rect(*T(0.26, 0.95), *T(-0.26, 0.42)),
                d - 1e-3,
                label,
                frame,
                inst=inst,
            )
            cv.paint(cv.line([T(-0.4, 1.05), T(0.4, 1.05)], max(1.0, 0.04 * k)), d - 1e-3, label, dark, inst=inst)
            cv.paint(
                cv.rect(*T(-0.08, 0.75), *T(0.08, 0.66)) if facing > 0 else cv.rect(*T(0.08, 0.75), *T(-0.08, 0.66)),
                d - 2e-3,
                label,
                (210, 30, 28),
                inst=inst,
            )

    def cyclists(self) -> None:
        r, cv = self.rng, self.cv
        n = 0 if r.random() < 0.1 else int(r.integers(1, 6))
        for _ in range(n):
            moto = r.random() < 0.4
            if self.cross_z is not None and r.random() < 0.35:
                z = _u(r, self.cross_z[0] + 0.5, self.cross_z[1] - 1)
                x, ground, side_view, facing = _u(r, -12, 12), 0.0, True, (-1 if r.random() < 0.5 else 1)
            else:
                right = r.random() < 0.7
                x = (self.road_right - 0.9) if right else (self.road_left + 0.9)
                if self.park:
                    x += (-2.3 if right else 2.3) if any(s == (1 if right else -1) for _, s in self.park) else 0
                z = self.depth_z(6, 60)
                if not self.free(x - 0.4, x + 0.4, z - 1.0, z + 1.0):
                    continue
                ground, side_view, facing = 0.0, False, 1
            rider_inst = cv.new_instance(RIDER)
            bike_inst = cv.new_instance(MOTORCYCLE if moto else BICYCLE)
            pose = ("moto" if moto else "bike") + ("_side" if side_view else "_rear")
            self._bicycle(x, z, ground, inst=bike_inst, side_view=side_view, facing=facing, moto=moto)
            self._human(
                x,
                z - (0.01 if side_view else 0.3),
                ground,
                label=RIDER,
                inst=rider_inst,
                pose=pose,
                facing=facing,
                h=_u(r, 1.6, 1.9),
            )
        for _ in range(int(r.integers(1, 6))):  # parked bicycles and motorcycles
            side = self.sides[-1 if r.random() < 0.5 else 1]
            z = self.depth_z(4, 40)
            if self.in_cross(z):
                continue
            moto = r.random() < 0.4
            x = side.x(side.lawn_w + side.walk_w * _u(r, 0.5, 0.9))
            self._bicycle(
                x,
                z,
                self.kerb_h,
                inst=cv.new_instance(MOTORCYCLE if moto else BICYCLE),
                side_view=r.random() < 0.8,
                facing=1 if r.random() < 0.5 else -1,
                moto=moto,
            )

    def people(self) -> None:
        r, cv = self.rng, self.cv
        for _ in range(int(r.integers(3, 16))):
            h = _u(r, 1.55, 1.95) if r.random() < 0.9 else _u(r, 1.0, 1.4)
            if (self.crosswalk is not None or self.cross_z is not None) and r.random() < 0.2:
                if self.crosswalk is not None:
                    za, zb = self.crosswalk
                else:
                    assert self.cross_z is not None
                    za, zb = self.cross_z[0] - 2.0, self.cross_z[0]
                z = _u(r, za, zb)
                x, ground = _u(r, self.road_left, self.road_right), 0.0
            else:
                side = self.sides[-1 if r.random() < 0.5 else 1]
                z = self.depth_z(3, 70)
                if self.in_cross(z):
                    continue
                x = side.x(side.lawn_w + _u(r, 0.3, max(0.4, side.walk_w - 0.3)))
                ground = self.kerb_h
            pose = "walk" if r.random() < 0.55 else "front"
            self._human(
                x,
                z,
                ground,
                label=PERSON,
                inst=cv.new_instance(PERSON),
                pose=pose,
                facing=1 if r.random() < 0.5 else -1,
                h=h,
            )
            self.cv.on_ground(
                self.cv.ellipses([(*self.cam.pt(x, ground, z), 0.35 * self.cam.k(z), 0.08 * self.cam.k(z))]), factor=0.7
            )

    # -- output -----------------------------------------------------------------------------------
    def finish(self) -> SynthScene:
        cv, r = self.cv, self.rng
        labels = cv.label
        inst = np.where(cv.inst >= 0, cv.inst, -1)
        out_inst = labels.astype(np.int32)
        visible = np.unique(inst[inst >= 0])
        lut = np.zeros(max(len(cv.inst_labels), 1), np.int32)
        counters: dict[int, int] = {}
        for i in visible.tolist():
            lab = cv.inst_labels[i]
            lut[i] = lab * 1000 + counters.get(lab, 0)
            counters[lab] = counters.get(lab, 0) + 1
        has = inst >= 0
        out_inst[has] = lut[inst[has]]
        # Camera: exposure, white balance, gamma, blur, sensor noise.
        img = cv.rgb * _u(r, 0.85, 1.15)
        img *= np.array([_u(r, 0.92, 1.08), 1.0, _u(r, 0.9, 1.1)], np.float32)
        img = 255.0 * np.clip(img / 255.0, 0, 1) ** _u(r, 0.85, 1.15)
        passes = int(r.integers(0, 3)) if cv.w >= 512 else int(r.integers(0, 2))
        for _ in range(passes):
            img[1:-1] = 0.25 * img[:-2] + 0.5 * img[1:-1] + 0.25 * img[2:]
            img[:, 1:-1] = 0.25 * img[:, :-2] + 0.5 * img[:, 1:-1] + 0.25 * img[:, 2:]
        img += r.normal(0.0, _u(r, 1.5, 6.0), img.shape).astype(np.float32)
        image = np.clip(img + 0.5, 0, 255).astype(np.uint8)
        return SynthScene(image=image, label_ids=labels.copy(), instance_ids=out_inst)


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    if len(size) != 2 or not all(isinstance(v, int | np.integer) for v in size):
        raise ValueError(f"size {size!r} must be (height, width) integers")
    h, w = int(size[0]), int(size[1])
    if h < MIN_SIZE[0] or w < MIN_SIZE[1]:
        raise ValueError(f"size {h}x{w} is below the minimum {MIN_SIZE[0]}x{MIN_SIZE[1]}")
    if h > MAX_SIDE or w > MAX_SIDE:
        raise ValueError(f"size {h}x{w} exceeds the maximum side {MAX_SIDE}")
    return h, w


def render_scene(rng: np.random.Generator, size: tuple[int, int], *, alike_p: float = ALIKE_P) -> SynthScene:
    """Render one synthetic street scene.

    Args:
        rng: the only source of randomness.
        size: ``(height, width)``, at least :data:`MIN_SIZE`.
        alike_p: the probability of each shared-material group (see ``ALIKE_GROUPS``); 0 gives
            every object its own material. The dataset on disk always uses the default.

    Returns:
        The RGB image, Cityscapes label ids and Cityscapes instance ids.

    Raises:
        ValueError: if ``size`` is too small or too large.
    """
    size = _check_size(size)
    if not 0.0 <= alike_p <= 1.0:
        raise ValueError(f"alike_p {alike_p} must be in [0, 1]")
    return _Scene(rng, size, alike_p).render()


# --------------------------------------------------------------------------------------------
# The on-disk dataset
# --------------------------------------------------------------------------------------------


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of image ``index`` of ``split``: depends on nothing else.

    Args:
        seed: the dataset seed (>= 0).
        split: ``"train"`` or ``"val"``.
        index: the image index in its split (>= 0).

    Returns:
        A fresh ``np.random.Generator``.
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r} must be one of {', '.join(SPLITS)}")
    return np.random.default_rng([seed, SPLITS.index(split), index, GENERATOR_VERSION])


def scene_stem(split: str, index: int) -> tuple[str, str]:
    """``(city, "<city>_<seq:06d>_<frame:06d>")`` of image ``index`` of ``split``.

    Images are dealt round-robin over the split's cities, so the name of image ``i`` does
    not depend on how many images the split has.
    """
    cities = CITIES[split]
    city = cities[index % len(cities)]
    return city, f"{city}_{index // len(cities):06d}_{_FRAME:06d}"


def check_generate_args(
    out_dir: Path, *, train: int, val: int, size: tuple[int, int], seed: int, overwrite: bool = False
) -> None:
    """Validate :func:`generate`'s arguments without writing anything.

    Raises:
        ValueError: naming the bad value: negative or zero total counts, a size outside
            :data:`MIN_SIZE`..4096, a negative seed, ``out_dir`` being a file, or ``out_dir``
            non-empty (a previous synthetic dataset there is replaced only with ``overwrite``;
            any other non-empty directory is always refused).
    """
    for name, n in (("train", train), ("val", val)):
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
            raise ValueError(f"{name} count {n!r} must be a non-negative integer")
    if train + val == 0:
        raise ValueError("train and val counts are both 0: nothing to generate")
    _check_size(size)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed {seed!r} must be a non-negative integer")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output {str(out_dir)!r} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not (out_dir / METADATA_FILE).is_file():
            raise ValueError(
                f"output directory {str(out_dir)!r} is not empty and holds no synthetic dataset; choose another"
            )
        if not overwrite:
            raise ValueError(
                f"output directory {str(out_dir)!r} already holds a synthetic dataset; pass overwrite to replace it"
            )


def _save_png(arr: Arr, path: Path) -> None:
    Image.fromarray(arr).save(path, format="PNG", compress_level=4)


def _color_lut() -> Arr:
    lut = np.zeros((256, 3), np.uint8)
    for lab in CITYSCAPES_LABELS:
        lut[lab.id] = lab.color
    return lut


def write_instance_png(instance_ids: Arr, path: Path) -> None:
    """Write instance ids as a 16-bit greyscale PNG, as Cityscapes does (ids must be < 65536)."""
    if instance_ids.min() < 0 or instance_ids.max() > 0xFFFF:
        raise ValueError("instance ids must be in 0..65535 for a 16-bit PNG")
    Image.fromarray(instance_ids.astype(np.uint16)).save(path, format="PNG", compress_level=4)


def generate(
    out_dir: Path,
    *,
    train: int,
    val: int,
    size: tuple[int, int],
    seed: int,
    progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
    write_color: bool = True,
) -> dict[str, Any]:
    """Write a synthetic dataset in the Cityscapes layout.

    Files: ``leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` (RGB) and
    ``gtFine/<split>/<city>/<stem>_gtFine_{labelIds,instanceIds,color}.png`` (8-bit label ids,
    16-bit instance ids, RGB colours), plus :data:`METADATA_FILE`. Output is byte-identical for
    equal ``(seed, size)``, and image ``i`` of a split does not depend on the counts.

    Args:
        out_dir: target directory; created if missing; must be empty or hold a previous
            synthetic dataset (replaced only when ``overwrite``).
        train: number of training images.
        val: number of validation images.
        size: ``(height, width)``.
        seed: dataset seed (>= 0).
        progress: called as ``progress(done, total)`` after every image.
        overwrite: replace a previous synthetic dataset in ``out_dir``.
        write_color: also write the ``_gtFine_color.png`` visualisations.

    Returns:
        A summary: counts, size, seed, version, file count and per-class pixel fractions
        (train ids, over all images).

    Raises:
        ValueError: for bad arguments (see :func:`check_generate_args`).
    """
    check_generate_args(out_dir, train=train, val=val, size=size, seed=seed, overwrite=overwrite)
    out_dir = Path(out_dir)
    h, w = int(size[0]), int(size[1])
    if (out_dir / METADATA_FILE).is_file():
        for sub in ("leftImg8bit", "gtFine"):
            if (out_dir / sub).is_dir():
                shutil.rmtree(out_dir / sub)
        (out_dir / METADATA_FILE).unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "generator": "hyctas_core.data.synth",
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "size": [h, w],
        "counts": {"train": int(train), "val": int(val)},
        "cities": {s: list(CITIES[s]) for s in SPLITS},
        "layout": "cityscapes",
        "complete": False,
    }
    (out_dir / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    colors = _color_lut()
    train_lut = id_to_train_id_lut()
    pixels = np.zeros(256, np.int64)
    jobs = [(s, i) for s, n in (("train", train), ("val", val)) for i in range(int(n))]
    files = 0
    for done, (split, i) in enumerate(jobs, start=1):
        scene = render_scene(scene_rng(int(seed), split, i), (h, w))
        city, stem = scene_stem(split, i)
        img_dir = out_dir / "leftImg8bit" / split / city
        gt_dir = out_dir / "gtFine" / split / city
        img_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        _save_png(scene.image, img_dir / f"{stem}_leftImg8bit.png")
        _save_png(scene.label_ids, gt_dir / f"{stem}_gtFine_labelIds.png")
        write_instance_png(scene.instance_ids, gt_dir / f"{stem}_gtFine_instanceIds.png")
        files += 3
        if write_color:
            _save_png(colors[scene.label_ids], gt_dir / f"{stem}_gtFine_color.png")
            files += 1
        pixels += np.bincount(train_lut[scene.label_ids].ravel(), minlength=256)
        if progress is not None:
            progress(done, len(jobs))
    total = max(int(pixels.sum()), 1)
    freq = {TRAIN_ID_NAMES[t]: round(int(pixels[t]) / total, 6) for t in range(NUM_CLASSES)}
    freq["ignored"] = round(int(pixels[IGNORE_INDEX]) / total, 6)
    meta["complete"] = True
    meta["class_pixel_fraction"] = freq
    (out_dir / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return {
        "out_dir": str(out_dir),
        "train": int(train),
        "val": int(val),
        "size": [h, w],
        "seed": int(seed),
        "version": GENERATOR_VERSION,
        "files": files,
        "class_pixel_fraction": freq,
    }
