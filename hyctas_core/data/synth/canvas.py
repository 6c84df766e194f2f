"""The pinhole camera and the z-buffered canvas the scenes are drawn on."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from hyctas_core.data.synth.materials import ROAD, SIDEWALK, SKY, TERRAIN, Arr, Box, Mask, Pt


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
