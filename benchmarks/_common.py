"""Shared set-up for the benchmarks: ``--quick`` sizes, the machine a report was measured on, and
for the search benchmarks the demo's supernet, data and latency table."""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

from hyctas_core.evaluate import EvaluatorSpec
from hyctas_core.search_space import Arch


def apply_quick(parser: argparse.ArgumentParser, args: argparse.Namespace, quick: dict[str, Any]) -> None:
    """With ``--quick``, put the toy sizes ``quick`` in place of every option left at its default."""
    if not args.quick:
        return
    defaults = {a.dest: a.default for a in parser._actions}
    for key, value in quick.items():
        if getattr(args, key) == defaults[key]:
            setattr(args, key, value)


def machine() -> dict[str, Any]:
    """What a measurement ran on: processor, CPUs, GPU, Python, torch and its threads."""
    return {
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "gpus": torch.cuda.device_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


class ResultCache:
    """Results by key in a JSON file, rewritten atomically after each new one, so that a long
    benchmark stopped part-way goes on where it was. Several processes may share the file (say,
    shards of one run): each write merges under a lock with what the others stored."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path is not None and path.exists() else {}

    def refresh(self) -> None:
        """Take in what other processes stored since."""
        if self.path is not None and self.path.exists():
            self.data = {**json.loads(self.path.read_text()), **self.data}

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        if self.path is None:
            return
        import fcntl

        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.refresh()
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.data, separators=(",", ":")))  # compact: small diffs when committed
            tmp.replace(self.path)


def add_demo_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--demo-dir", type=Path, default=Path("runs/demo"), help="output of `hyctas demo`")
    parser.add_argument("--calib-images", type=int, default=16)
    parser.add_argument("--val-images", type=int, default=16)


def demo_spec(args: argparse.Namespace, **overrides: Any) -> EvaluatorSpec:
    demo = Path(args.demo_dir)
    ckpt, data, table = demo / "supernet" / "supernet.pt", demo / "data", demo / "latency_table.json"
    missing = [str(p) for p in (ckpt, data, table) if not p.exists()]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: run `hyctas demo --out {demo}` first")
    spec = EvaluatorSpec(
        supernet=str(ckpt.resolve()),
        data=str(data.resolve()),
        calib_images=args.calib_images,
        val_images=args.val_images,
        latency_table=str(table.resolve()),
    )
    return EvaluatorSpec.from_dict({**spec.to_dict(), **overrides})


class CachedEvaluator:
    """Memoises an evaluator by arch hash (benchmarks compare methods on one budget)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.cache_key, self.memo = inner, inner.cache_key, {}
        self.calls = 0

    def evaluate(self, archs: list[Arch]) -> list[dict[str, Any]]:
        todo = [a for a in archs if a.hash not in self.memo]
        self.calls += len(todo)
        for a, r in zip(todo, self.inner.evaluate(todo), strict=True):
            self.memo[a.hash] = r
        return [self.memo[a.hash] for a in archs]

    def close(self) -> None:
        self.inner.close()
