"""Sky, ground and road markings of a scene."""

from __future__ import annotations

import math

import numpy as np

from hyctas_core.data.synth.layout import _pick, _SceneBase, _u
from hyctas_core.data.synth.materials import _DRY, _GREENS, ROAD, SIDEWALK, TERRAIN


class _Ground(_SceneBase):
    """Sky, road, sidewalks, terrain and the road markings."""

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
