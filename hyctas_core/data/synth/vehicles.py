"""Vehicles of a scene."""

from __future__ import annotations

import math

import numpy as np

from hyctas_core.data.synth.layout import _Frame, _pick, _SceneBase, _u
from hyctas_core.data.synth.materials import _BUS, _VEHICLE, BUS, CAR, TRAIN, TRUCK, Arr, Pt


class _Vehicles(_SceneBase):
    """Cars, trucks, buses and trams: boxes in perspective with wheels and shadows."""

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
