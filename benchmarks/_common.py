"""Shared set-up for the search benchmarks: the demo's supernet, data and latency table."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hyctas_core.evaluate import EvaluatorSpec
from hyctas_core.search_space import Arch


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
