"""Every config of the method reads and writes through one base (``hyctas_core.configbase``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyctas_core.config import ModelConfig, PanopticConfig
from hyctas_core.evaluate import EvaluatorSpec
from hyctas_core.retrain import RetrainConfig
from hyctas_core.search import SearchConfig
from hyctas_core.train import SupernetTrainConfig
from hyctas_core.verify import VerifyConfig

CONFIGS = [
    ModelConfig(base_channels=8, num_layers=6),
    PanopticConfig(thing_ids=(1, 2), sigma=4.0),
    SupernetTrainConfig(model=ModelConfig(num_layers=6), crop_size=(64, 128), base_size=None, sampling="sandwich"),
    RetrainConfig(task="panoptic", crop_size=(32, 64), panoptic=PanopticConfig(thing_ids=(3,))),
    SearchConfig(branches=(1, 3), pop_size=4),
    EvaluatorSpec(supernet="s.pt", data="d", eval_size=(64, 128)),
    VerifyConfig(k=3),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: type(c).__name__)
def test_round_trip_through_plain_json(cfg: object, tmp_path: Path) -> None:
    """to_dict gives JSON data (lists, not tuples; nested configs as mappings); from_mapping and
    from_yaml give back an equal config."""
    import json

    import yaml

    data = cfg.to_dict()  # type: ignore[attr-defined]
    assert json.loads(json.dumps(data)) == data
    assert not any(isinstance(v, tuple) for v in data.values())
    assert type(cfg).from_mapping(data) == cfg  # type: ignore[attr-defined]
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    assert type(cfg).from_yaml(path) == cfg  # type: ignore[attr-defined]


@pytest.mark.parametrize("cls", [type(c) for c in CONFIGS], ids=lambda c: c.__name__)
def test_unknown_keys_are_a_clear_error(cls: type) -> None:
    """No config accepts a key it does not know (a typo would otherwise be silently dropped)."""
    with pytest.raises(ValueError, match=r"unknown .* key\(s\) \['popsize'\]; known: \["):
        cls.from_mapping({"popsize": 3})


def test_wrong_shapes_are_one_line_value_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'model' must be a mapping of ModelConfig fields"):
        SupernetTrainConfig.from_mapping({"model": 3})
    with pytest.raises(ValueError, match="'crop_size' must be a list"):
        RetrainConfig.from_mapping({"crop_size": 64})
    with pytest.raises(ValueError, match="must be a mapping"):
        SearchConfig.from_mapping([("pop_size", 4)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bad evaluator spec"):
        EvaluatorSpec.from_mapping({"data": "d"})  # the checkpoint is required
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        SupernetTrainConfig.from_yaml(bad)
