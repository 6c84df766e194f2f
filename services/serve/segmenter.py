"""``Segmenter``: a trained network behind one ``predict(images)`` call, on one of three backends.

Pure Python and torch (no Ray): the Serve replica wraps it, the benchmark calls it directly.
Backends: ``torch`` (eager), ``torchscript`` (traced) and ``onnxruntime``; the compiled ones are
built per input size on first use (the architecture's resampling is size-specific) with a
dynamic batch axis, and kept in a small LRU cache. Images of different sizes in one call are
grouped by size, each group one batch.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from hyctas_core.data.transforms import normalize
from hyctas_core.network import InferenceWrapper

__all__ = ["BACKENDS", "DEFAULT_BACKEND", "Segmenter", "SegmenterConfig"]

Backend = Literal["torch", "torchscript", "onnxruntime"]
BACKENDS: tuple[str, ...] = ("torch", "torchscript", "onnxruntime")
# Fastest on the CPUs measured (benchmarks/inference.py, 2 cores): ONNX Runtime, then TorchScript.
DEFAULT_BACKEND = "onnxruntime"


@dataclass(frozen=True)
class SegmenterConfig:
    """What a replica serves: a retraining checkpoint, on a backend and device."""

    checkpoint: str
    backend: str = DEFAULT_BACKEND
    device: str = "cpu"
    threads: int = 0  # torch / ORT intra-op threads (0: library default)
    name: str = ""
    model_id: int | None = None
    cache_sizes: int = 4  # compiled models kept (per input size)
    # ONNX Runtime's threads busy-wait for the next call after each one (its default). Off: in a
    # replica the cores are shared with decoding, encoding and HTTP, and on 2 cores the spinning
    # took them (benchmarks/serve.py behind HAProxy: overhead p50 12.4 ms and 0.81 of in-process
    # throughput with spinning, 9.7 ms and 0.90 without).
    spin: bool = False

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmenterConfig:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class _Compiled:
    run: Any  # callable: float32 Bx3xHxW numpy -> logits numpy
    built_s: float


@dataclass
class Segmenter:
    """Loads ``config.checkpoint`` once; ``predict`` returns uint8 train-id label maps."""

    config: SegmenterConfig
    net: nn.Module = field(init=False)
    arch_hash: str = field(init=False)
    _cache: OrderedDict[tuple[int, int], _Compiled] = field(init=False, default_factory=OrderedDict)

    def __post_init__(self) -> None:
        from hyctas_core.retrain import load_model

        if self.config.threads > 0:
            torch.set_num_threads(self.config.threads)
        net, arch, cfg = load_model(Path(self.config.checkpoint), device=self.config.device)
        self.raw = net
        self.panoptic_config = cfg.panoptic if net.panoptic else None
        self.net = InferenceWrapper(net).eval()
        self.arch_hash = arch.hash

    @property
    def identity(self) -> dict[str, Any]:
        return {
            "task": "panoptic" if self.panoptic_config is not None else "semantic",
            "name": self.config.name,
            "model_id": self.config.model_id,
            "arch_hash": self.arch_hash,
            "backend": self.config.backend,
            "checkpoint": self.config.checkpoint,
        }

    # -- backends -------------------------------------------------------------------------------
    def _compile(self, size: tuple[int, int]) -> _Compiled:
        t0 = time.perf_counter()
        backend = self.config.backend
        device = self.config.device
        if backend == "torch":

            @torch.inference_mode()
            def run_eager(x: np.ndarray) -> np.ndarray:
                out: np.ndarray = self.net(torch.from_numpy(x).to(device)).cpu().numpy()
                return out

            return _Compiled(run_eager, 0.0)
        example = torch.zeros(1, 3, *size, device=device)
        if backend == "torchscript":
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(self.net, example)  # type: ignore[no-untyped-call]

            @torch.inference_mode()
            def run_ts(x: np.ndarray) -> np.ndarray:
                out: np.ndarray = traced(torch.from_numpy(x).to(device)).cpu().numpy()
                return out

            return _Compiled(run_ts, time.perf_counter() - t0)
        import onnxruntime as ort

        buffer = io.BytesIO()
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                self.net.cpu(), (example.cpu(),), buffer,  # type: ignore[arg-type]
                input_names=["image"], output_names=["logits"],
                opset_version=18, dynamo=False, dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            )  # fmt: skip
        self.net.to(device)
        options = ort.SessionOptions()
        if self.config.threads > 0:
            options.intra_op_num_threads = self.config.threads
        if not self.config.spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else None
        session = ort.InferenceSession(buffer.getvalue(), options, providers=providers or ["CPUExecutionProvider"])

        def run_ort(x: np.ndarray) -> np.ndarray:
            out: np.ndarray = session.run(None, {"image": x})[0]
            return out

        return _Compiled(run_ort, time.perf_counter() - t0)

    def _compiled(self, size: tuple[int, int]) -> _Compiled:
        hit = self._cache.get(size)
        if hit is not None:
            self._cache.move_to_end(size)
            return hit
        compiled = self._compile(size)
        self._cache[size] = compiled
        while len(self._cache) > self.config.cache_sizes:
            self._cache.popitem(last=False)
        return compiled

    def warm_up(self, size: tuple[int, int]) -> float:
        """Build (and run once) the backend for ``size``; returns the seconds it took."""
        t0 = time.perf_counter()
        self.predict([np.zeros((*size, 3), dtype=np.uint8)])
        return time.perf_counter() - t0

    # -- inference ------------------------------------------------------------------------------
    def predict(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Label maps (uint8 HxW train ids) of RGB uint8 HxWx3 images, in order."""
        out: list[np.ndarray | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault((int(image.shape[0]), int(image.shape[1])), []).append(i)
        for size, idx in groups.items():
            batch = np.stack([normalize(images[i]) for i in idx]).transpose(0, 3, 1, 2)
            logits = self._compiled(size).run(np.ascontiguousarray(batch, dtype=np.float32))
            labels = logits.argmax(1).astype(np.uint8)
            for j, i in enumerate(idx):
                out[i] = labels[j]
        return [o for o in out if o is not None]

    @torch.inference_mode()
    def predict_panoptic(self, image: np.ndarray) -> tuple[bytes, list[dict[str, Any]]]:
        """COCO-panoptic PNG (RGB-encoded segment ids) and its ``segments_info`` for one image.

        Runs the eager network (its centre / offset outputs are not in the compiled backends).

        Raises:
            ValueError: the model has no panoptic head.
        """
        from hyctas_core.panoptic.postprocess import encode_panoptic_png, postprocess_batch

        if self.panoptic_config is None:
            raise ValueError("this model was trained for semantic segmentation: it has no panoptic head")
        x = torch.from_numpy(normalize(image)).permute(2, 0, 1)[None].to(self.config.device)
        ids, segments = postprocess_batch(self.raw(x), self.panoptic_config)[0]
        return encode_panoptic_png(ids.cpu(), segments)
