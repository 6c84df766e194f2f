"""One rendered scene: :func:`render_scene` draws every object family in order."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hyctas_core.data.labels import (
    id_to_train_id_lut,
)
from hyctas_core.data.synth.buildings import _Buildings
from hyctas_core.data.synth.furniture import _Furniture
from hyctas_core.data.synth.ground import _Ground
from hyctas_core.data.synth.layout import _u
from hyctas_core.data.synth.materials import ALIKE_P, MAX_SIDE, MIN_SIZE, Arr
from hyctas_core.data.synth.people import _People
from hyctas_core.data.synth.vehicles import _Vehicles


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


class _Scene(_Ground, _Buildings, _Furniture, _Vehicles, _People):
    """Builds one street scene into a :class:`~hyctas_core.data.synth.canvas._Canvas`."""

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
