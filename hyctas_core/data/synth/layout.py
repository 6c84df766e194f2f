"""The street layout (sides, frames of objects) and :class:`_SceneBase`, the state every object family draws from."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hyctas_core.data.synth.canvas import _Camera, _Canvas
from hyctas_core.data.synth.materials import _CONCRETE, _FACADES, ALIKE_GROUPS, ALIKE_P, Arr, Pt


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


class _SceneBase:
    """The scene's state and the geometry its object families share: camera, canvas, street layout, materials."""

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
