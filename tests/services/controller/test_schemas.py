"""The API's choices and bounds come from the core's own lists, so the two cannot drift apart."""

from __future__ import annotations

from typing import get_args

from hyctas_core.presets import preset_names
from hyctas_core.search import MAX_POPULATION, MIN_POPULATION, OBJECTIVES, SearchConfig
from hyctas_core.train import SAMPLINGS, SupernetTrainConfig
from services.controller.schemas import ArchChoice, DeploymentCreate, SearchCreate, SupernetCreate
from services.serve.segmenter import BACKENDS
from services.settings import Settings


def _choices(model: type, field: str) -> set[object]:
    annotation = model.model_fields[field].annotation  # type: ignore[attr-defined]
    return {a for arg in get_args(annotation) or (annotation,) for a in (get_args(arg) or (arg,))} - {type(None)}


def test_choices_are_the_cores() -> None:
    assert _choices(SearchCreate, "objective") == set(OBJECTIVES)
    assert _choices(SupernetCreate, "sampling") == set(SAMPLINGS)
    assert _choices(ArchChoice, "preset") == set(preset_names())
    assert _choices(DeploymentCreate, "backend") == set(BACKENDS)
    # ... and every choice is one the core accepts.
    for objective in OBJECTIVES:
        assert SearchConfig(objective=objective).cost_key == OBJECTIVES[objective]
    for sampling in SAMPLINGS:
        assert SupernetTrainConfig(sampling=sampling).sampling == sampling


def test_search_size_bounds_live_in_the_core() -> None:
    schema = SearchCreate.model_json_schema()["properties"]["population"]
    assert schema["minimum"] == MIN_POPULATION
    fields = Settings.model_fields["max_population"].metadata
    assert any(getattr(m, "le", None) == MAX_POPULATION for m in fields)
    assert any(getattr(m, "ge", None) == MIN_POPULATION for m in fields)
