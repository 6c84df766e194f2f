"""TorchScript and ONNX export of a network (logits only, fixed input size, batch 1).

ONNX files are single files: the weights are stored inside unless they pass protobuf's 2 GB
limit, and only then go to ``<file>.data`` beside it (:data:`ONNX_INLINE_LIMIT`), which must then
travel with the file; :func:`check_onnx_file` says which a file is and checks the data is there.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from hyctas_core.network import InferenceWrapper

__all__ = ["ONNX_INLINE_LIMIT", "check_onnx_file", "export_onnx", "export_torchscript"]

ONNX_INLINE_LIMIT = 2 * 1024**3 - 64 * 1024**2  # protobuf's 2 GB, less room for the graph


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
    ``onnxscript``); ``"torchscript"`` the older, faster tracing exporter. The weights are
    inside the file unless they exceed :data:`ONNX_INLINE_LIMIT` (then in ``<path>.data``).
    """
    path = Path(path)
    wrapped = _wrapped(model)
    weight_bytes = sum(t.numel() * t.element_size() for t in [*wrapped.parameters(), *wrapped.buffers()])
    inline = weight_bytes < ONNX_INLINE_LIMIT
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
            external_data=not inline,
            verbose=False,
        )
    if inline:
        Path(str(path) + ".data").unlink(missing_ok=True)  # a stale one from an earlier export
    check_onnx_file(path)
    return path


def check_onnx_file(path: str | Path) -> list[Path]:
    """The files an ONNX model needs besides ``path`` (empty for a single file).

    Raises:
        FileNotFoundError: ``path``, or an external data file it names, is missing.
        ValueError: ``path`` is not an ONNX model.
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model {str(path)!r} does not exist")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - any parse failure means "not ONNX"
        raise ValueError(f"{path}: not an ONNX model ({type(e).__name__})") from None
    needed = sorted(
        {
            entry.value
            for tensor in proto.graph.initializer
            if tensor.data_location == onnx.TensorProto.EXTERNAL
            for entry in tensor.external_data
            if entry.key == "location"
        }
    )
    missing = [name for name in needed if not (path.parent / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{path}: its weights are in {', '.join(missing)}, which is not beside it")
    return [path.parent / name for name in needed]
