"""Evaluation of a candidate sub-network: BN recalibration, mIoU, latency, FLOPs, params.

Weight-sharing supernets keep BN statistics that mix every sub-network, so each candidate
is extracted and its BN statistics are recomputed from training images before it is
scored (paper: 1000 Cityscapes training images). Recalibration resets the running
statistics and forwards a seeded, fixed subset of training images in train mode with
``momentum=None`` (cumulative averages), then switches to eval.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from hyctas_core.configbase import ConfigBase
from hyctas_core.data.base import subset_indices
from hyctas_core.latency import LatencyModel
from hyctas_core.metrics import ConfusionMatrix
from hyctas_core.profile import count_macs, count_params
from hyctas_core.search_space import Arch
from hyctas_core.supernet import Supernet

__all__ = [
    "ArchEvaluator",
    "CandidateEvaluator",
    "EvalResult",
    "EvaluatorSpec",
    "LocalEvaluator",
    "evaluate_miou",
    "objectives_of",
    "recalibrate_bn",
    "subset_indices",
]


class ArchEvaluator(Protocol):
    """What a search needs: a cache key for its results and a batch ``evaluate``."""

    cache_key: str

    def evaluate(self, archs: list[Arch]) -> list[dict[str, Any]]:
        """One objectives dict (``miou``, ``latency_ms``, ``gmacs``, ``params_m``, ...) per arch, in order."""
        ...

    def close(self) -> None: ...


def _images(dataset: Dataset[dict[str, Any]], indices: list[int], batch_size: int) -> Iterator[torch.Tensor]:
    loader = DataLoader(dataset, batch_size=batch_size, sampler=indices, num_workers=0)
    for batch in loader:
        yield batch["image"]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor], *, device: torch.device | str = "cpu") -> int:
    """Recompute every BN layer's running statistics from ``batches``; returns images seen.

    The model ends in eval mode with its original BN momenta.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average over all batches
    model.train()
    seen = 0
    try:
        for x in batches:
            model(x.to(device))
            seen += x.shape[0]
    finally:
        for bn, m in zip(bns, momenta, strict=True):
            bn.momentum = m
        model.eval()
    if seen == 0:
        raise ValueError("BN recalibration needs at least one image")
    return seen


@torch.no_grad()
def evaluate_miou(
    model: nn.Module,
    dataset: Dataset[dict[str, Any]],
    indices: list[int],
    num_classes: int,
    *,
    device: torch.device | str = "cpu",
    ignore_index: int = 255,
) -> ConfusionMatrix:
    """Confusion matrix of ``model``'s argmax predictions on ``dataset[indices]`` (batch 1)."""
    model.eval()
    cm = ConfusionMatrix(num_classes, ignore_index=ignore_index)
    loader = DataLoader(dataset, batch_size=1, sampler=indices, num_workers=0)
    for batch in loader:
        logits = model(batch["image"].to(device))["out"]
        cm.update(logits.argmax(1).cpu(), batch["label"])
    return cm


@dataclass(frozen=True)
class EvalResult:
    """What the search needs to know about one candidate."""

    arch_hash: str
    miou: float  # 0-1
    per_class_iou: list[float | None]
    latency_ms: float
    latency_source: str  # "measured:<device>" or "lut:<device>"
    gmacs: float
    params_m: float
    calib_images: int
    val_images: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class CandidateEvaluator:
    """Scores sub-networks of one trained supernet on fixed calibration / validation subsets.

    Args:
        supernet: the trained supernet (not modified: candidates are extracted copies).
        calib_set: training images for BN recalibration (``"image"`` items).
        val_set: validation images with ``"label"``.
        latency: how to obtain latency (measured or lookup table).
        input_size: the deployment input size for FLOPs (and latency, via ``latency``).
        calib_images / val_images: subset sizes; the subsets are fixed by ``seed``.
        calib_batch_size: images per BN-recalibration forward.
    """

    def __init__(
        self,
        supernet: Supernet,
        calib_set: Dataset[dict[str, Any]],
        val_set: Dataset[dict[str, Any]],
        latency: LatencyModel,
        *,
        input_size: tuple[int, int],
        calib_images: int = 64,
        val_images: int = 32,
        calib_batch_size: int = 8,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        self.supernet = supernet
        self.calib_set, self.val_set = calib_set, val_set
        self.latency = latency
        self.input_size = input_size
        self.calib_batch_size = calib_batch_size
        self.device = torch.device(device)
        self.calib_indices = subset_indices(len(calib_set), calib_images, seed, stream=3)  # type: ignore[arg-type]
        self.val_indices = subset_indices(len(val_set), val_images, seed, stream=4)  # type: ignore[arg-type]
        if not self.calib_indices or not self.val_indices:
            raise ValueError("calibration and validation sets must not be empty")

    def evaluate(self, arch: Arch, *, recalibrate: bool = True) -> EvalResult:
        """Extract ``arch``, recalibrate BN, then mIoU, latency, GMACs and params."""
        t0 = time.perf_counter()
        net = self.supernet.extract(arch).to(self.device)
        if recalibrate:
            recalibrate_bn(net, _images(self.calib_set, self.calib_indices, self.calib_batch_size), device=self.device)
        cm = evaluate_miou(net, self.val_set, self.val_indices, self.supernet.cfg.num_classes, device=self.device)
        ious = cm.iou()
        latency_ms, source = self.latency.latency_ms(arch, net)
        return EvalResult(
            arch_hash=arch.hash,
            miou=float(cm.miou),
            per_class_iou=[None if np.isnan(v) else float(v) for v in ious],
            latency_ms=latency_ms,
            latency_source=source,
            gmacs=count_macs(net, self.input_size) / 1e9,
            params_m=count_params(net) / 1e6,
            calib_images=len(self.calib_indices) if recalibrate else 0,
            val_images=len(self.val_indices),
            seconds=time.perf_counter() - t0,
        )


@dataclass(frozen=True)
class EvaluatorSpec(ConfigBase):
    """Everything an evaluator process needs to build a :class:`CandidateEvaluator`.

    Plain data, so that it can be stored with a search and shipped to Ray actors; two
    evaluators built from equal specs return the same mIoU, GMACs and params for an arch
    (measured latency varies with the machine's load).
    """

    config_name: ClassVar[str] = "evaluator spec"

    supernet: str  # checkpoint path
    data: str  # dataset root (Cityscapes layout)
    calib_images: int = 64
    val_images: int = 32
    eval_size: tuple[int, int] | None = None  # resize images before scoring
    input_size: tuple[int, int] | None = None  # for latency / FLOPs; None: the image size
    # predict latency from this table instead of measuring (a directory: the table in it for
    # ``device_class``, the input size and the model)
    latency_table: str | None = None
    latency_seconds: float = 1.0
    seed: int = 0
    device: str = "cpu"
    threads: int = 0  # torch intra-op threads in the evaluating process (0: leave as is)
    # The device class latency is for (``cpu``, ``V100``, ``RTX3090``, ...): recorded with every
    # latency, part of the cache key, and checked against a latency table's.
    device_class: str | None = None
    # Leave latency to a timing slot elsewhere (the service times on nodes of ``device_class``).
    defer_latency: bool = False

    def cache_key(self) -> str:
        """Identifies results: the checkpoint's content, the data, every setting but where it runs."""
        digest = hashlib.sha256()
        with open(self.supernet, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        # Where and how it runs is not what it computes: the torch device, threads and whether
        # latency is timed here or in a timing slot elsewhere (the device class is kept).
        ignored = ("supernet", "device", "threads", "defer_latency")
        settings = {k: v for k, v in self.to_dict().items() if k not in ignored}
        settings["data"] = str(Path(self.data).resolve())
        digest.update(json.dumps(settings, sort_keys=True).encode())
        return digest.hexdigest()[:32]

    def build(self) -> CandidateEvaluator:
        """Load the supernet and datasets and make the evaluator (once per process / actor)."""
        from hyctas_core.data.cityscapes import CityscapesDataset
        from hyctas_core.data.transforms import SegTransform
        from hyctas_core.latency import (
            DeferredLatency,
            LatencyTable,
            LookupTableLatency,
            MeasuredLatency,
            find_table,
        )
        from hyctas_core.train import load_supernet

        if self.threads > 0:
            torch.set_num_threads(self.threads)
        supernet = load_supernet(Path(self.supernet), device=self.device)
        transform = SegTransform(crop_size=None, train=False, base_size=self.eval_size)
        calib = CityscapesDataset(self.data, "train", transform=transform, seed=self.seed)
        val = CityscapesDataset(self.data, "val", transform=transform, seed=self.seed)
        size = self.input_size or (int(val[0]["image"].shape[-2]), int(val[0]["image"].shape[-1]))
        latency: LatencyModel
        if self.defer_latency:
            latency = DeferredLatency()
        elif self.latency_table is not None:
            where = Path(self.latency_table)
            if where.is_dir():  # tables kept per device class: choose this class's
                where = find_table(where, self.device_class, size, supernet.cfg.to_dict())
            table = LatencyTable.load(where)
            if not table.matches(None, size, supernet.cfg.to_dict()):
                raise ValueError(f"latency table {where} is for another input size or model config")
            if self.device_class is not None and table.device_class not in (None, self.device_class):
                raise ValueError(
                    f"latency table {where} is for device class {table.device_class!r}, not {self.device_class!r}"
                )
            latency = LookupTableLatency(table)
        else:
            latency = MeasuredLatency(
                supernet.cfg, size, duration_s=self.latency_seconds, device=self.device, device_class=self.device_class
            )
        return CandidateEvaluator(
            supernet,
            calib,
            val,
            latency,
            input_size=size,
            calib_images=self.calib_images,
            val_images=self.val_images,
            seed=self.seed,
            device=self.device,
        )


def objectives_of(result: EvalResult) -> dict[str, Any]:
    """The part of an :class:`EvalResult` a search stores per individual."""
    return {
        "miou": result.miou,
        "latency_ms": result.latency_ms,
        "gmacs": result.gmacs,
        "params_m": result.params_m,
        "latency_source": result.latency_source,
        "eval_s": result.seconds,
    }


class LocalEvaluator:
    """Evaluates architectures one after the other in this process."""

    def __init__(self, spec: EvaluatorSpec) -> None:
        self.spec = spec
        self.cache_key = spec.cache_key()
        self._evaluator = spec.build()

    def evaluate(self, archs: list[Arch]) -> list[dict[str, Any]]:
        return [objectives_of(self._evaluator.evaluate(a)) for a in archs]

    def close(self) -> None:
        pass
