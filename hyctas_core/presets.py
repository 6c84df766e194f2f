"""The three architectures shipped by the official HyCTAS code, as data.

Source: MarvinYu1995/HyCTAS @ f915c8d, ``train/jsons/HRTNET_S.json``, ``HRTNET_M.json`` and
``HRTNet_L.json``, transcribed into the official JSON format (op codes: 0 skip, 1 conv,
2 conv_downup, 3 conv_2x_downup, 4 sa; ``paths`` = input scale index of each cell).
"""

from __future__ import annotations

from typing import Any, Literal

from hyctas_core.config import ModelConfig
from hyctas_core.ops import OFFICIAL_QK_RATIO
from hyctas_core.search_space import Arch, ArchError

__all__ = ["OFFICIAL_MODEL", "PRESETS", "PresetName", "get_preset", "modules_of", "preset_model", "preset_names"]

# The official modules around the searched cells (``semantic.yaml``, ``model_type: 1``): the
# stride-4 head with its attention refinement and zoomed double conv, single-head attention at
# full width with queries and keys at 1/8, and the fusion SE without reduction. With these,
# the presets count the official model's params and MACs (``tests/core/test_profile.py``).
OFFICIAL_MODEL: dict[str, Any] = {
    "output_stride": 4,
    "head": "official",
    "attn_heads": 1,
    "attn_ratio": 1.0,
    "attn_qk_ratio": OFFICIAL_QK_RATIO,
    "se_reduction": 1,
}
# "-lite" presets: the same cells with the project's light modules (the ModelConfig defaults,
# also what the supernet uses): stride-8 light head, 2 attention heads at half width with
# full-width queries and keys, SE reduction 4.
LITE_SUFFIX = "-lite"


def _paths(downs: list[int]) -> list[int]:
    out, s = [], 0
    for d in downs:
        out.append(s)
        s += d
    return out


def _downs(n: int, at: tuple[int, ...]) -> list[int]:
    return [1 if i in at else 0 for i in range(n)]


_S_DOWNS = _downs(11, (1, 3))
_M_DOWNS = _downs(17, (1, 15))
_L_DOWNS = [_downs(20, ()), _downs(20, (9,)), _downs(20, (5, 11))]

PresetName = Literal["hyctas-s", "hyctas-m", "hyctas-l", "hyctas-s-lite", "hyctas-m-lite", "hyctas-l-lite"]
PRESETS: dict[str, dict[str, Any]] = {
    # 1 branch ending at 1/32, 11 cells, one attention cell at 1/32.
    "hyctas-s": {
        "ops": [[3, 2, 2, 1, 2, 4, 1, 3, 3, 2, 3]],
        "paths": [_paths(_S_DOWNS)],
        "downs": [_S_DOWNS],
        "widths": [[8 / 12, 8 / 12, 8 / 12, 4 / 12, 8 / 12, 10 / 12, 4 / 12, 10 / 12, 4 / 12, 8 / 12]],
        "lasts": [2],
    },
    # 1 branch ending at 1/32, 17 cells, two attention cells at 1/16.
    "hyctas-m": {
        "ops": [[2, 2, 3, 1, 1, 1, 2, 4, 1, 1, 2, 3, 2, 4, 2, 1, 2]],
        "paths": [_paths(_M_DOWNS)],
        "downs": [_M_DOWNS],
        "widths": [
            [
                8 / 12,
                6 / 12,
                1.0,
                10 / 12,
                10 / 12,
                8 / 12,
                10 / 12,
                8 / 12,
                8 / 12,
                10 / 12,
                10 / 12,
                1.0,
                1.0,
                6 / 12,
                8 / 12,
                6 / 12,
            ]
        ],  # fmt: skip
        "lasts": [2],
    },
    # 3 branches ending at 1/8, 1/16, 1/32, 20 cells each, full widths, one attention
    # cell at the end of every branch.
    "hyctas-l": {
        "ops": [
            [1] * 16 + [3, 3, 3, 4],
            [1] * 8 + [3] + [1] * 8 + [3, 3, 4],
            [1, 1, 1, 1, 3, 1, 1, 1, 1, 1, 3] + [1] * 6 + [3, 3, 4],
        ],
        "paths": [_paths(d) for d in _L_DOWNS],
        "downs": _L_DOWNS,
        "widths": [[1.0] * 19 for _ in range(3)],
        "lasts": [0, 1, 2],
    },
}


def preset_names() -> list[str]:
    return sorted([*PRESETS, *(name + LITE_SUFFIX for name in PRESETS)])


def _key(name: str) -> str:
    key = name.lower().replace("_", "-")
    if key.removesuffix(LITE_SUFFIX) not in PRESETS:
        raise ArchError(f"unknown preset {name!r}; choose one of {', '.join(preset_names())}")
    return key


def get_preset(name: str) -> Arch:
    """The preset architecture ``name`` (case-insensitive, ``_`` or ``-``; ``-lite`` names the
    same cells, see :func:`preset_model`)."""
    return Arch.from_official(PRESETS[_key(name).removesuffix(LITE_SUFFIX)])


def modules_of(model: ModelConfig) -> dict[str, Any]:
    """The module fields of ``model`` (the keys of :data:`OFFICIAL_MODEL`): what tells an
    official network from a lite one with the same cells."""
    return {key: getattr(model, key) for key in OFFICIAL_MODEL}


def preset_model(name: str, **overrides: Any) -> ModelConfig:
    """The model config of preset ``name``: the official modules (:data:`OFFICIAL_MODEL`) for
    ``hyctas-s/m/l``, the light ones (the :class:`ModelConfig` defaults) for ``-lite``;
    ``overrides`` (``base_channels``, ``num_classes``, any field) win."""
    key = _key(name)
    fields = {} if key.endswith(LITE_SUFFIX) else OFFICIAL_MODEL
    return ModelConfig(**{"num_layers": get_preset(key).num_layers, **fields, **overrides})
