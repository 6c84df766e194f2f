"""Every `hyctas` command the deployment runs is a real sub-command with real options."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from hyctas_cli.main import app as hyctas_app
from tests.deploy.commands import HYCTAS_INVOCATIONS, resolve_hyctas


def test_the_deployment_runs_the_service_commands() -> None:
    invoked = [inv.words for inv in HYCTAS_INVOCATIONS.values()]
    assert {"controller", "worker", "db"} <= {words[0] for words in invoked if words}, invoked
    assert any(words[:2] == ["db", "upgrade"] for words in invoked), "the migration step"


@pytest.mark.parametrize("invocation", sorted(HYCTAS_INVOCATIONS))
def test_hyctas_command_is_a_real_command(invocation: str) -> None:
    """`hyctas ...` in an image, compose, a manifest or the docs: the sub-command and its options exist."""
    words = HYCTAS_INVOCATIONS[invocation].words
    assert words, invocation
    path, command = resolve_hyctas(words)
    options = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    for word in words[len(path) :]:
        if word.startswith("--"):
            option = word.split("=", 1)[0]
            where = ", ".join(sorted(set(HYCTAS_INVOCATIONS[invocation].origins)))
            assert option in options, f"`hyctas {' '.join(path)}` has no option {option} (used in {where})"
    result = CliRunner().invoke(hyctas_app, [*path, "--help"])
    assert result.exit_code == 0, result.output
