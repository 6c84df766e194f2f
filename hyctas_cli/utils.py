"""Helpers shared by the ``hyctas`` CLI modules: one-line errors (exit 2), size parsing, consoles."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from pathlib import Path

    from rich.console import Console
    from rich.progress import Progress, ProgressColumn

    from hyctas_core.config import ModelConfig
    from hyctas_core.search_space import Arch

__all__ = ["cli_console", "cli_progress", "fail", "load_arch", "model_config", "parse_size"]

# Width of output that goes to a pipe or a file: wide enough that no table cell is folded.
PIPE_WIDTH = 1000


def cli_console(stderr: bool = False) -> Console:
    """A rich console for CLI output.

    On a terminal: its width, colours and live progress bars. On a pipe or a file (a CI log,
    ``| tee``): plain lines, never wrapped, so that a value or a path is never split across
    lines; tables take their natural width, and progress bars print only their final state.
    """
    from rich.console import Console

    console = Console(stderr=stderr)
    if console.is_terminal:
        return console
    return Console(stderr=stderr, soft_wrap=True, width=PIPE_WIDTH)


def cli_progress(
    *columns: str | ProgressColumn, console: Console | None = None, stderr: bool = False, **kwargs: Any
) -> Progress:
    """A rich progress bar on ``console`` or a new :func:`cli_console` (a live bar on a terminal only)."""
    from rich.progress import Progress

    return Progress(*columns, console=console or cli_console(stderr), **kwargs)


def fail(message: str) -> NoReturn:
    """Print ``error: <message>`` as one line on stderr and exit with status 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def parse_size(text: str) -> tuple[int, int]:
    """``"512x1024"`` -> ``(512, 1024)`` (height x width); exits 2 on a malformed size."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        fail(f"size {text!r} must look like HxW, e.g. 512x1024")
    if not (16 <= h <= 8192 and 16 <= w <= 8192):
        fail(f"size {text!r}: height and width must be in 16..8192")
    return h, w


# The model options of ``hyctas arch`` / ``hyctas export``: the ModelConfig fields a network is
# built with. Unset (None), they are the preset's (official for hyctas-s/m/l, light for -lite;
# the ModelConfig defaults for --from-json).
StrideOpt = Annotated[int | None, typer.Option("--output-stride", help="8, or 4 to fuse the 1/4 stem feature")]
HeadOpt = Annotated[str | None, typer.Option("--head", help="light or official (attention + zoomed conv)")]
HeadsOpt = Annotated[int | None, typer.Option("--attn-heads", min=1, max=64, help="attention heads")]
RatioOpt = Annotated[float | None, typer.Option("--attn-ratio", help="attention width / cell width, (0, 1]")]
QkOpt = Annotated[float | None, typer.Option("--attn-qk-ratio", help="query/key width / value width, (0, 1]")]
SeOpt = Annotated[int | None, typer.Option("--se-reduction", min=1, max=64, help="fusion SE reduction")]
StemOpt = Annotated[float | None, typer.Option("--stem-width", help="stem width multiplier")]


def model_config(
    preset: str | None, arch: Arch, *, base_channels: int, num_classes: int, **options: Any
) -> ModelConfig:
    """The network's config: the preset's (or the defaults), with the options that were given.
    A bad combination exits with one line."""
    from hyctas_core.config import ModelConfig
    from hyctas_core.presets import preset_model

    given = {k: v for k, v in options.items() if v is not None}
    try:
        if preset is not None:
            return preset_model(preset, base_channels=base_channels, num_classes=num_classes, **given)
        return ModelConfig(
            num_layers=max(arch.num_layers, 3), base_channels=base_channels, num_classes=num_classes, **given
        )
    except ValueError as e:
        fail(str(e))


def load_arch(preset: str | None, from_json: Path | None) -> Arch:
    """The arch from ``--preset`` or ``--from-json`` (exactly one)."""
    from hyctas_core.presets import get_preset
    from hyctas_core.search_space import Arch, ArchError, validate

    if (preset is None) == (from_json is None):
        fail("give exactly one of --preset NAME or --from-json FILE")
    try:
        if preset is not None:
            return get_preset(preset)
        assert from_json is not None
        if not from_json.is_file():
            fail(f"arch file {str(from_json)!r} does not exist")
        arch = Arch.from_json(from_json.read_text())
        validate(arch)
        return arch
    except ArchError as e:
        fail(f"invalid architecture: {e}")
