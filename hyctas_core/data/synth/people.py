"""People and riders of a scene."""

from __future__ import annotations

import numpy as np

from hyctas_core.data.synth.layout import _pick, _SceneBase, _u
from hyctas_core.data.synth.materials import _CLOTHES, _SKIN, _VEHICLE, BICYCLE, MOTORCYCLE, PERSON, RIDER, Pt


class _People(_SceneBase):
    """People, and riders on bicycles and motorcycles."""

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
