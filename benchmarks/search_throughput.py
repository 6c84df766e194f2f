"""Search throughput: evaluations per minute in-process and with 1 and 2 Ray actors, and the
ask/tell loop + storage time per generation as a fraction of evaluation time (target <= 5%).

Uses the demo's supernet and data (run `hyctas demo` first) and a fresh SQLite database.
Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _common import add_demo_args, demo_spec  # noqa: E402

from hyctas_core.evaluate import LocalEvaluator  # noqa: E402
from hyctas_core.search import SearchConfig  # noqa: E402
from hyctas_core.search_runner import GenerationProgress, create_search, run_search  # noqa: E402


def _run(name: str, evaluator: Any, cfg: SearchConfig, spec: dict[str, Any], db: str) -> dict[str, Any]:
    from services.storage.sql import SQLStorage

    storage = SQLStorage(db, create=True)
    search_id = create_search(storage, name, cfg, spec)
    gens: list[GenerationProgress] = []
    t0 = time.perf_counter()
    run_search(storage, search_id, evaluator, progress=gens.append)
    wall = time.perf_counter() - t0
    evals = sum(g.n_new for g in gens)
    eval_s = sum(g.eval_s for g in gens)
    overhead = [(g.loop_s + g.storage_s) / g.eval_s for g in gens if g.eval_s > 0]
    return {
        "evaluations": evals,
        "wall_s": round(wall, 1),
        "evals_per_min": round(60 * evals / eval_s, 1) if eval_s else None,
        "loop_plus_storage_per_generation_s": round(statistics.fmean(g.loop_s + g.storage_s for g in gens), 4),
        "overhead_fraction_of_eval_median": round(statistics.median(overhead), 4) if overhead else None,
        "overhead_fraction_of_eval_max": round(max(overhead), 4) if overhead else None,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    add_demo_args(parser)
    parser.add_argument("--pop", type=int, default=8)
    parser.add_argument("--generations", type=int, default=3)
    args = parser.parse_args(argv)
    spec = demo_spec(args, threads=1)
    import ray

    from services.worker.ray_pool import RayEvaluatorPool

    with tempfile.TemporaryDirectory() as tmp:
        db = f"sqlite:///{tmp}/bench.db"
        results: dict[str, Any] = {}
        for label, seed in (("in_process", 0), ("ray_1_actor", 1), ("ray_2_actors", 2)):
            cfg = SearchConfig(
                pop_size=args.pop, generations=args.generations, seed=seed, num_layers=12, objective="latency"
            )
            from hyctas_core.train import load_supernet

            cfg = replace(cfg, num_layers=load_supernet(Path(spec.supernet)).cfg.num_layers)
            if label == "in_process":
                evaluator: Any = LocalEvaluator(spec)
            else:
                if not ray.is_initialized():
                    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
                evaluator = RayEvaluatorPool(spec, workers=1 if label == "ray_1_actor" else 2)
            results[label] = _run(label, evaluator, cfg, spec.to_dict(), db)
            if label != "in_process":
                for actor in evaluator.actors:
                    ray.kill(actor)
        if ray.is_initialized():
            ray.shutdown()
    report = {
        "benchmark": "search_throughput",
        "pop": args.pop,
        "generations": args.generations,
        **results,
        "target_overhead": 0.05,
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
