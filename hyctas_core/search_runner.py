"""Drives a stored search: ask, evaluate what is new, tell, commit the generation, repeat.

Every generation is committed in one transaction with the full loop state (pymoo algorithm,
its RNG, the archive and the phase), so a process killed at any moment resumes from the last
committed generation and, with a deterministic evaluator, ends with the same Pareto front as
an uninterrupted run. Architectures already evaluated, in this search or in any search sharing
the evaluator's cache key, are not evaluated again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hyctas_core.evaluate import ArchEvaluator
from hyctas_core.search import SearchConfig, SearchLoop, hypervolume
from hyctas_core.storage import (
    EvaluationRecord,
    GenerationRecord,
    IndividualRecord,
    SearchRecord,
    SearchState,
    SearchStore,
)

__all__ = [
    "GenerationProgress",
    "SearchFinishedError",
    "StopSearch",
    "create_search",
    "reference_point",
    "run_search",
]


class StopSearch(Exception):
    """Raised by an evaluator or callback to leave :func:`run_search` without touching the search's state.

    For a caller that stops on purpose: the search was cancelled, or its lease went to another
    worker, which now owns the state. Any other exception marks the search FAILED (resumable).
    """


class SearchFinishedError(RuntimeError):
    """The search already ended (succeeded or cancelled); there is nothing to resume."""


@dataclass(frozen=True)
class GenerationProgress:
    search_id: int
    generation: int  # just committed, 0-based
    total_generations: int
    hypervolume: float
    front_size: int
    n_evaluated: int
    n_new: int
    eval_s: float
    loop_s: float
    storage_s: float


def reference_point(costs: list[float]) -> list[float]:
    """Hypervolume reference for ``F = [-miou, cost]``: mIoU 0 and 1.1 x the largest cost of generation 0."""
    return [0.0, 1.1 * max(costs)]


def run_search(
    storage: SearchStore,
    search_id: int,
    evaluator: ArchEvaluator,
    *,
    progress: Callable[[GenerationProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SearchRecord:
    """Run (or resume) search ``search_id`` to its end, or until ``should_stop()`` says so.

    Raises:
        SearchFinishedError: the search already succeeded or was cancelled.
        KeyError: unknown search.
    """
    search = storage.get_search(search_id)
    if search.state in (SearchState.SUCCEEDED, SearchState.CANCELLED):
        raise SearchFinishedError(f"search {search.name!r} already {search.state.value}; nothing to resume")
    config = SearchConfig.from_dict(search.config["search"])
    latest = storage.latest_generation(search_id)
    loop = SearchLoop.from_state(latest.algorithm_state) if latest is not None else SearchLoop.create(config)
    storage.set_search_state(search_id, SearchState.RUNNING)
    ref = search.reference_point
    last_storage_s = 0.0
    try:
        while loop.has_next():
            if should_stop is not None and should_stop():
                return storage.get_search(search_id)
            t0 = time.perf_counter()
            archs = loop.ask()
            results: dict[str, dict[str, Any]] = {
                a.hash: loop.archive[a.hash]["objectives"] for a in archs if a.hash in loop.archive
            }
            missing = [a.hash for a in archs if a.hash not in results]
            results.update(storage.get_evaluations(evaluator.cache_key, missing) if missing else {})
            todo = [a for a in archs if a.hash not in results]
            t1 = time.perf_counter()
            fresh = evaluator.evaluate(todo) if todo else []
            t2 = time.perf_counter()
            results.update({a.hash: r for a, r in zip(todo, fresh, strict=True)})
            loop.tell(archs, [results[a.hash] for a in archs])
            if ref is None:
                ref = reference_point([float(results[a.hash][config.cost_key]) for a in archs])
                storage.set_reference_point(search_id, ref)
            _, F = loop.objectives()
            front = loop.front()
            index = loop.generation - 1
            hv = hypervolume(F, ref)
            loop_s = (t1 - t0) + (time.perf_counter() - t2)
            record = GenerationRecord(
                index=index,
                hypervolume=hv,
                front=front,
                n_evaluated=len(loop.archive),
                n_new=len(todo),
                algorithm_state=loop.state(),
                timings={"eval_s": t2 - t1, "loop_s": loop_s, "prev_storage_s": last_storage_s},
            )
            individuals = [
                IndividualRecord(index, a.hash, a.to_official(), a.num_branches, dict(results[a.hash])) for a in archs
            ]
            evaluations = [EvaluationRecord(evaluator.cache_key, a.hash, r) for a, r in zip(todo, fresh, strict=True)]
            t3 = time.perf_counter()
            storage.commit_generation(search_id, record, individuals, evaluations)
            last_storage_s = time.perf_counter() - t3
            if progress is not None:
                progress(
                    GenerationProgress(
                        search_id, index, config.total_generations, hv, len(front), len(loop.archive), len(todo),
                        t2 - t1, loop_s, last_storage_s,
                    )
                )  # fmt: skip
        storage.set_search_state(search_id, SearchState.SUCCEEDED)
    except StopSearch:
        raise  # the caller stops on purpose (cancelled, or another worker took the search over)
    except BaseException as e:
        # Interrupted or crashed: mark FAILED (resumable) unless someone cancelled it meanwhile.
        if not storage.get_search(search_id).state.is_finished():
            message = "interrupted" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}"
            storage.set_search_state(search_id, SearchState.FAILED, error=message.splitlines()[0][:500])
        raise
    return storage.get_search(search_id)


def create_search(
    storage: SearchStore,
    name: str,
    config: SearchConfig,
    evaluator_spec: dict[str, Any],
    *,
    owner: str | None = None,
    extra: dict[str, Any] | None = None,
) -> int:
    """Store a new search with everything needed to replay it from the database alone."""
    return storage.create_search(
        name, {"search": config.to_dict(), "evaluator": evaluator_spec, **(extra or {})}, owner=owner
    )
