"""Latency lookup table: coverage of the space, arithmetic of predictions, identity."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from hyctas_core.config import ModelConfig
from hyctas_core.latency import (
    DeferredLatency,
    LatencyTable,
    LookupTableLatency,
    MeasuredLatency,
    build_table,
    find_table,
    op_key,
)
from hyctas_core.network import plan_network
from hyctas_core.presets import get_preset
from hyctas_core.search_space import sample_arch

CFG = ModelConfig(base_channels=4, num_layers=6, num_classes=5)
SIZE = (48, 80)


@pytest.fixture(scope="module")
def table() -> LatencyTable:
    return build_table(CFG, SIZE, duration_s=0.0, min_runs=1)


def test_table_covers_every_sampled_arch(table: LatencyTable) -> None:
    lut = LookupTableLatency(table)
    rng = np.random.default_rng(0)
    for _ in range(200):
        assert lut.predict(sample_arch(rng, 6)) > 0
    assert all(v >= 0 for v in table.entries.values())
    assert table.device == "cpu" and table.input_size == SIZE and table.model == CFG.to_dict()


def test_prediction_is_the_sum_of_the_arch_entries(table: LatencyTable) -> None:
    arch = get_preset("hyctas-l")
    cfg = ModelConfig(base_channels=4, num_layers=20, num_classes=5)
    big = build_table(cfg, SIZE, duration_s=0.0, min_runs=1)
    plan = plan_network(arch, cfg)
    h8, w8 = 6, 10  # 48x80 -> 24x40 -> 12x20 -> 6x10 at stride 8
    assert op_key("conv", h8, w8, 32, 32, 1) in big.entries
    expected = big.entries["stem"] + big.entries["agg_8_16_32"]
    sizes = {8: (6, 10), 16: (3, 5), 32: (2, 3)}
    for c in plan.cells:  # shared trunk cells once
        expected += big.entries[op_key(c.op, *sizes[c.in_scale], c.in_chs, c.out_chs, c.stride)]
    expected += big.entries["fusion16_skip32"] + big.entries["fusion32_skip64_skip32"]
    assert LookupTableLatency(big).predict(arch) == pytest.approx(expected)


def test_identity_skip_costs_nothing(table: LatencyTable) -> None:
    assert table.entries[op_key("skip", 6, 10, 32, 32, 1)] == 0.0
    assert table.entries[op_key("skip", 6, 10, 32, 16, 1)] > 0.0


def test_save_load_and_identity_errors(table: LatencyTable, tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    table.save(path)
    loaded = LatencyTable.load(path)
    assert loaded == table
    arch = sample_arch(np.random.default_rng(2), 6)
    c = plan_network(arch, CFG).cells[0]
    key = op_key(c.op, 6, 10, c.in_chs, c.out_chs, c.stride)
    partial = LatencyTable(**{**vars(loaded), "entries": {k: v for k, v in loaded.entries.items() if k != key}})
    with pytest.raises(KeyError, match=f"has no entry {key}"):
        LookupTableLatency(partial).predict(arch)
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not a HyCTAS latency table"):
        LatencyTable.load(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError):
        LatencyTable.load(tmp_path / "missing.json")


def test_measured_latency_source() -> None:
    ms, source = MeasuredLatency(CFG, SIZE, duration_s=0.05).latency_ms(sample_arch(np.random.default_rng(1), 6))
    assert ms > 0 and source == "measured:cpu"
    arch = sample_arch(np.random.default_rng(1), 6)
    _, source = MeasuredLatency(CFG, SIZE, duration_s=0.01, device_class="xeon").latency_ms(arch)
    assert source == "measured:xeon"  # the device class is recorded with every latency
    ms, source = DeferredLatency().latency_ms(arch)
    assert math.isnan(ms) and source == "deferred"


def test_tables_are_kept_and_chosen_per_device_class(table: LatencyTable, tmp_path: Path) -> None:
    for name, device_class in (("a.json", "V100"), ("b.json", "RTX3090")):
        dataclasses.replace(table, device_class=device_class, entries={**table.entries}).save(tmp_path / name)
    (tmp_path / "notes.json").write_text("{}")  # not a table: passed over
    assert find_table(tmp_path, "RTX3090", SIZE, CFG.to_dict()).name == "b.json"
    assert find_table(tmp_path, "V100", SIZE, CFG.to_dict()).name == "a.json"
    assert LatencyTable.load(tmp_path / "b.json").device_class == "RTX3090"
    arch = sample_arch(np.random.default_rng(2), 6)
    _, source = LookupTableLatency(LatencyTable.load(tmp_path / "a.json")).latency_ms(arch)
    assert source == "lut:V100"
    with pytest.raises(FileNotFoundError, match=r"no latency table .* for device class 'A100'.*a.json \(V100, 48x80\)"):
        find_table(tmp_path, "A100", SIZE, CFG.to_dict())
    with pytest.raises(FileNotFoundError, match="device class 'V100', input 96x160"):
        find_table(tmp_path, "V100", (96, 160), CFG.to_dict())


def test_calibration_is_fitted_stored_and_applied(tmp_path: Path) -> None:
    """Calibrated tables store non-negative per-group scales and predict sum(scale * group ms) + per-cell cost."""
    from dataclasses import replace

    from hyctas_core.latency import GROUPS, calibrate, entry_group

    table = build_table(CFG, SIZE, duration_s=0.0, min_runs=1, calibration_archs=12, calibration_seconds=0.01)
    assert set(table.calibration) == {*GROUPS, "per_cell"}
    assert all(v >= 0 for v in table.calibration.values())
    lut = LookupTableLatency(table)
    arch = sample_arch(np.random.default_rng(3), CFG.num_layers)
    parts = lut.components(arch)
    expected = sum(table.calibration[g] * v for g, v in parts.items())
    assert lut.predict(arch) == pytest.approx(expected)
    plain = LookupTableLatency(replace(table, calibration={}))
    assert plain.predict(arch) == pytest.approx(sum(v for g, v in parts.items() if g != "per_cell"))
    path = tmp_path / "t.json"
    table.save(path)
    assert LatencyTable.load(path).calibration == table.calibration
    # The fit recovers known scales exactly when the "measurements" follow them.
    rng = np.random.default_rng(0)
    archs = [sample_arch(rng, CFG.num_layers) for _ in range(40)]
    truth = dict.fromkeys([*GROUPS, "per_cell"], 0.0) | {"sa": 2.0, "conv": 0.5, "stem": 1.0, "per_cell": 0.01}
    measured = [sum(truth[g] * v for g, v in plain.components(a).items()) for a in archs]
    fitted = calibrate(plain, archs, measured)
    for group in ("sa", "conv", "stem", "per_cell"):
        assert fitted[group] == pytest.approx(truth[group], abs=1e-3), group
    assert entry_group("sa_H8_W16_Cin96_Cout96_s1") == "sa" and entry_group("agg_8_16") == "agg"


def test_measurements_fold_into_the_calibration(table: LatencyTable, tmp_path: Path) -> None:
    """A few served networks rescale the prediction (ranking kept, level moved to them); more
    networks than coefficients refit it; the table keeps a note of each fold."""
    from dataclasses import replace

    from hyctas_core.latency import GROUPS, fold_measurements

    rng = np.random.default_rng(5)
    archs = [sample_arch(rng, CFG.num_layers) for _ in range(12)]
    plain = LookupTableLatency(table)
    # Serving measures 1.5x the plain sum: two networks are enough to learn the level.
    few = replace(table, calibration={}, folds=[])
    note = fold_measurements(few, archs[:2], [1.5 * plain.predict(a) for a in archs[:2]], source="serving: a, b")
    assert note["networks"] == 2 and "scaled by 1.5000" in note["method"]
    assert note["mape_before_pct"] == pytest.approx(100 / 3, abs=0.01) and note["mape_after_pct"] == pytest.approx(0)
    folded = LookupTableLatency(few)
    for a in archs:  # every other network moves by the same factor
        assert folded.predict(a) == pytest.approx(1.5 * plain.predict(a), rel=1e-5)
    # Twelve networks following known per-group scales: refitted, not rescaled.
    truth = dict.fromkeys([*GROUPS, "per_cell"], 0.0) | {"sa": 2.0, "conv": 0.7, "stem": 1.0, "agg": 1.0}
    measured = [sum(truth[g] * v for g, v in plain.components(a).items()) for a in archs]
    many = replace(table, calibration={}, folds=[])
    note = fold_measurements(many, archs, measured, source="serving")
    assert "refit on 12 networks" in note["method"] and note["mape_after_pct"] < 1.0
    many.save(tmp_path / "t.json")
    assert LatencyTable.load(tmp_path / "t.json").folds == [note]
    with pytest.raises(ValueError, match="one measurement per network"):
        fold_measurements(many, archs, measured[:3], source="x")
    with pytest.raises(ValueError, match="positive"):
        fold_measurements(many, archs[:1], [0.0], source="x")
