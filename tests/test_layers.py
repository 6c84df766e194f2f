"""The three floors import one way: the core (the method) imports no service library and nothing of
``services`` or ``hyctas_cli``; the services never import the CLI; and no module of ours is in an
import cycle, at module level or inside a function."""

from __future__ import annotations

from tools.imports import cycles, graph, violations


def test_the_graph_covers_every_floor() -> None:
    edges = graph()
    floors = {module.split(".")[0] for module in edges}
    assert floors == {"hyctas_core", "services", "hyctas_cli"}
    # The CLI is the one floor that imports both others.
    assert any(t.startswith("services") for t in edges["hyctas_cli.service"])
    assert any(t.startswith("hyctas_core") for t in edges["hyctas_cli.main"])


def test_no_import_cycles() -> None:
    assert cycles(graph()) == []


def test_imports_go_one_way() -> None:
    assert violations(graph()) == []


def test_the_checks_can_fail() -> None:
    """A cycle and a downward import are caught (so the two tests above are not vacuous)."""
    edges = {"hyctas_core.a": {"hyctas_core.b", "sqlalchemy"}, "hyctas_core.b": {"hyctas_core.a"}, "services.x": set()}
    assert cycles(edges) == [["hyctas_core.a", "hyctas_core.b"]]
    assert violations(edges) == ["hyctas_core.a imports sqlalchemy"]
