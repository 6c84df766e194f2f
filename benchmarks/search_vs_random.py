"""NSGA-II vs random sampling at an equal evaluation budget (the paper's Table 7 ablation).

On the demo supernet (run `hyctas demo` first), for several seeds: the hypervolume of the
front found by each method (common reference point), and the best mIoU among archs under a
latency budget (the median latency of all evaluated archs). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import CachedEvaluator, add_demo_args, demo_spec  # noqa: E402

from hyctas_core.evaluate import LocalEvaluator  # noqa: E402
from hyctas_core.search import SearchConfig, SearchLoop, hypervolume, non_dominated  # noqa: E402
from hyctas_core.search_space import sample_arch, unique  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    add_demo_args(parser)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--pop", type=int, default=16)
    parser.add_argument("--generations", type=int, default=6)
    args = parser.parse_args(argv)
    spec = demo_spec(args)
    evaluator = CachedEvaluator(LocalEvaluator(spec))
    num_layers = evaluator.inner._evaluator.supernet.cfg.num_layers
    runs: list[dict[str, Any]] = []
    for seed in range(args.seeds):
        loop = SearchLoop.create(
            SearchConfig(pop_size=args.pop, generations=args.generations, seed=seed, num_layers=num_layers)
        )
        while loop.has_next():
            archs = loop.ask()
            loop.tell(archs, evaluator.evaluate(archs))
        nsga = [(v["objectives"]["miou"], v["objectives"]["latency_ms"]) for v in loop.archive.values()]
        budget = len(nsga)  # distinct archs NSGA-II evaluated
        rng = np.random.default_rng([seed, 99])
        pool = unique(sample_arch(rng, num_layers) for _ in range(budget * 3))[:budget]
        rand = [(r["miou"], r["latency_ms"]) for r in evaluator.evaluate(pool)]
        runs.append({"seed": seed, "budget": budget, "nsga2": nsga, "random": rand})
    all_lat = [lat for r in runs for m in ("nsga2", "random") for _, lat in r[m]]
    ref = [0.0, 1.1 * max(all_lat)]
    lat_budget = float(np.median(all_lat))
    rows = []
    for r in runs:
        row: dict[str, Any] = {"seed": r["seed"], "evaluations": r["budget"]}
        for m in ("nsga2", "random"):
            F = np.array([[-miou, lat] for miou, lat in r[m]])
            under = [miou for miou, lat in r[m] if lat <= lat_budget]
            row[m] = {
                "hypervolume": round(hypervolume(F, ref), 5),
                "front_size": int(len(non_dominated(F))),
                "best_miou": round(max(miou for miou, _ in r[m]), 4),
                "best_miou_under_budget": round(max(under), 4) if under else None,
            }
        rows.append(row)
    wins = sum(r["nsga2"]["hypervolume"] > r["random"]["hypervolume"] for r in rows)
    report = {
        "benchmark": "search_vs_random",
        "supernet": spec.supernet,
        "reference_point": ref,
        "latency_budget_ms": round(lat_budget, 3),
        "pop": args.pop,
        "generations": args.generations,
        "evaluations_run": evaluator.calls,
        "runs": rows,
        "nsga2_hv_mean": statistics.fmean(r["nsga2"]["hypervolume"] for r in rows),
        "random_hv_mean": statistics.fmean(r["random"]["hypervolume"] for r in rows),
        "nsga2_wins": f"{wins}/{len(rows)}",
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
