"""Params, multiply-accumulates and measured latency of a network.

MACs count every convolution (``k*k*Cin/groups*Cout*Hout*Wout``), linear layer and the two
attention matmuls (``QK^T`` and ``AV``: ``2 * heads * N^2 * d`` for N tokens); BN, resizing,
pooling, softmax and element-wise ops are not counted (the usual convention, and the one
the official-code memo uses for its reference counts).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from hyctas_core.layers import SDPAttention

__all__ = ["LatencyStats", "count_macs", "count_params", "count_training_head_params", "measure_latency", "time_fn"]


# Heads that only training runs (their parameters are in a retrained checkpoint, never in inference).
TRAINING_ONLY_HEADS: tuple[str, ...] = ("aux_head",)


def _training_only(name: str) -> bool:
    return name.split(".", 1)[0] in TRAINING_ONLY_HEADS


def count_params(model: nn.Module, *, training_heads: bool = False) -> int:
    """Parameters of the network that inference runs (the numbers a search reports for an arch).

    Args:
        model: Any module; a retrained :class:`~hyctas_core.network.HyCTASNet` may hold an
            auxiliary head that only training uses.
        training_heads: Also count the training-only heads.
    """
    return sum(p.numel() for n, p in model.named_parameters() if training_heads or not _training_only(n))


def count_training_head_params(model: nn.Module) -> int:
    """Parameters of the training-only heads (the auxiliary head), 0 when there are none."""
    return sum(p.numel() for n, p in model.named_parameters() if _training_only(n))


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, int], in_chs: int = 3) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (eval mode, no aux heads)."""
    total = 0

    def conv_hook(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(m, nn.Conv2d)
        cin = inp[0].shape[1]  # the active width for slimmable convs
        k = m.kernel_size[0] * m.kernel_size[1]
        total += k * (cin // m.groups) * out.shape[1] * out.shape[2] * out.shape[3]

    def linear_hook(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        total += inp[0].shape[-1] * out.numel()

    def attn_hook(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        q, k, v = inp[0], inp[1], inp[2]  # (B, h, N, d); queries and keys may be narrower than values
        heads, n_q, n_k = q.shape[1], q.shape[2], k.shape[2]
        total += heads * n_q * n_k * (q.shape[3] + v.shape[3])  # QK^T and AV

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
        elif isinstance(m, SDPAttention):
            handles.append(m.register_forward_hook(attn_hook))
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        model(torch.zeros(1, in_chs, *input_size, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return int(total)


@dataclass(frozen=True)
class LatencyStats:
    """Batch-1 latency over repeated timed runs (milliseconds)."""

    median_ms: float
    mean_ms: float
    p10_ms: float
    p90_ms: float
    runs: int
    device: str

    @property
    def fps(self) -> float:
        return 1000.0 / self.median_ms

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fps": self.fps}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(
    fn: Callable[[], object],
    *,
    duration_s: float = 2.0,
    warmup_runs: int = 3,
    min_runs: int = 5,
    max_runs: int = 10_000,
    device: torch.device | str = "cpu",
) -> LatencyStats:
    """Call ``fn`` after ``warmup_runs`` warm-up calls, for ``duration_s`` (at least ``min_runs``).

    On CUDA every run is synchronised, so the time covers the kernels, not just the launch.
    """
    dev = torch.device(device)
    for _ in range(warmup_runs):
        fn()
    _sync(dev)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < duration_s):
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        times.append((time.perf_counter() - t0) * 1000.0)
    times.sort()
    q = statistics.quantiles(times, n=10) if len(times) >= 2 else [times[0]] * 9
    return LatencyStats(
        median_ms=statistics.median(times),
        mean_ms=statistics.fmean(times),
        p10_ms=q[0],
        p90_ms=q[-1],
        runs=len(times),
        device=str(dev),
    )


@torch.inference_mode()
def measure_latency(
    model: nn.Module,
    input_size: tuple[int, int],
    *,
    duration_s: float = 2.0,
    warmup_runs: int = 3,
    min_runs: int = 5,
    max_runs: int = 10_000,
    device: str | torch.device | None = None,
    in_chs: int = 3,
) -> LatencyStats:
    """Time ``model`` at batch 1: warm-up, then runs for ``duration_s`` (at least ``min_runs``).

    The paper times for 6 s; the default here is shorter for interactive use.
    """
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    dev = torch.device(device)
    model = model.to(dev).eval()
    x = torch.randn(1, in_chs, *input_size, device=dev)
    return time_fn(
        lambda: model(x),
        duration_s=duration_s,
        warmup_runs=warmup_runs,
        min_runs=min_runs,
        max_runs=max_runs,
        device=dev,
    )
