"""Helpers shared by the ``hyctas`` CLI modules: one-line errors (exit 2), size parsing, consoles."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, ProgressColumn

    from hyctas_core.config import ModelConfig
    from hyctas_core.search_space import Arch

__all__ = [
    "ModelOptions",
    "cli_console",
    "cli_progress",
    "fail",
    "load_arch",
    "model_config",
    "model_options",
    "parse_size",
]

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


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    """What ``--preset`` / ``--from-json`` and the model flags of ``hyctas arch`` / ``hyctas export``
    ask for (see :func:`model_options`): the arch, the input and the ModelConfig fields a network
    is built with. Unset (None), a config field is the preset's (official for hyctas-s/m/l, light
    for -lite; the ModelConfig defaults for --from-json)."""

    preset: Annotated[
        str | None,
        typer.Option("--preset", help="hyctas-s, hyctas-m, hyctas-l (official modules) or hyctas-s-lite, ... (light)"),
    ] = None
    from_json: Annotated[Path | None, typer.Option("--from-json", help="arch in the official JSON format")] = None
    base_channels: Annotated[int, typer.Option("--base-channels", min=1, max=256, help="F: full widths 8F/16F/32F")] = (
        12
    )
    input_size: Annotated[str, typer.Option("--input-size", help="HxW")] = "512x1024"
    num_classes: Annotated[int, typer.Option("--num-classes", min=1, max=10000)] = 19
    output_stride: Annotated[int | None, typer.Option(help="8, or 4 to fuse the 1/4 stem feature")] = None
    head: Annotated[str | None, typer.Option(help="light or official (attention + zoomed conv)")] = None
    attn_heads: Annotated[int | None, typer.Option(min=1, max=64, help="attention heads")] = None
    attn_ratio: Annotated[float | None, typer.Option(help="attention width / cell width, (0, 1]")] = None
    attn_qk_ratio: Annotated[float | None, typer.Option(help="query/key width / value width, (0, 1]")] = None
    se_reduction: Annotated[int | None, typer.Option(min=1, max=64, help="fusion SE reduction")] = None
    stem_width: Annotated[float | None, typer.Option(help="stem width multiplier")] = None

    @property
    def given(self) -> bool:
        """Whether an arch was named (``--preset`` or ``--from-json``)."""
        return self.preset is not None or self.from_json is not None

    def size(self) -> tuple[int, int]:
        return parse_size(self.input_size)

    def arch(self) -> Arch:
        return load_arch(self.preset, self.from_json)

    def config(self, arch: Arch) -> ModelConfig:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in ("preset", "from_json", "base_channels", "input_size", "num_classes"):
            del fields[name]
        return model_config(self.preset, arch, base_channels=self.base_channels, num_classes=self.num_classes, **fields)


_F = TypeVar("_F", bound=Callable[..., Any])


def model_options(command: _F) -> _F:
    """Give a Typer command the model flags: its ``model: ModelOptions`` parameter becomes
    ``--preset``, ``--from-json``, ``--base-channels``, ... on the command line, and the command is
    called with them gathered into one :class:`ModelOptions`."""
    own = inspect.signature(command, eval_str=True)
    flag_types = typing.get_type_hints(ModelOptions, include_extras=True)  # Annotated[type, typer.Option]
    flags = [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=flag_types[f.name])
        for f in dataclasses.fields(ModelOptions)
    ]
    params = [p for name, p in own.parameters.items() if name != "model"] + flags

    @functools.wraps(command)
    def run(**kwargs: Any) -> Any:
        model = ModelOptions(**{f.name: kwargs.pop(f.name) for f in dataclasses.fields(ModelOptions)})
        return command(model=model, **kwargs)

    run.__signature__ = own.replace(parameters=params)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in params} | {"return": own.return_annotation}
    return run  # type: ignore[return-value]


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
