"""TorchScript and ONNX export of a network (logits only, fixed input size, batch 1)."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from hyctas_core.network import InferenceWrapper

__all__ = ["export_onnx", "export_torchscript"]


def _wrapped(model: nn.Module) -> nn.Module:
    return (model if isinstance(model, InferenceWrapper) else InferenceWrapper(model)).eval()


@torch.no_grad()
def export_torchscript(
    model: nn.Module, input_size: tuple[int, int], path: str | Path | None = None
) -> torch.jit.ScriptModule:
    """Trace ``model`` (eval mode) at ``1 x 3 x H x W``; save to ``path`` if given.

    Tracing, not scripting: the cell graph is fixed once the architecture is, and tracing
    records exactly the ops the architecture uses.
    """
    wrapped = _wrapped(model)
    example = torch.randn(1, 3, *input_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # type: ignore[attr-defined]
        traced: torch.jit.ScriptModule = torch.jit.trace(wrapped, example)  # type: ignore[no-untyped-call]
    if path is not None:
        traced.save(str(path))
    return traced


def export_onnx(
    model: nn.Module,
    input_size: tuple[int, int],
    path: str | Path,
    *,
    exporter: Literal["dynamo", "torchscript"] = "dynamo",
    opset_version: int = 18,
) -> Path:
    """Export ``model`` to ONNX with input ``image`` (1x3xHxW) and output ``logits``.

    ``exporter="dynamo"`` uses the ``torch.export`` based exporter (PyTorch's default, needs
    ``onnxscript``); ``"torchscript"`` the older, faster tracing exporter.
    """
    path = Path(path)
    wrapped = _wrapped(model)
    example = torch.randn(1, 3, *input_size)
    # The exporter reports its progress on stdout; keep CLI output (e.g. --json) clean.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapped,
            (example,),
            str(path),
            input_names=["image"],
            output_names=["logits"],
            opset_version=opset_version,
            dynamo=exporter == "dynamo",
            verbose=False,
        )
    return path
