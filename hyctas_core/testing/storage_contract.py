"""The contract every :class:`~hyctas_core.storage.SearchStore` implementation must pass.

Usage (pytest collects the inherited ``test_*`` methods)::

    class TestMyStore(SearchStoreContract):
        @pytest.fixture
        def storage(self) -> Iterator[SearchStore]:
            yield MyStorage(...)   # fresh and empty for every test

The checks cover every method and every guarantee of :mod:`hyctas_core.storage`: search
bookkeeping and its state machine, atomic in-order generation commits, copies in and out,
the evaluation cache, unknown ids, and concurrent writers. The service's storage extends this
suite (``tests/services/storage_contract.py``: listings, jobs, models, deployments, keys).

Where the interface leaves room, this suite fixes the project's choice (both in-tree
backends follow it): ``list_searches(owner=None)`` lists every owner; ``set_search_state``
replaces the stored error with its ``error`` argument; JSON payloads follow JSON semantics
(tuples come back as lists) and values strict JSON cannot hold (objects, NaN) raise
:class:`~hyctas_core.storage.StorageError`; an evaluation-cache key keeps its first result.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest

from hyctas_core.storage import (
    SEARCH_TRANSITIONS,
    EvaluationRecord,
    GenerationRecord,
    IllegalTransition,
    IndividualRecord,
    SearchState,
    SearchStore,
    StorageError,
)

__all__ = [
    "SearchStoreContract",
    "race",
    "search_in",
    "commit_next",
    "make_evaluations",
    "make_generation",
    "make_individuals",
]

CONFIG: dict[str, Any] = {
    "population": 8,
    "generations": 3,
    "objectives": ["miou", "latency_ms"],
    "nested": {"seed": 0, "ratio": 0.1, "flag": True, "none": None, "name": "résumé ✓"},
}


def make_individuals(index: int, n: int = 4, *, prefix: str = "arch") -> list[IndividualRecord]:
    """``n`` distinct, deterministic individuals of generation ``index``."""
    return [
        IndividualRecord(
            generation=index,
            arch_hash=f"{prefix}-g{index}-{i}",
            arch={"cells": [{"op": "conv3x3", "width": 1.0 - 0.25 * (i % 3)}], "branches": 1 + i % 3},
            num_branches=1 + i % 3,
            objectives={"miou": 0.3 + 0.01 * i + 0.001 * index, "latency_ms": 10.0 + i / 3},
            status="failed" if i == n - 1 and n > 2 else "evaluated",
        )
        for i in range(n)
    ]


def make_evaluations(individuals: list[IndividualRecord], cache_key: str = "ck-1") -> list[EvaluationRecord]:
    """One cache entry per individual, with its objectives as the result."""
    return [
        EvaluationRecord(cache_key=cache_key, arch_hash=i.arch_hash, result={"objectives": dict(i.objectives)})
        for i in individuals
    ]


def make_generation(
    index: int, individuals: list[IndividualRecord] | None = None, *, algorithm_state: bytes | None = None
) -> GenerationRecord:
    """A generation record whose front is the first two individuals."""
    inds = make_individuals(index) if individuals is None else individuals
    return GenerationRecord(
        index=index,
        hypervolume=0.5 + index / 7,
        front=[i.arch_hash for i in inds[:2]],
        n_evaluated=len(inds) * (index + 1),
        n_new=len(inds),
        algorithm_state=f"state-of-generation-{index}".encode() if algorithm_state is None else algorithm_state,
        timings={"eval_s": 1.25 * (index + 1), "loop_s": 0.5},
    )


def commit_next(
    storage: SearchStore, search_id: int, *, n: int = 4, cache_key: str = "ck-1", prefix: str = "arch"
) -> tuple[GenerationRecord, list[IndividualRecord]]:
    """Commit the search's next generation (``n`` individuals, all cached under ``cache_key``)."""
    index = storage.get_search(search_id).generation + 1
    inds = make_individuals(index, n, prefix=prefix)
    gen = make_generation(index, inds)
    storage.commit_generation(search_id, gen, inds, make_evaluations(inds, cache_key))
    return gen, inds


def search_in(storage: SearchStore, state: SearchState, name: str) -> int:
    """A new search brought to ``state`` through allowed transitions."""
    sid = storage.create_search(name, CONFIG)
    path = {
        SearchState.CREATED: [],
        SearchState.RUNNING: [SearchState.RUNNING],
        SearchState.SUCCEEDED: [SearchState.RUNNING, SearchState.SUCCEEDED],
        SearchState.FAILED: [SearchState.RUNNING, SearchState.FAILED],
        SearchState.CANCELLED: [SearchState.CANCELLED],
    }[state]
    for step in path:
        storage.set_search_state(sid, step)
    assert storage.get_search(sid).state is state
    return sid


def race(n: int, action: Callable[[int], object]) -> tuple[list[object], list[BaseException]]:
    """Run ``action(i)`` in ``n`` threads released together; (results, exceptions)."""
    barrier = threading.Barrier(n)
    results: list[object] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        barrier.wait()
        try:
            value = action(i)
        except BaseException as exc:  # collected and asserted on by the caller
            with lock:
                errors.append(exc)
        else:
            with lock:
                results.append(value)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results, errors


class SearchStoreContract:
    """Contract tests for a :class:`~hyctas_core.storage.SearchStore`.

    Subclasses override the ``storage`` fixture with one yielding a fresh, empty store.
    """

    @pytest.fixture
    def storage(self) -> Iterator[SearchStore]:
        """A fresh, empty storage (subclasses must override this fixture)."""
        raise NotImplementedError(f"{type(self).__name__} must define a `storage` fixture")

    # -- searches: create / get / find ------------------------------------------------------
    def test_create_search_starts_created_without_generation(self, storage: SearchStore) -> None:
        """A new search is CREATED, at generation -1, without reference point or error."""
        sid = storage.create_search("s1", CONFIG, owner="alice")
        rec = storage.get_search(sid)
        assert (rec.id, rec.name, rec.owner) == (sid, "s1", "alice")
        assert rec.state is SearchState.CREATED
        assert rec.generation == -1
        assert rec.reference_point is None and rec.error is None
        assert storage.latest_generation(sid) is None
        assert storage.pareto_front(sid) == []

    def test_search_ids_are_distinct(self, storage: SearchStore) -> None:
        """Every create returns a new id that resolves to its own search."""
        ids = [storage.create_search(f"s{i}", {"i": i}) for i in range(5)]
        assert len(set(ids)) == 5
        assert [storage.get_search(i).config for i in ids] == [{"i": i} for i in range(5)]

    def test_config_round_trips_exactly(self, storage: SearchStore) -> None:
        """Nested config (unicode, floats, bools, None) comes back equal; tuples as lists."""
        config = {**CONFIG, "pair": (1, 2), "tiny": 1e-300, "third": 1 / 3}
        sid = storage.create_search("cfg", config)
        assert storage.get_search(sid).config == {**CONFIG, "pair": [1, 2], "tiny": 1e-300, "third": 1 / 3}

    def test_timestamps_are_utc_aware(self, storage: SearchStore) -> None:
        """created_at / updated_at carry UTC tzinfo and updated_at moves on change."""
        sid = storage.create_search("t", CONFIG)
        rec = storage.get_search(sid)
        assert rec.created_at.utcoffset() == timedelta(0)
        assert rec.updated_at.utcoffset() == timedelta(0)
        assert rec.created_at <= rec.updated_at
        storage.set_search_state(sid, SearchState.RUNNING)
        assert storage.get_search(sid).updated_at >= rec.updated_at

    def test_find_search_by_name_and_owner(self, storage: SearchStore) -> None:
        """find_search matches name and owner exactly (owner None is its own owner)."""
        a = storage.create_search("same", CONFIG, owner="alice")
        n = storage.create_search("same", CONFIG)
        found_a = storage.find_search("same", owner="alice")
        found_n = storage.find_search("same")
        assert found_a is not None and found_a.id == a
        assert found_n is not None and found_n.id == n
        assert storage.find_search("same", owner="bob") is None
        assert storage.find_search("other", owner="alice") is None

    def test_different_owners_may_reuse_a_name(self, storage: SearchStore) -> None:
        """A name taken by one owner is free for another owner and for no owner."""
        ids = {storage.create_search("shared", CONFIG, owner=o) for o in ("alice", "bob", None)}
        assert len(ids) == 3

    # -- searches: state machine ----------------------------------------------------------
    def test_search_transitions_follow_the_state_machine(self, storage: SearchStore) -> None:
        """Every (from, to) pair is allowed or refused exactly as SEARCH_TRANSITIONS says."""
        for source in SearchState:
            for target in SearchState:
                sid = search_in(storage, source, f"{source.value}->{target.value}")
                if target in SEARCH_TRANSITIONS[source]:
                    storage.set_search_state(sid, target)
                    assert storage.get_search(sid).state is target
                else:
                    with pytest.raises(IllegalTransition):
                        storage.set_search_state(sid, target)
                    assert storage.get_search(sid).state is source

    def test_set_search_state_records_and_clears_error(self, storage: SearchStore) -> None:
        """FAILED stores the error; resuming (FAILED -> RUNNING) without one clears it."""
        sid = search_in(storage, SearchState.RUNNING, "err")
        storage.set_search_state(sid, SearchState.FAILED, error="CUDA out of memory")
        rec = storage.get_search(sid)
        assert (rec.state, rec.error) == (SearchState.FAILED, "CUDA out of memory")
        storage.set_search_state(sid, SearchState.RUNNING)
        rec = storage.get_search(sid)
        assert (rec.state, rec.error) == (SearchState.RUNNING, None)

    def test_reference_point_is_set_once(self, storage: SearchStore) -> None:
        """The reference point is stored exactly and a second set raises IllegalTransition."""
        sid = storage.create_search("ref", CONFIG)
        storage.set_reference_point(sid, [1.0, 0.1 + 0.2, 123.456])
        with pytest.raises(IllegalTransition):
            storage.set_reference_point(sid, [9.0, 9.0, 9.0])
        assert storage.get_search(sid).reference_point == [1.0, 0.1 + 0.2, 123.456]

    def test_verification_is_stored_replaced_and_copied(self, storage: SearchStore) -> None:
        """A search starts without a verification; each set replaces it whole; records are copies."""
        sid = search_in(storage, SearchState.SUCCEEDED, "verified")
        assert storage.get_search(sid).verification is None
        first = {"state": "queued", "k": 3, "done": 0, "rows": [], "job_id": 7}
        storage.set_search_verification(sid, first)
        first["state"] = "mutated"  # the caller's dict is not the stored one
        assert storage.get_search(sid).verification == {"state": "queued", "k": 3, "done": 0, "rows": [], "job_id": 7}
        rows = [{"arch_hash": "a", "supernet_miou": 0.25, "retrained_miou": 0.5, "cost": (1.5, 2)}]
        storage.set_search_verification(sid, {"state": "succeeded", "k": 1, "rows": rows, "kendall_tau": None})
        got = storage.get_search(sid)
        assert got.verification == {
            "state": "succeeded",
            "k": 1,
            "rows": [{"arch_hash": "a", "supernet_miou": 0.25, "retrained_miou": 0.5, "cost": [1.5, 2]}],
            "kendall_tau": None,
        }
        assert got.state is SearchState.SUCCEEDED  # the search itself is untouched
        assert got.verification is not None
        got.verification["k"] = 99
        assert storage.get_search(sid).verification["k"] == 1  # type: ignore[index]
        with pytest.raises(StorageError):
            storage.set_search_verification(sid, {"kendall_tau": float("nan")})
        assert storage.get_search(sid).verification["state"] == "succeeded"  # type: ignore[index]
        with pytest.raises(KeyError):
            storage.set_search_verification(10**6, {"state": "queued"})

    # -- generations ----------------------------------------------------------------------
    def test_commit_generation_round_trips_every_field(self, storage: SearchStore) -> None:
        """A committed generation, its individuals and evaluations come back equal."""
        sid = storage.create_search("gen", CONFIG)
        storage.set_search_state(sid, SearchState.RUNNING)
        inds = make_individuals(0, 5)
        gen = make_generation(0, inds)
        storage.commit_generation(sid, gen, inds, make_evaluations(inds))
        assert storage.get_search(sid).generation == 0
        got = storage.get_generation(sid, 0)
        assert got.created_at is not None and got.created_at.utcoffset() == timedelta(0)
        got.created_at = None
        assert got == gen
        assert storage.list_individuals(sid, generation=0) == inds
        assert storage.get_evaluations("ck-1", [i.arch_hash for i in inds]) == {
            i.arch_hash: {"objectives": i.objectives} for i in inds
        }

    def test_commit_to_a_created_search_is_allowed(self, storage: SearchStore) -> None:
        """Only finished searches refuse commits: a CREATED search accepts generation 0."""
        sid = storage.create_search("created", CONFIG)
        commit_next(storage, sid)
        assert storage.get_search(sid).generation == 0

    @pytest.mark.parametrize("final", [SearchState.SUCCEEDED, SearchState.CANCELLED, SearchState.FAILED])
    def test_commit_to_a_finished_search_is_refused(self, storage: SearchStore, final: SearchState) -> None:
        """SUCCEEDED, CANCELLED and FAILED searches refuse new generations."""
        sid = search_in(storage, SearchState.RUNNING, "fin")
        commit_next(storage, sid)
        storage.set_search_state(sid, final)
        with pytest.raises(IllegalTransition):
            storage.commit_generation(sid, make_generation(1), make_individuals(1), [])
        assert storage.get_search(sid).generation == 0
        with pytest.raises(KeyError):
            storage.get_generation(sid, 1)

    def test_resume_after_failure_continues_the_sequence(self, storage: SearchStore) -> None:
        """FAILED -> RUNNING, then the next generation index is accepted."""
        sid = search_in(storage, SearchState.RUNNING, "resume")
        commit_next(storage, sid)
        storage.set_search_state(sid, SearchState.FAILED, error="killed")
        storage.set_search_state(sid, SearchState.RUNNING)
        latest = storage.latest_generation(sid)
        assert latest is not None and latest.algorithm_state == b"state-of-generation-0"
        commit_next(storage, sid)
        assert storage.get_search(sid).generation == 1

    def test_commit_is_atomic_when_an_individual_fails(self, storage: SearchStore) -> None:
        """A bad individual (NaN objective) rolls back generation row, individuals, cache, counter."""
        sid = search_in(storage, SearchState.RUNNING, "atomic-ind")
        commit_next(storage, sid)
        inds = make_individuals(1, 6)
        inds[-1].objectives["miou"] = float("nan")
        with pytest.raises(StorageError):
            storage.commit_generation(sid, make_generation(1, inds), inds, make_evaluations(inds, "ck-atomic"))
        self._assert_only_generation_zero(storage, sid, inds)
        good = make_individuals(1, 6)
        storage.commit_generation(sid, make_generation(1, good), good, make_evaluations(good, "ck-atomic"))
        assert storage.get_search(sid).generation == 1
        assert storage.list_individuals(sid, generation=1) == good

    def test_commit_is_atomic_when_an_evaluation_fails(self, storage: SearchStore) -> None:
        """A bad evaluation (written last) still rolls back everything written before it."""
        sid = search_in(storage, SearchState.RUNNING, "atomic-eval")
        commit_next(storage, sid)
        inds = make_individuals(1, 6)
        evals = make_evaluations(inds, "ck-atomic")
        evals[-1].result["raw"] = object()
        with pytest.raises(StorageError):
            storage.commit_generation(sid, make_generation(1, inds), inds, evals)
        self._assert_only_generation_zero(storage, sid, inds)

    def test_commit_is_atomic_when_generation_payload_fails(self, storage: SearchStore) -> None:
        """A generation whose timings JSON cannot hold stores nothing."""
        sid = search_in(storage, SearchState.RUNNING, "atomic-gen")
        commit_next(storage, sid)
        inds = make_individuals(1, 6)
        gen = make_generation(1, inds)
        gen.timings["eval_s"] = float("inf")
        with pytest.raises(StorageError):
            storage.commit_generation(sid, gen, inds, make_evaluations(inds, "ck-atomic"))
        self._assert_only_generation_zero(storage, sid, inds)

    def test_individuals_must_belong_to_the_generation(self, storage: SearchStore) -> None:
        """An individual labelled with another generation is a ValueError; nothing is stored."""
        sid = storage.create_search("label", CONFIG)
        inds = make_individuals(0) + make_individuals(1, 1)
        with pytest.raises(ValueError):
            storage.commit_generation(sid, make_generation(0, inds), inds, [])
        assert storage.get_search(sid).generation == -1
        assert storage.list_individuals(sid) == []

    def test_empty_generation_is_allowed(self, storage: SearchStore) -> None:
        """A generation without individuals, evaluations, front or timings round-trips."""
        sid = storage.create_search("empty", CONFIG)
        gen = GenerationRecord(index=0, hypervolume=0.0, front=[], n_evaluated=0, n_new=0, algorithm_state=b"")
        storage.commit_generation(sid, gen, [], [])
        got = storage.get_generation(sid, 0)
        assert (got.front, got.timings, got.algorithm_state, got.n_new) == ([], {}, b"", 0)
        assert storage.pareto_front(sid) == []

    def test_get_generation_unknown_index_raises_key_error(self, storage: SearchStore) -> None:
        """An index never committed (or negative) raises KeyError."""
        sid = storage.create_search("g", CONFIG)
        commit_next(storage, sid)
        for index in (1, -1, 100):
            with pytest.raises(KeyError):
                storage.get_generation(sid, index)

    def test_list_individuals_by_generation_and_in_order(self, storage: SearchStore) -> None:
        """Per generation in insertion order; all ordered by generation then insertion."""
        sid = storage.create_search("inds", CONFIG)
        other = storage.create_search("inds-other", CONFIG)
        per_gen = [commit_next(storage, sid, n=3 + g)[1] for g in range(3)]
        commit_next(storage, other, prefix="o")
        for g, inds in enumerate(per_gen):
            assert storage.list_individuals(sid, generation=g) == inds
        assert storage.list_individuals(sid) == [i for inds in per_gen for i in inds]
        assert storage.list_individuals(sid, generation=7) == []
        assert [i.arch_hash for i in storage.list_individuals(other)] == [f"o-g0-{i}" for i in range(4)]

    def test_insertion_order_is_kept_not_sorted(self, storage: SearchStore) -> None:
        """Individuals come back in the order given, not sorted by hash."""
        sid = storage.create_search("order", CONFIG)
        inds = list(reversed(make_individuals(0, 5)))
        storage.commit_generation(sid, make_generation(0, inds), inds, [])
        assert [i.arch_hash for i in storage.list_individuals(sid)] == [i.arch_hash for i in inds]

    def test_latest_generation_and_pareto_front(self, storage: SearchStore) -> None:
        """latest_generation is the last commit (with state); pareto_front its front individuals."""
        sid = storage.create_search("front", CONFIG)
        commit_next(storage, sid)
        gen, inds = commit_next(storage, sid, n=5)
        latest = storage.latest_generation(sid)
        assert latest is not None
        assert latest.index == 1
        assert latest.algorithm_state == gen.algorithm_state
        assert storage.pareto_front(sid) == [i for i in inds if i.arch_hash in gen.front]
        assert [i.arch_hash for i in storage.pareto_front(sid)] == ["arch-g1-0", "arch-g1-1"]

    def test_concurrent_commits_of_one_index_have_one_winner(self, storage: SearchStore) -> None:
        """Threads racing to commit the same index: exactly one wins, the others get IllegalTransition."""
        sid = storage.create_search("race", CONFIG)
        for index in range(3):

            def attempt(i: int, index: int = index) -> int:
                inds = make_individuals(index, 3, prefix=f"w{i}")
                storage.commit_generation(sid, make_generation(index, inds), inds, make_evaluations(inds))
                return i

            winners, errors = race(3, attempt)
            assert len(winners) == 1, errors
            assert len(errors) == 2 and all(isinstance(e, IllegalTransition) for e in errors), errors
            assert storage.get_search(sid).generation == index
            hashes = [i.arch_hash for i in storage.list_individuals(sid, generation=index)]
            assert hashes == [f"w{winners[0]}-g{index}-{k}" for k in range(3)]

    # -- evaluation cache -----------------------------------------------------------------
    def test_evaluation_cache_hits_and_misses(self, storage: SearchStore) -> None:
        """get_evaluations returns exactly the cached hashes; others are absent."""
        sid = storage.create_search("cache", CONFIG)
        _, inds = commit_next(storage, sid, n=3)
        hits = storage.get_evaluations("ck-1", [inds[0].arch_hash, "never-seen", inds[2].arch_hash])
        assert hits == {
            inds[0].arch_hash: {"objectives": inds[0].objectives},
            inds[2].arch_hash: {"objectives": inds[2].objectives},
        }
        assert storage.get_evaluations("ck-1", []) == {}
        assert storage.get_evaluations("ck-1", ["never-seen"]) == {}
        assert storage.get_evaluations("other-key", [i.arch_hash for i in inds]) == {}

    def test_evaluations_are_shared_across_searches_with_the_cache_key(self, storage: SearchStore) -> None:
        """Search B sees A's evaluations under the same cache key; re-caching a key keeps the first result."""
        a = storage.create_search("A", CONFIG)
        b = storage.create_search("B", CONFIG)
        _, inds = commit_next(storage, a, n=2, cache_key="shared")
        first = {i.arch_hash: {"objectives": i.objectives} for i in inds}
        assert storage.get_evaluations("shared", list(first)) == first
        again = make_individuals(0, 2)  # the same archs, evaluated again by search B
        rerun = [EvaluationRecord("shared", i.arch_hash, {"objectives": {"miou": 0.0}}) for i in again]
        rerun.append(EvaluationRecord("shared", "new-arch", {"objectives": {"miou": 0.9}}))
        rerun.append(EvaluationRecord("shared", "new-arch", {"objectives": {"miou": 0.1}}))  # duplicate in one call
        storage.commit_generation(b, make_generation(0, again), again, rerun)
        assert storage.get_evaluations("shared", [*first, "new-arch"]) == {
            **first,
            "new-arch": {"objectives": {"miou": 0.9}},
        }
        assert storage.get_search(b).generation == 0

    def test_many_evaluations_in_one_lookup(self, storage: SearchStore) -> None:
        """Looking up more hashes than fit one SQL parameter list still finds all of them."""
        sid = storage.create_search("bulk", CONFIG)
        inds = make_individuals(0, 1200)
        storage.commit_generation(sid, make_generation(0, inds), inds, make_evaluations(inds, "bulk"))
        hashes = [i.arch_hash for i in inds]
        found = storage.get_evaluations("bulk", [*hashes, "missing", hashes[0]])
        assert set(found) == set(hashes)
        assert found[hashes[1199]] == {"objectives": inds[1199].objectives}

    def test_evaluation_results_are_copies(self, storage: SearchStore) -> None:
        """Mutating a returned or committed result changes nothing cached."""
        sid = storage.create_search("ecopy", CONFIG)
        inds = make_individuals(0, 1)
        evals = make_evaluations(inds)
        storage.commit_generation(sid, make_generation(0, inds), inds, evals)
        evals[0].result["objectives"]["miou"] = -1.0
        got = storage.get_evaluations("ck-1", [inds[0].arch_hash])
        got[inds[0].arch_hash]["objectives"].clear()
        assert storage.get_evaluations("ck-1", [inds[0].arch_hash]) == {
            inds[0].arch_hash: {"objectives": make_individuals(0, 1)[0].objectives}
        }

    @staticmethod
    def _assert_only_generation_zero(storage: SearchStore, sid: int, failed: list[IndividualRecord]) -> None:
        assert storage.get_search(sid).generation == 0
        with pytest.raises(KeyError):
            storage.get_generation(sid, 1)
        assert storage.list_individuals(sid, generation=1) == []
        assert {i.generation for i in storage.list_individuals(sid)} == {0}
        assert storage.get_evaluations("ck-atomic", [i.arch_hash for i in failed]) == {}
        latest = storage.latest_generation(sid)
        assert latest is not None and latest.index == 0
