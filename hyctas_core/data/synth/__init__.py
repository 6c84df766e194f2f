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

The package, by concept: :mod:`~hyctas_core.data.synth.materials` (label ids, palettes, shared
materials), :mod:`~hyctas_core.data.synth.canvas` (camera, z-buffered canvas),
:mod:`~hyctas_core.data.synth.layout` (street layout and the scene state), one module per object
family (:mod:`~hyctas_core.data.synth.ground`, ``buildings``, ``furniture``, ``vehicles``,
``people``), :mod:`~hyctas_core.data.synth.scene` (:func:`render_scene`) and
:mod:`~hyctas_core.data.synth.dataset` (the files on disk).
"""

from __future__ import annotations

from hyctas_core.data.synth.dataset import (
    CITIES,
    METADATA_FILE,
    SPLITS,
    check_generate_args,
    generate,
    scene_rng,
    scene_stem,
    write_instance_png,
)
from hyctas_core.data.synth.materials import ALIKE_GROUPS, ALIKE_P, GENERATOR_VERSION, MIN_SIZE
from hyctas_core.data.synth.scene import SynthScene, render_scene

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
    "generate",
    "render_scene",
    "scene_rng",
    "scene_stem",
    "write_instance_png",
]
