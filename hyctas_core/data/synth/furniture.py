"""Vegetation and street furniture of a scene."""

from __future__ import annotations

import math

import numpy as np

from hyctas_core.data.synth.layout import _pick, _SceneBase, _u
from hyctas_core.data.synth.materials import (
    _GREENS,
    _LAMPS,
    _SIGN_COLOURS,
    LIGHT,
    POLE,
    SIGN,
    STATIC,
    VEGETATION,
    Arr,
    Pt,
)


class _Furniture(_SceneBase):
    """Trees, poles carrying signs and lights, traffic lights, bins and benches."""

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
