"""Buildings, walls and fences of a scene."""

from __future__ import annotations

import numpy as np

from hyctas_core.data.synth.layout import _pick, _SceneBase, _Side, _u
from hyctas_core.data.synth.materials import _FACADES, _GREENS, BUILDING, FENCE, VEGETATION, WALL, Arr, Box


class _Buildings(_SceneBase):
    """Buildings with windows, walls, fences and the street's far end."""

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
