"""Latency of a sub-network: measured, or predicted from a per-op lookup table.

The lookup table (FasterSeg style) times every op configuration the search space can
produce at one input size on one device, keyed by op, feature size, input and output
channels and stride (``conv_downup_H64_W128_Cin96_Cout64_s1``), plus the stem, the branch
fusion nodes and the aggregation heads. :meth:`LookupTableLatency.predict` sums the entries
of an architecture's cells (shared cells once) without running it. The device, the model
configuration and the input size are part of the table's identity.

Ops timed alone are not ops inside a network: on CPU an isolated attention block is slower
than the same block between convolutions, fusion and head pieces are faster, and every cell
adds a little dispatch cost. ``build_table(calibration_archs=N)`` therefore also measures N
sampled networks end to end and fits one non-negative scale per entry group (stem, each op,
fusion, aggregation) plus a per-cell cost by NNLS (the kernel-level prediction plus linear
correction of nn-Meter); the table stores the coefficients and :meth:`LookupTableLatency.predict`
applies them. A table without them predicts the plain sum.
"""

from __future__ import annotations

import abc
import functools
import gc
import json
import math
import platform
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hyctas_core.config import ModelConfig
from hyctas_core.heads import upsample_logits
from hyctas_core.layers import feature_sizes
from hyctas_core.network import (
    HyCTASNet,
    _new_aggregation,
    _new_fusion,
    _new_stem,
    combo_key,
    plan_network,
    stem_widths,
)
from hyctas_core.ops import OPS, create_op
from hyctas_core.profile import measure_latency, time_fn
from hyctas_core.search_space import SCALES, WIDTHS, Arch, num_filters, sample_arch

__all__ = [
    "GROUPS",
    "LatencyModel",
    "LatencyTable",
    "LookupTableLatency",
    "MeasuredLatency",
    "build_table",
    "calibrate",
    "entry_group",
    "op_key",
]

TABLE_FORMAT = "hyctas-latency-table/1"


def op_key(op: str, h: int, w: int, cin: int, cout: int, stride: int) -> str:
    return f"{op}_H{h}_W{w}_Cin{cin}_Cout{cout}_s{stride}"


# Entry groups the calibration scales separately ("per_cell" is a cost per cell on top).
GROUPS: tuple[str, ...] = ("stem", *OPS, "fusion", "agg")


def entry_group(key: str) -> str:
    """The group of a table key: ``stem``, the op name, ``fusion`` or ``agg``."""
    if key == "stem":
        return key
    if key.startswith("fusion"):
        return "fusion"
    if key.startswith("agg_"):
        return "agg"
    return key.split("_H", 1)[0]


def _fusion_key(end_scale: int, skip_chs: tuple[int, ...]) -> str:
    return f"fusion{end_scale}_" + "_".join(f"skip{c}" for c in skip_chs)


def _agg_key(combination: tuple[int, ...]) -> str:
    return f"agg_{combo_key(combination)}"


def device_name(device: str) -> str:
    """A human name of the device the table was built on (part of its identity)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


class LatencyModel(abc.ABC):
    """Latency (ms, batch 1) of an architecture at the configured input size."""

    @abc.abstractmethod
    def latency_ms(self, arch: Arch, net: nn.Module | None = None) -> tuple[float, str]:
        """(milliseconds, source) for ``arch``; ``net`` may be its already built network."""


class MeasuredLatency(LatencyModel):
    """Times the network: warm-up, then ``duration_s`` of batch-1 runs, median.

    The source it reports is ``measured:<device class>`` when a class is given (``V100``,
    ``RTX3090``, ``cpu``: what a search targets), else ``measured:<torch device>``.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        input_size: tuple[int, int],
        *,
        duration_s: float = 1.0,
        device: str = "cpu",
        device_class: str | None = None,
    ) -> None:
        self.cfg, self.input_size, self.duration_s, self.device = cfg, input_size, duration_s, device
        self.device_class = device_class

    def latency_ms(self, arch: Arch, net: nn.Module | None = None) -> tuple[float, str]:
        model = net if net is not None else HyCTASNet(arch, self.cfg)
        stats = measure_latency(model, self.input_size, duration_s=self.duration_s, device=self.device)
        return stats.median_ms, f"measured:{self.device_class or self.device}"


class DeferredLatency(LatencyModel):
    """No latency here: it is measured elsewhere (a timing slot on a node of the target device
    class) and filled in later; the evaluator reports NaN with source ``deferred``."""

    def latency_ms(self, arch: Arch, net: nn.Module | None = None) -> tuple[float, str]:
        return math.nan, "deferred"


@dataclass
class LatencyTable:
    device: str
    device_name: str
    input_size: tuple[int, int]
    model: dict[str, Any]
    torch_version: str
    entries: dict[str, float] = field(default_factory=dict)
    format: str = TABLE_FORMAT
    # group -> scale of its entries' sum, plus "per_cell" (ms per cell); empty: the plain sum.
    calibration: dict[str, float] = field(default_factory=dict)
    # The device class it was built on (``cpu``, ``V100``, ...; what a search targets); None in
    # tables from before classes existed.
    device_class: str | None = None
    # Measurements folded into ``calibration`` after the build (:func:`fold_measurements`): one
    # note per fold (source, networks, method, error before and after).
    folds: list[dict[str, Any]] = field(default_factory=list)

    def matches(self, device_class: str | None, input_size: tuple[int, int], model: dict[str, Any]) -> bool:
        """Whether this table serves that device class (None: any), input size and model config."""
        same_class = device_class is None or self.device_class == device_class
        return same_class and tuple(self.input_size) == tuple(input_size) and self.model == model

    def save(self, path: Path) -> None:
        data = asdict(self)
        data["input_size"] = list(self.input_size)
        Path(path).write_text(json.dumps(data, indent=1, sort_keys=True))

    @classmethod
    def load(cls, path: Path) -> LatencyTable:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"latency table {str(path)!r} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not a JSON latency table ({e})") from None
        if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT:
            raise ValueError(f"{path}: not a HyCTAS latency table (format {TABLE_FORMAT})")
        data["input_size"] = tuple(data["input_size"])
        return cls(**data)


class LookupTableLatency(LatencyModel):
    """Predicts latency as the sum of table entries (no network is run)."""

    def __init__(self, table: LatencyTable) -> None:
        self.table = table
        self.cfg = ModelConfig.from_dict(table.model)

    def components(self, arch: Arch) -> dict[str, float]:
        """Milliseconds per entry group (:data:`GROUPS`) of ``arch``, and ``per_cell``: its cell count.

        Raises:
            KeyError: naming an op configuration the table lacks.
        """
        plan = plan_network(arch, self.cfg)
        sizes = feature_sizes(self.table.input_size)
        keys = ["stem"]
        for c in plan.cells:
            h, w = sizes[c.in_scale]
            keys.append(op_key(c.op, h, w, c.in_chs, c.out_chs, c.stride))
        keys += [_fusion_key(b.end_scale, b.skip_chs) for b in plan.branches if b.end_scale > 8]
        keys.append(_agg_key(plan.combination))
        out = dict.fromkeys(GROUPS, 0.0)
        for key in keys:
            if key not in self.table.entries:
                raise KeyError(f"latency table ({self.table.device}, {self.table.input_size}) has no entry {key}")
            out[entry_group(key)] += self.table.entries[key]
        out["per_cell"] = float(len(plan.cells))
        return out

    def predict(self, arch: Arch) -> float:
        """Milliseconds (calibrated when the table is); raises ``KeyError`` naming a missing entry."""
        parts = self.components(arch)
        coef = self.table.calibration
        if not coef:
            return sum(v for g, v in parts.items() if g != "per_cell")
        return sum(coef.get(g, 1.0 if g != "per_cell" else 0.0) * v for g, v in parts.items())

    def latency_ms(self, arch: Arch, net: nn.Module | None = None) -> tuple[float, str]:
        return self.predict(arch), f"lut:{self.table.device_class or self.table.device}"


def find_table(directory: Path, device_class: str | None, input_size: tuple[int, int], model: dict[str, Any]) -> Path:
    """The latency table in ``directory`` (``*.json``) built for this device class, input size and
    model config: tables are kept per device class and chosen by it.

    Raises:
        FileNotFoundError: none matches (the message lists what the directory holds).
    """
    found = []
    for path in sorted(Path(directory).glob("*.json")):
        try:
            table = LatencyTable.load(path)
        except ValueError:
            continue  # another kind of JSON file
        if table.matches(device_class, input_size, model):
            return path
        found.append(f"{path.name} ({table.device_class or table.device}, {table.input_size[0]}x{table.input_size[1]})")
    what = f"device class {device_class!r}, input {input_size[0]}x{input_size[1]} and this model"
    raise FileNotFoundError(f"no latency table in {directory} for {what}; it holds: {', '.join(found) or 'none'}")


def _widths(scale: int, cfg: ModelConfig) -> list[int]:
    return sorted({num_filters(scale, cfg.base_channels, w) for w in WIDTHS})


def _entries(
    cfg: ModelConfig, input_size: tuple[int, int], device: torch.device
) -> Iterator[tuple[str, Callable[[], object] | None]]:
    """(key, a zero-argument callable running that piece once, or None if free) per entry."""
    sizes = feature_sizes(input_size)
    stem_chs = stem_widths(cfg)
    stem = _new_stem(cfg).to(device).eval()
    image = torch.randn(1, 3, *input_size, device=device)
    yield "stem", lambda: stem(image)
    for k, scale in enumerate(SCALES):
        h, w = sizes[scale]
        in_options = set(_widths(scale, cfg)) | ({stem_chs[2]} if scale == 8 else set())
        for op in OPS:
            strides = [1] if op == "skip" or k == len(SCALES) - 1 else [1, 2]
            for stride in strides:
                for cin in sorted(in_options):
                    for cout in _widths(scale * stride, cfg):
                        if op == "skip" and cin == cout:
                            yield op_key(op, h, w, cin, cout, stride), None  # identity: costs nothing
                            continue
                        module = create_op(
                            op,
                            cin,
                            cout,
                            stride,
                            heads=cfg.attn_heads,
                            ratio=cfg.attn_ratio,
                            qk_ratio=cfg.attn_qk_ratio,
                            align_corners=cfg.align_corners,
                        )
                        module = module.to(device).eval()
                        x = torch.randn(1, cin, h, w, device=device)
                        yield op_key(op, h, w, cin, cout, stride), functools.partial(module, x)
    skip8 = sorted(set(_widths(8, cfg)) | {stem_chs[2]})
    for end_scale, skip_sets in ((16, [(c,) for c in skip8]), (32, [(a, b) for a in _widths(16, cfg) for b in skip8])):
        for skip_chs in skip_sets:
            fusion = _new_fusion(end_scale, cfg, list(skip_chs), False).to(device).eval()
            x = torch.randn(1, num_filters(end_scale, cfg.base_channels), *sizes[end_scale], device=device)
            finer = [s for s in SCALES if s < end_scale][::-1]
            skips = [torch.randn(1, c, *sizes[s], device=device) for c, s in zip(skip_chs, finer, strict=True)]
            yield _fusion_key(end_scale, skip_chs), functools.partial(fusion, x, skips)
    for mask in range(1, 2 ** len(SCALES)):
        combination = tuple(s for i, s in enumerate(SCALES) if mask >> i & 1)
        ffm, head = _new_aggregation(combination, cfg)
        ffm, head = ffm.to(device).eval(), head.to(device).eval()
        x = torch.randn(1, num_filters(8, cfg.base_channels) * len(combination), *sizes[8], device=device)
        s4 = torch.randn(1, stem_chs[1], *sizes[4], device=device) if cfg.output_stride == 4 else None

        def run(f: nn.Module = ffm, hd: nn.Module = head, t: torch.Tensor = x, s: torch.Tensor | None = s4) -> object:
            return upsample_logits(hd(f(t), s), input_size, cfg.align_corners)

        yield _agg_key(combination), run


@torch.inference_mode()
def calibrate(lut: LookupTableLatency, archs: list[Arch], measured_ms: list[float]) -> dict[str, float]:
    """Non-negative per-group scales (and a per-cell cost) fitting the table to measured networks (NNLS)."""
    from scipy.optimize import nnls

    names = [*GROUPS, "per_cell"]
    X = np.array([[lut.components(a)[n] for n in names] for a in archs])
    coef, _ = nnls(X, np.asarray(measured_ms, dtype=np.float64))
    return {n: round(float(c), 6) for n, c in zip(names, coef, strict=True)}


def _mape(predicted: list[float], measured: list[float]) -> float:
    return round(float(np.mean([abs(p - m) / m for p, m in zip(predicted, measured, strict=True)])) * 100, 2)


def fold_measurements(
    table: LatencyTable, archs: list[Arch], measured_ms: list[float], *, source: str
) -> dict[str, Any]:
    """Fold end-to-end timings of whole networks (say, what served models measured on the
    device the table stands for) into ``table.calibration``, in place; returns the fold's note.

    With more networks than the calibration has coefficients (one per entry group plus the
    per-cell cost), the coefficients are refitted on them (NNLS, as :func:`calibrate`); with
    fewer, the current prediction is rescaled by the median of measured / predicted, which
    keeps the table's ranking and moves its level to the measurements.

    Raises:
        ValueError: no networks, a count mismatch, or a non-positive measurement.
    """
    if not archs or len(archs) != len(measured_ms):
        raise ValueError(f"need one measurement per network, got {len(archs)} networks and {len(measured_ms)} times")
    if min(measured_ms) <= 0:
        raise ValueError("measured latencies must be positive")
    lut = LookupTableLatency(table)
    before = [lut.predict(a) for a in archs]
    names = [*GROUPS, "per_cell"]
    if len(archs) > len(names):
        table.calibration = calibrate(lut, archs, measured_ms)  # components do not depend on calibration
        method = f"refit on {len(archs)} networks (NNLS)"
    else:
        factor = float(np.median([m / p for m, p in zip(measured_ms, before, strict=True)]))
        current = table.calibration or {**dict.fromkeys(GROUPS, 1.0), "per_cell": 0.0}
        table.calibration = {n: round(current.get(n, 0.0) * factor, 6) for n in names}
        method = f"scaled by {factor:.4f} (median measured / predicted of {len(archs)} networks)"
    after = [LookupTableLatency(table).predict(a) for a in archs]
    note = {
        "source": source,
        "networks": len(archs),
        "method": method,
        "mape_before_pct": _mape(before, measured_ms),
        "mape_after_pct": _mape(after, measured_ms),
    }
    table.folds.append(note)
    return note


def build_table(
    cfg: ModelConfig,
    input_size: tuple[int, int],
    *,
    device: str = "cpu",
    duration_s: float = 0.1,
    min_runs: int = 5,
    calibration_archs: int = 0,
    calibration_seconds: float = 1.0,
    seed: int = 0,
    progress: Callable[[int, int, str], None] | None = None,
    device_class: str | None = None,
) -> LatencyTable:
    """Time every op configuration the space can produce (plus stem, fusions, heads).

    Args:
        cfg: model configuration (widths, heads, output stride).
        input_size: the deployment input size (H, W).
        device: where to time ("cpu" or a CUDA device).
        duration_s: timing duration per entry (median of the runs is stored).
        calibration_archs: also measure this many sampled networks (seeded by ``seed``) end to
            end and store per-group scales fitted to them (0: none; 20-40 is plenty).
        calibration_seconds: timing duration per calibration network.
        progress: called with (done, total, key) after each entry and calibration network.
        device_class: the class this machine stands for (``cpu``, ``V100``, ...), kept in the table.
    """
    dev = torch.device(device)
    # Time each entry with only its own module alive: with all ~600 modules and inputs held at
    # once, timings here came out about 1.5x slower (allocator state) than inside a network.
    n_entries = sum(1 for _ in _entries(cfg, input_size, dev))
    gc.collect()
    total = n_entries + calibration_archs
    table = LatencyTable(
        device, device_name(device), input_size, cfg.to_dict(), torch.__version__, device_class=device_class
    )
    for i, (key, fn) in enumerate(_entries(cfg, input_size, dev)):
        if fn is None:
            table.entries[key] = 0.0
        else:
            table.entries[key] = time_fn(
                fn, duration_s=duration_s, min_runs=min_runs, warmup_runs=2, device=dev
            ).median_ms
        del fn
        if progress is not None:
            progress(i + 1, total, key)
    gc.collect()
    if calibration_archs > 0:
        rng = np.random.default_rng([seed, 7])
        archs = [sample_arch(rng, cfg.num_layers) for _ in range(calibration_archs)]
        measure = MeasuredLatency(cfg, input_size, duration_s=calibration_seconds, device=device)
        measured = []
        for j, arch in enumerate(archs):
            measured.append(measure.latency_ms(arch)[0])
            if progress is not None:
                progress(n_entries + j + 1, total, f"calibration network {j + 1}")
        table.calibration = calibrate(LookupTableLatency(table), archs, measured)
    return table
