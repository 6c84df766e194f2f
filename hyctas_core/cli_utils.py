"""Helpers shared by the ``hyctas`` CLI modules: one-line errors (exit 2), size parsing."""

from __future__ import annotations

from typing import NoReturn

import typer

__all__ = ["fail", "parse_size"]


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
