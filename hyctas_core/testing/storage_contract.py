"""The contract every :class:`~hyctas_core.storage.SearchStorage` implementation must pass.

Usage (pytest collects the inherited ``test_*`` methods)::

    class TestMyStorage(StorageContract):
        @pytest.fixture
        def storage(self) -> Iterator[SearchStorage]:
            yield MyStorage(...)   # fresh and empty for every test

The checks cover every method and every guarantee of :mod:`hyctas_core.storage`: search
bookkeeping and its state machine, atomic in-order generation commits, copies in and out,
the evaluation cache, the job lifecycle, unknown ids, and concurrent writers.

Where the interface leaves room, this suite fixes the project's choice (both in-tree
backends follow it): ``list_searches(owner=None)`` lists every owner; ``set_search_state``
replaces the stored error with its ``error`` argument; JSON payloads follow JSON semantics
(tuples come back as lists) and values strict JSON cannot hold (objects, NaN) raise
:class:`~hyctas_core.storage.StorageError`; an evaluation-cache key keeps its first result;
``finish_job`` only accepts a finished state; a requeued job loses its worker.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest

from hyctas_core.storage import (
    SEARCH_TRANSITIONS,
    DuplicateName,
    EvaluationRecord,
    GenerationRecord,
    IllegalTransition,
    IndividualRecord,
    JobRecord,
    JobState,
    SearchState,
    SearchStorage,
    StorageError,
)

__all__ = ["StorageContract", "commit_next", "make_evaluations", "make_generation", "make_individuals"]

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
    storage: SearchStorage, search_id: int, *, n: int = 4, cache_key: str = "ck-1", prefix: str = "arch"
) -> tuple[GenerationRecord, list[IndividualRecord]]:
    """Commit the search's next generation (``n`` individuals, all cached under ``cache_key``)."""
    index = storage.get_search(search_id).generation + 1
    inds = make_individuals(index, n, prefix=prefix)
    gen = make_generation(index, inds)
    storage.commit_generation(search_id, gen, inds, make_evaluations(inds, cache_key))
    return gen, inds


def _search_in(storage: SearchStorage, state: SearchState, name: str) -> int:
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


def _race(n: int, action: Callable[[int], object]) -> tuple[list[object], list[BaseException]]:
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


class StorageContract:
    """Contract tests for a :class:`~hyctas_core.storage.SearchStorage`.

    Subclasses override the ``storage`` fixture with one yielding a fresh, empty storage.
    """

    @pytest.fixture
    def storage(self) -> Iterator[SearchStorage]:
        """A fresh, empty storage (subclasses must override this fixture)."""
        raise NotImplementedError(f"{type(self).__name__} must define a `storage` fixture")

    # -- searches: create / get / find ------------------------------------------------------
    def test_create_search_starts_created_without_generation(self, storage: SearchStorage) -> None:
        """A new search is CREATED, at generation -1, without reference point or error."""
        sid = storage.create_search("s1", CONFIG, owner="alice")
        rec = storage.get_search(sid)
        assert (rec.id, rec.name, rec.owner) == (sid, "s1", "alice")
        assert rec.state is SearchState.CREATED
        assert rec.generation == -1
        assert rec.reference_point is None and rec.error is None
        assert storage.latest_generation(sid) is None
        assert storage.pareto_front(sid) == []

    def test_search_ids_are_distinct(self, storage: SearchStorage) -> None:
        """Every create returns a new id that resolves to its own search."""
        ids = [storage.create_search(f"s{i}", {"i": i}) for i in range(5)]
        assert len(set(ids)) == 5
        assert [storage.get_search(i).config for i in ids] == [{"i": i} for i in range(5)]

    def test_config_round_trips_exactly(self, storage: SearchStorage) -> None:
        """Nested config (unicode, floats, bools, None) comes back equal; tuples as lists."""
        config = {**CONFIG, "pair": (1, 2), "tiny": 1e-300, "third": 1 / 3}
        sid = storage.create_search("cfg", config)
        assert storage.get_search(sid).config == {**CONFIG, "pair": [1, 2], "tiny": 1e-300, "third": 1 / 3}

    def test_timestamps_are_utc_aware(self, storage: SearchStorage) -> None:
        """created_at / updated_at carry UTC tzinfo and updated_at moves on change."""
        sid = storage.create_search("t", CONFIG)
        rec = storage.get_search(sid)
        assert rec.created_at.utcoffset() == timedelta(0)
        assert rec.updated_at.utcoffset() == timedelta(0)
        assert rec.created_at <= rec.updated_at
        storage.set_search_state(sid, SearchState.RUNNING)
        assert storage.get_search(sid).updated_at >= rec.updated_at

    def test_find_search_by_name_and_owner(self, storage: SearchStorage) -> None:
        """find_search matches name and owner exactly (owner None is its own owner)."""
        a = storage.create_search("same", CONFIG, owner="alice")
        n = storage.create_search("same", CONFIG)
        found_a = storage.find_search("same", owner="alice")
        found_n = storage.find_search("same")
        assert found_a is not None and found_a.id == a
        assert found_n is not None and found_n.id == n
        assert storage.find_search("same", owner="bob") is None
        assert storage.find_search("other", owner="alice") is None

    def test_duplicate_name_for_same_owner_is_refused(self, storage: SearchStorage) -> None:
        """The same (owner, name) twice raises DuplicateName, also for owner None."""
        storage.create_search("dup", CONFIG, owner="alice")
        storage.create_search("dup", CONFIG)
        with pytest.raises(DuplicateName):
            storage.create_search("dup", {"other": 1}, owner="alice")
        with pytest.raises(DuplicateName):
            storage.create_search("dup", {"other": 1})
        assert storage.list_searches()[1] == 2
        assert issubclass(DuplicateName, StorageError)

    def test_different_owners_may_reuse_a_name(self, storage: SearchStorage) -> None:
        """A name taken by one owner is free for another owner and for no owner."""
        ids = {storage.create_search("shared", CONFIG, owner=o) for o in ("alice", "bob", None)}
        assert len(ids) == 3

    def test_create_search_with_non_json_config_stores_nothing(self, storage: SearchStorage) -> None:
        """A config JSON cannot hold raises StorageError and leaves no search behind."""
        with pytest.raises(StorageError):
            storage.create_search("bad", {"x": object()})
        with pytest.raises(StorageError):
            storage.create_search("nan", {"x": float("nan")})
        assert storage.list_searches() == ([], 0)
        assert storage.find_search("bad") is None

    def test_unknown_search_ids_raise_key_error(self, storage: SearchStorage) -> None:
        """Every per-search method raises KeyError for an id that does not exist."""
        missing = 987_654
        calls: list[Callable[[], object]] = [
            lambda: storage.get_search(missing),
            lambda: storage.set_search_state(missing, SearchState.RUNNING),
            lambda: storage.set_reference_point(missing, [1.0, 2.0]),
            lambda: storage.commit_generation(missing, make_generation(0), make_individuals(0), []),
            lambda: storage.get_generation(missing, 0),
            lambda: storage.list_generations(missing),
            lambda: storage.list_individuals(missing),
            lambda: storage.latest_generation(missing),
            lambda: storage.pareto_front(missing),
        ]
        for call in calls:
            with pytest.raises(KeyError):
                call()

    # -- searches: list -------------------------------------------------------------------
    def test_list_searches_paginates_in_id_order(self, storage: SearchStorage) -> None:
        """Pages follow id order; the total counts all matches whatever the page."""
        ids = [storage.create_search(f"p{i}", CONFIG, owner="alice" if i % 2 else "bob") for i in range(7)]
        page, total = storage.list_searches(offset=2, limit=3)
        assert total == 7
        assert [r.id for r in page] == ids[2:5]
        assert [r.id for r in storage.list_searches(limit=100)[0]] == ids
        assert storage.list_searches(offset=7) == ([], 7)
        assert storage.list_searches(limit=0) == ([], 7)
        tail, _ = storage.list_searches(offset=5, limit=10)
        assert [r.id for r in tail] == ids[5:]

    def test_list_searches_filters_by_owner_and_state(self, storage: SearchStorage) -> None:
        """owner and state filter (alone and together); owner=None means every owner."""
        a1 = storage.create_search("a1", CONFIG, owner="alice")
        a2 = storage.create_search("a2", CONFIG, owner="alice")
        b1 = storage.create_search("b1", CONFIG, owner="bob")
        n1 = storage.create_search("n1", CONFIG)
        storage.set_search_state(a2, SearchState.RUNNING)
        storage.set_search_state(n1, SearchState.RUNNING)

        def ids(**kw: Any) -> tuple[list[int], int]:
            page, total = storage.list_searches(**kw)
            return [r.id for r in page], total

        assert ids(owner="alice") == ([a1, a2], 2)
        assert ids(owner="bob") == ([b1], 1)
        assert ids(owner="carol") == ([], 0)
        assert ids() == ([a1, a2, b1, n1], 4)
        assert ids(state=SearchState.RUNNING) == ([a2, n1], 2)
        assert ids(state=SearchState.CREATED) == ([a1, b1], 2)
        assert ids(owner="alice", state=SearchState.RUNNING) == ([a2], 1)
        assert ids(owner="alice", state=SearchState.RUNNING, offset=1) == ([], 1)
        assert ids(state=SearchState.SUCCEEDED) == ([], 0)

    def test_list_rejects_negative_paging(self, storage: SearchStorage) -> None:
        """Negative offset or limit is a ValueError for searches and jobs."""
        with pytest.raises(ValueError):
            storage.list_searches(offset=-1)
        with pytest.raises(ValueError):
            storage.list_searches(limit=-1)
        with pytest.raises(ValueError):
            storage.list_jobs(offset=-1)
        with pytest.raises(ValueError):
            storage.list_jobs(limit=-5)

    # -- searches: state machine ----------------------------------------------------------
    def test_search_transitions_follow_the_state_machine(self, storage: SearchStorage) -> None:
        """Every (from, to) pair is allowed or refused exactly as SEARCH_TRANSITIONS says."""
        for source in SearchState:
            for target in SearchState:
                sid = _search_in(storage, source, f"{source.value}->{target.value}")
                if target in SEARCH_TRANSITIONS[source]:
                    storage.set_search_state(sid, target)
                    assert storage.get_search(sid).state is target
                else:
                    with pytest.raises(IllegalTransition):
                        storage.set_search_state(sid, target)
                    assert storage.get_search(sid).state is source

    def test_set_search_state_records_and_clears_error(self, storage: SearchStorage) -> None:
        """FAILED stores the error; resuming (FAILED -> RUNNING) without one clears it."""
        sid = _search_in(storage, SearchState.RUNNING, "err")
        storage.set_search_state(sid, SearchState.FAILED, error="CUDA out of memory")
        rec = storage.get_search(sid)
        assert (rec.state, rec.error) == (SearchState.FAILED, "CUDA out of memory")
        storage.set_search_state(sid, SearchState.RUNNING)
        rec = storage.get_search(sid)
        assert (rec.state, rec.error) == (SearchState.RUNNING, None)

    def test_reference_point_is_set_once(self, storage: SearchStorage) -> None:
        """The reference point is stored exactly and a second set raises IllegalTransition."""
        sid = storage.create_search("ref", CONFIG)
        storage.set_reference_point(sid, [1.0, 0.1 + 0.2, 123.456])
        with pytest.raises(IllegalTransition):
            storage.set_reference_point(sid, [9.0, 9.0, 9.0])
        assert storage.get_search(sid).reference_point == [1.0, 0.1 + 0.2, 123.456]

    def test_verification_is_stored_replaced_and_copied(self, storage: SearchStorage) -> None:
        """A search starts without a verification; each set replaces it whole; records are copies."""
        sid = _search_in(storage, SearchState.SUCCEEDED, "verified")
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

    def test_search_records_are_copies(self, storage: SearchStorage) -> None:
        """Mutating the config passed in, or a returned record, changes nothing stored."""
        config: dict[str, Any] = {"layers": [1, 2], "opt": {"lr": 0.1}}
        sid = storage.create_search("copy", config)
        storage.set_reference_point(sid, [1.0, 2.0])
        config["layers"].append(3)
        config["opt"]["lr"] = 99.0
        rec = storage.get_search(sid)
        rec.config["layers"].append(4)
        rec.config["new"] = True
        assert rec.reference_point is not None
        rec.reference_point.append(5.0)
        rec.generation = 42
        listed = storage.list_searches()[0][0]
        listed.config["opt"]["lr"] = -1.0
        found = storage.find_search("copy")
        assert found is not None
        found.config.clear()
        again = storage.get_search(sid)
        assert again.config == {"layers": [1, 2], "opt": {"lr": 0.1}}
        assert again.reference_point == [1.0, 2.0]
        assert again.generation == -1

    # -- generations ----------------------------------------------------------------------
    def test_commit_generation_round_trips_every_field(self, storage: SearchStorage) -> None:
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

    def test_commit_to_a_created_search_is_allowed(self, storage: SearchStorage) -> None:
        """Only finished searches refuse commits: a CREATED search accepts generation 0."""
        sid = storage.create_search("created", CONFIG)
        commit_next(storage, sid)
        assert storage.get_search(sid).generation == 0

    def test_generations_commit_in_order_only(self, storage: SearchStorage) -> None:
        """A gap, a repeat or a negative index raises IllegalTransition and changes nothing."""
        sid = _search_in(storage, SearchState.RUNNING, "order")
        for bad in (1, -1):
            with pytest.raises(IllegalTransition):
                storage.commit_generation(sid, make_generation(bad), make_individuals(bad), [])
        commit_next(storage, sid)
        commit_next(storage, sid)
        for bad in (0, 1, 3):
            with pytest.raises(IllegalTransition):
                storage.commit_generation(sid, make_generation(bad), make_individuals(bad, prefix="x"), [])
        assert storage.get_search(sid).generation == 1
        assert [g.index for g in storage.list_generations(sid)] == [0, 1]
        assert all(i.arch_hash.startswith("arch-") for i in storage.list_individuals(sid))
        commit_next(storage, sid)
        assert storage.get_search(sid).generation == 2

    @pytest.mark.parametrize("final", [SearchState.SUCCEEDED, SearchState.CANCELLED, SearchState.FAILED])
    def test_commit_to_a_finished_search_is_refused(self, storage: SearchStorage, final: SearchState) -> None:
        """SUCCEEDED, CANCELLED and FAILED searches refuse new generations."""
        sid = _search_in(storage, SearchState.RUNNING, "fin")
        commit_next(storage, sid)
        storage.set_search_state(sid, final)
        with pytest.raises(IllegalTransition):
            storage.commit_generation(sid, make_generation(1), make_individuals(1), [])
        assert storage.get_search(sid).generation == 0
        with pytest.raises(KeyError):
            storage.get_generation(sid, 1)

    def test_resume_after_failure_continues_the_sequence(self, storage: SearchStorage) -> None:
        """FAILED -> RUNNING, then the next generation index is accepted."""
        sid = _search_in(storage, SearchState.RUNNING, "resume")
        commit_next(storage, sid)
        storage.set_search_state(sid, SearchState.FAILED, error="killed")
        storage.set_search_state(sid, SearchState.RUNNING)
        latest = storage.latest_generation(sid)
        assert latest is not None and latest.algorithm_state == b"state-of-generation-0"
        commit_next(storage, sid)
        assert storage.get_search(sid).generation == 1

    def test_commit_is_atomic_when_an_individual_fails(self, storage: SearchStorage) -> None:
        """A bad individual (NaN objective) rolls back generation row, individuals, cache, counter."""
        sid = _search_in(storage, SearchState.RUNNING, "atomic-ind")
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

    def test_commit_is_atomic_when_an_evaluation_fails(self, storage: SearchStorage) -> None:
        """A bad evaluation (written last) still rolls back everything written before it."""
        sid = _search_in(storage, SearchState.RUNNING, "atomic-eval")
        commit_next(storage, sid)
        inds = make_individuals(1, 6)
        evals = make_evaluations(inds, "ck-atomic")
        evals[-1].result["raw"] = object()
        with pytest.raises(StorageError):
            storage.commit_generation(sid, make_generation(1, inds), inds, evals)
        self._assert_only_generation_zero(storage, sid, inds)

    def test_commit_is_atomic_when_generation_payload_fails(self, storage: SearchStorage) -> None:
        """A generation whose timings JSON cannot hold stores nothing."""
        sid = _search_in(storage, SearchState.RUNNING, "atomic-gen")
        commit_next(storage, sid)
        inds = make_individuals(1, 6)
        gen = make_generation(1, inds)
        gen.timings["eval_s"] = float("inf")
        with pytest.raises(StorageError):
            storage.commit_generation(sid, gen, inds, make_evaluations(inds, "ck-atomic"))
        self._assert_only_generation_zero(storage, sid, inds)

    @staticmethod
    def _assert_only_generation_zero(storage: SearchStorage, sid: int, failed: list[IndividualRecord]) -> None:
        assert storage.get_search(sid).generation == 0
        with pytest.raises(KeyError):
            storage.get_generation(sid, 1)
        assert [g.index for g in storage.list_generations(sid)] == [0]
        assert storage.list_individuals(sid, generation=1) == []
        assert {i.generation for i in storage.list_individuals(sid)} == {0}
        assert storage.get_evaluations("ck-atomic", [i.arch_hash for i in failed]) == {}
        latest = storage.latest_generation(sid)
        assert latest is not None and latest.index == 0

    def test_individuals_must_belong_to_the_generation(self, storage: SearchStorage) -> None:
        """An individual labelled with another generation is a ValueError; nothing is stored."""
        sid = storage.create_search("label", CONFIG)
        inds = make_individuals(0) + make_individuals(1, 1)
        with pytest.raises(ValueError):
            storage.commit_generation(sid, make_generation(0, inds), inds, [])
        assert storage.get_search(sid).generation == -1
        assert storage.list_individuals(sid) == []

    def test_large_algorithm_state_round_trips_exactly(self, storage: SearchStorage) -> None:
        """5 MB of arbitrary bytes (all 256 values) come back bit-for-bit."""
        blob = random.Random(1234).randbytes(5 * 1024 * 1024) + bytes(range(256))
        sid = storage.create_search("big", CONFIG)
        inds = make_individuals(0)
        storage.commit_generation(sid, make_generation(0, inds, algorithm_state=blob), inds, [])
        assert storage.get_generation(sid, 0).algorithm_state == blob
        latest = storage.latest_generation(sid)
        assert latest is not None and latest.algorithm_state == blob
        listed = storage.list_generations(sid)
        assert len(listed) == 1 and listed[0].algorithm_state in (b"", blob)

    def test_empty_generation_is_allowed(self, storage: SearchStorage) -> None:
        """A generation without individuals, evaluations, front or timings round-trips."""
        sid = storage.create_search("empty", CONFIG)
        gen = GenerationRecord(index=0, hypervolume=0.0, front=[], n_evaluated=0, n_new=0, algorithm_state=b"")
        storage.commit_generation(sid, gen, [], [])
        got = storage.get_generation(sid, 0)
        assert (got.front, got.timings, got.algorithm_state, got.n_new) == ([], {}, b"", 0)
        assert storage.pareto_front(sid) == []

    def test_list_generations_in_order(self, storage: SearchStorage) -> None:
        """list_generations returns 0..n in order with their metadata; other searches are apart."""
        sid = storage.create_search("many", CONFIG)
        other = storage.create_search("other", CONFIG)
        gens = [commit_next(storage, sid)[0] for _ in range(4)]
        commit_next(storage, other, prefix="other")
        listed = storage.list_generations(sid)
        assert [g.index for g in listed] == [0, 1, 2, 3]
        for got, want in zip(listed, gens, strict=True):
            assert (got.hypervolume, got.front, got.n_evaluated, got.n_new, got.timings) == (
                want.hypervolume,
                want.front,
                want.n_evaluated,
                want.n_new,
                want.timings,
            )
            assert got.algorithm_state in (b"", want.algorithm_state)
        assert [g.index for g in storage.list_generations(other)] == [0]
        assert storage.list_generations(storage.create_search("none", CONFIG)) == []

    def test_get_generation_unknown_index_raises_key_error(self, storage: SearchStorage) -> None:
        """An index never committed (or negative) raises KeyError."""
        sid = storage.create_search("g", CONFIG)
        commit_next(storage, sid)
        for index in (1, -1, 100):
            with pytest.raises(KeyError):
                storage.get_generation(sid, index)

    def test_list_individuals_by_generation_and_in_order(self, storage: SearchStorage) -> None:
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

    def test_insertion_order_is_kept_not_sorted(self, storage: SearchStorage) -> None:
        """Individuals come back in the order given, not sorted by hash."""
        sid = storage.create_search("order", CONFIG)
        inds = list(reversed(make_individuals(0, 5)))
        storage.commit_generation(sid, make_generation(0, inds), inds, [])
        assert [i.arch_hash for i in storage.list_individuals(sid)] == [i.arch_hash for i in inds]

    def test_latest_generation_and_pareto_front(self, storage: SearchStorage) -> None:
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

    def test_generation_records_are_copies(self, storage: SearchStorage) -> None:
        """Mutating committed inputs or returned generations / individuals changes nothing stored."""
        sid = storage.create_search("gcopy", CONFIG)
        inds = make_individuals(0)
        gen = make_generation(0, inds)
        storage.commit_generation(sid, gen, inds, make_evaluations(inds))
        expected_gen = make_generation(0, make_individuals(0))
        expected_inds = make_individuals(0)
        gen.front.append("mutated")
        gen.timings["x"] = 1.0
        inds[0].objectives["miou"] = -1.0
        inds[0].arch["cells"].clear()
        got = storage.get_generation(sid, 0)
        got.front.clear()
        got.timings.clear()
        listed = storage.list_individuals(sid)
        listed[0].objectives.clear()
        listed[1].arch.clear()
        storage.list_generations(sid)[0].front.append("y")
        again = storage.get_generation(sid, 0)
        again.created_at = None
        assert again == expected_gen
        assert storage.list_individuals(sid) == expected_inds

    def test_concurrent_commits_of_one_index_have_one_winner(self, storage: SearchStorage) -> None:
        """Threads racing to commit the same index: exactly one wins, the others get IllegalTransition."""
        sid = storage.create_search("race", CONFIG)
        for index in range(3):

            def attempt(i: int, index: int = index) -> int:
                inds = make_individuals(index, 3, prefix=f"w{i}")
                storage.commit_generation(sid, make_generation(index, inds), inds, make_evaluations(inds))
                return i

            winners, errors = _race(3, attempt)
            assert len(winners) == 1, errors
            assert len(errors) == 2 and all(isinstance(e, IllegalTransition) for e in errors), errors
            assert storage.get_search(sid).generation == index
            hashes = [i.arch_hash for i in storage.list_individuals(sid, generation=index)]
            assert hashes == [f"w{winners[0]}-g{index}-{k}" for k in range(3)]

    # -- evaluation cache -----------------------------------------------------------------
    def test_evaluation_cache_hits_and_misses(self, storage: SearchStorage) -> None:
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

    def test_evaluations_are_shared_across_searches_with_the_cache_key(self, storage: SearchStorage) -> None:
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

    def test_many_evaluations_in_one_lookup(self, storage: SearchStorage) -> None:
        """Looking up more hashes than fit one SQL parameter list still finds all of them."""
        sid = storage.create_search("bulk", CONFIG)
        inds = make_individuals(0, 1200)
        storage.commit_generation(sid, make_generation(0, inds), inds, make_evaluations(inds, "bulk"))
        hashes = [i.arch_hash for i in inds]
        found = storage.get_evaluations("bulk", [*hashes, "missing", hashes[0]])
        assert set(found) == set(hashes)
        assert found[hashes[1199]] == {"objectives": inds[1199].objectives}

    def test_evaluation_results_are_copies(self, storage: SearchStorage) -> None:
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

    # -- jobs -----------------------------------------------------------------------------
    def test_create_job_is_queued_with_zero_attempts(self, storage: SearchStorage) -> None:
        """A new job is QUEUED, 0 attempts, no worker / heartbeat / result / error; UTC timestamps."""
        jid = storage.create_job("search", {"search_id": 1, "gpus": [0, 1]}, owner="alice", stream="hyctas:jobs")
        job = storage.get_job(jid)
        assert job.stream == "hyctas:jobs" and storage.get_job(storage.create_job("search", {})).stream is None
        assert (job.id, job.kind, job.owner, job.state, job.attempts) == (jid, "search", "alice", JobState.QUEUED, 0)
        assert job.payload == {"search_id": 1, "gpus": [0, 1]}
        assert job.worker is None and job.heartbeat_at is None and job.result is None and job.error is None
        assert job.created_at.utcoffset() == timedelta(0) and job.created_at <= job.updated_at

    def test_job_lifecycle(self, storage: SearchStorage) -> None:
        """create -> start (attempts 1, worker, heartbeat) -> heartbeat -> finish with result."""
        jid = storage.create_job("train_supernet", {"epochs": 3})
        started = storage.start_job(jid, "worker-1")
        assert (started.state, started.attempts, started.worker) == (JobState.RUNNING, 1, "worker-1")
        assert started.heartbeat_at is not None and started.heartbeat_at.utcoffset() == timedelta(0)
        assert storage.get_job(jid) == started
        storage.heartbeat_job(jid, "worker-1")
        beat = storage.get_job(jid)
        assert beat.heartbeat_at is not None and beat.heartbeat_at >= started.heartbeat_at
        storage.finish_job(jid, JobState.SUCCEEDED, result={"checkpoint": "s3://x/ckpt.pt", "miou": 0.41})
        done = storage.get_job(jid)
        assert done.state is JobState.SUCCEEDED
        assert done.result == {"checkpoint": "s3://x/ckpt.pt", "miou": 0.41}
        assert (done.attempts, done.error) == (1, None)

    def test_failed_job_keeps_its_error(self, storage: SearchStorage) -> None:
        """finish_job(FAILED, error=...) stores the error and no result."""
        jid = storage.create_job("retrain", {})
        storage.start_job(jid, "w")
        storage.finish_job(jid, JobState.FAILED, error="diverged at epoch 3")
        job = storage.get_job(jid)
        assert (job.state, job.error, job.result) == (JobState.FAILED, "diverged at epoch 3", None)

    def test_failures_are_counted_apart_from_takeovers(self, storage: SearchStorage) -> None:
        """record_job_failure: failures += 1 on the owning worker, job stays RUNNING; a takeover adds none."""
        jid = storage.create_job("search", {})
        assert storage.get_job(jid).failures == 0
        storage.start_job(jid, "w1")
        failed = storage.record_job_failure(jid, "w1", progress={"last_error": "boom"})
        assert (failed.state, failed.attempts, failed.failures, failed.takeovers) == (JobState.RUNNING, 1, 1, 0)
        assert failed.progress == {"last_error": "boom"} and storage.get_job(jid) == failed
        with pytest.raises(IllegalTransition):
            storage.record_job_failure(jid, "someone-else")
        time.sleep(0.05)
        storage.start_job(jid, "w2", stale_after_s=0.01)  # the retry after the failure
        time.sleep(0.05)
        again = storage.start_job(jid, "w3", stale_after_s=0.01)  # w2 died: a takeover
        assert (again.attempts, again.failures, again.takeovers, again.progress) == (3, 1, 1, {"last_error": "boom"})
        storage.finish_job(jid, JobState.SUCCEEDED, result={})
        with pytest.raises(IllegalTransition):
            storage.record_job_failure(jid, "w3")
        with pytest.raises(KeyError):
            storage.record_job_failure(987_654, "w")

    def test_release_hands_a_job_back_at_once(self, storage: SearchStorage) -> None:
        """release_job: RUNNING on its worker -> QUEUED (no worker, no heartbeat); startable without a stale lease."""
        jid = storage.create_job("search", {})
        storage.start_job(jid, "w1")
        with pytest.raises(IllegalTransition):
            storage.release_job(jid, "w2")
        storage.release_job(jid, "w1")
        job = storage.get_job(jid)
        assert (job.state, job.worker, job.heartbeat_at, job.attempts) == (JobState.QUEUED, None, None, 1)
        with pytest.raises(IllegalTransition):
            storage.release_job(jid, "w1")
        again = storage.start_job(jid, "w2")  # at once: no stale_after_s needed
        assert (again.state, again.worker, again.attempts, again.takeovers) == (JobState.RUNNING, "w2", 2, 1)
        with pytest.raises(KeyError):
            storage.release_job(987_654, "w")

    def test_finished_jobs_are_immutable(self, storage: SearchStorage) -> None:
        """After SUCCEEDED / FAILED / CANCELLED no start, heartbeat or finish is accepted."""
        for final in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED):
            jid = storage.create_job("deploy", {"final": final.value})
            storage.start_job(jid, "w")
            storage.finish_job(jid, final, result={"ok": 1})
            before = storage.get_job(jid)
            with pytest.raises(IllegalTransition):
                storage.start_job(jid, "w")
            with pytest.raises(IllegalTransition):
                storage.heartbeat_job(jid, "w")
            for other in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED):
                with pytest.raises(IllegalTransition):
                    storage.finish_job(jid, other)
            assert storage.requeue_stale_jobs(0.0) == []
            assert storage.get_job(jid) == before

    def test_start_only_from_queued(self, storage: SearchStorage) -> None:
        """Starting a RUNNING job raises IllegalTransition and keeps worker and attempts."""
        jid = storage.create_job("search", {})
        storage.start_job(jid, "w1")
        with pytest.raises(IllegalTransition):
            storage.start_job(jid, "w2")
        job = storage.get_job(jid)
        assert (job.worker, job.attempts) == ("w1", 1)

    def test_concurrent_starts_have_one_winner(self, storage: SearchStorage) -> None:
        """Workers racing to start one job: one gets it, the others IllegalTransition."""
        jid = storage.create_job("search", {})
        winners, errors = _race(3, lambda i: storage.start_job(jid, f"w{i}"))
        assert len(winners) == 1, errors
        assert len(errors) == 2 and all(isinstance(e, IllegalTransition) for e in errors), errors
        winner = winners[0]
        assert isinstance(winner, JobRecord)
        job = storage.get_job(jid)
        assert (job.attempts, job.worker) == (1, winner.worker)

    def test_heartbeat_needs_running_on_that_worker(self, storage: SearchStorage) -> None:
        """Heartbeats of a queued job, or from another worker, raise IllegalTransition."""
        jid = storage.create_job("search", {})
        with pytest.raises(IllegalTransition):
            storage.heartbeat_job(jid, "w1")
        storage.start_job(jid, "w1")
        before = storage.get_job(jid).heartbeat_at
        with pytest.raises(IllegalTransition):
            storage.heartbeat_job(jid, "w2")
        assert storage.get_job(jid).heartbeat_at == before

    def test_finish_rules(self, storage: SearchStorage) -> None:
        """QUEUED may only be CANCELLED; a non-finished target state is refused."""
        queued = storage.create_job("search", {})
        for bad in (JobState.SUCCEEDED, JobState.FAILED, JobState.RUNNING, JobState.QUEUED):
            with pytest.raises(IllegalTransition):
                storage.finish_job(queued, bad)
        assert storage.get_job(queued).state is JobState.QUEUED
        storage.finish_job(queued, JobState.CANCELLED)
        assert storage.get_job(queued).state is JobState.CANCELLED
        running = storage.create_job("search", {})
        storage.start_job(running, "w")
        for bad in (JobState.RUNNING, JobState.QUEUED):
            with pytest.raises(IllegalTransition):
                storage.finish_job(running, bad)
        storage.finish_job(running, JobState.CANCELLED, error="cancelled by user")
        assert storage.get_job(running).state is JobState.CANCELLED

    def test_requeue_stale_jobs(self, storage: SearchStorage) -> None:
        """Only RUNNING jobs with an old heartbeat go back to QUEUED; a new start counts an attempt."""
        stale = storage.create_job("search", {"n": 1})
        fresh = storage.create_job("search", {"n": 2})
        queued = storage.create_job("search", {"n": 3})
        storage.start_job(stale, "w-dead")
        storage.start_job(fresh, "w-alive")
        assert storage.requeue_stale_jobs(3600.0) == []
        time.sleep(0.3)
        storage.heartbeat_job(fresh, "w-alive")
        assert storage.requeue_stale_jobs(0.2) == [stale]
        job = storage.get_job(stale)
        assert (job.state, job.attempts, job.worker) == (JobState.QUEUED, 1, None)
        assert storage.get_job(fresh).state is JobState.RUNNING
        assert storage.get_job(queued).state is JobState.QUEUED
        with pytest.raises(IllegalTransition):
            storage.heartbeat_job(stale, "w-dead")  # the dead worker lost the job
        restarted = storage.start_job(stale, "w-new")
        assert (restarted.state, restarted.attempts, restarted.worker) == (JobState.RUNNING, 2, "w-new")
        assert storage.requeue_stale_jobs(0.2) == []

    def test_list_jobs_filters_and_paginates(self, storage: SearchStorage) -> None:
        """list_jobs: id order, owner / state filters, total independent of the page."""
        ids = [storage.create_job("search", {"i": i}, owner="alice" if i < 3 else None) for i in range(5)]
        storage.start_job(ids[1], "w")
        storage.start_job(ids[4], "w")

        def listed(**kw: Any) -> tuple[list[int], int]:
            page, total = storage.list_jobs(**kw)
            return [j.id for j in page], total

        assert listed() == (ids, 5)
        assert listed(offset=1, limit=2) == (ids[1:3], 5)
        assert listed(limit=0) == ([], 5)
        assert listed(owner="alice") == (ids[:3], 3)
        assert listed(state=JobState.RUNNING) == ([ids[1], ids[4]], 2)
        assert listed(owner="alice", state=JobState.QUEUED) == ([ids[0], ids[2]], 2)
        assert listed(owner="bob") == ([], 0)
        assert [j.payload for j in storage.list_jobs(limit=2)[0]] == [{"i": 0}, {"i": 1}]

    def test_unknown_job_ids_raise_key_error(self, storage: SearchStorage) -> None:
        """get / start / heartbeat / finish of an unknown job raise KeyError."""
        missing = 987_654
        calls: list[Callable[[], object]] = [
            lambda: storage.get_job(missing),
            lambda: storage.start_job(missing, "w"),
            lambda: storage.heartbeat_job(missing, "w"),
            lambda: storage.finish_job(missing, JobState.CANCELLED),
        ]
        for call in calls:
            with pytest.raises(KeyError):
                call()

    def test_job_records_are_copies(self, storage: SearchStorage) -> None:
        """Mutating payloads / results passed in or returned changes nothing stored."""
        payload: dict[str, Any] = {"gpus": [0]}
        jid = storage.create_job("search", payload)
        payload["gpus"].append(1)
        job = storage.get_job(jid)
        job.payload["gpus"].append(2)
        job.state = JobState.FAILED
        started = storage.start_job(jid, "w")
        started.payload["gpus"].append(3)
        result: dict[str, Any] = {"front": [1, 2]}
        storage.finish_job(jid, JobState.SUCCEEDED, result=result)
        result["front"].clear()
        got = storage.get_job(jid)
        assert got.payload == {"gpus": [0]}
        assert got.result == {"front": [1, 2]}
        assert got.state is JobState.SUCCEEDED

    def test_job_payload_must_be_json(self, storage: SearchStorage) -> None:
        """A payload JSON cannot hold raises StorageError and creates no job."""
        with pytest.raises(StorageError):
            storage.create_job("search", {"bad": object()})
        assert storage.list_jobs() == ([], 0)

    def test_stale_running_job_can_be_taken_over(self, storage: SearchStorage) -> None:
        """start_job(stale_after_s=...) takes a RUNNING job only once its heartbeat is that old."""
        jid = storage.create_job("search", {})
        storage.start_job(jid, "w-dead")
        with pytest.raises(IllegalTransition):
            storage.start_job(jid, "w-new", stale_after_s=3600.0)
        time.sleep(0.3)
        taken = storage.start_job(jid, "w-new", stale_after_s=0.2)
        assert (taken.state, taken.attempts, taken.worker) == (JobState.RUNNING, 2, "w-new")
        with pytest.raises(IllegalTransition):
            storage.heartbeat_job(jid, "w-dead")  # the silent worker lost its lease
        storage.finish_job(jid, JobState.SUCCEEDED)
        with pytest.raises(IllegalTransition):
            storage.start_job(jid, "w-late", stale_after_s=0.0)  # finished jobs are never taken over

    def test_heartbeat_stores_progress(self, storage: SearchStorage) -> None:
        """Progress sent with a heartbeat is stored as JSON and replaced by the next one."""
        jid = storage.create_job("train_supernet", {})
        assert storage.get_job(jid).progress is None
        storage.start_job(jid, "w")
        storage.heartbeat_job(jid, "w", progress={"step": 3, "of": (10,)})
        assert storage.get_job(jid).progress == {"step": 3, "of": [10]}
        storage.heartbeat_job(jid, "w")
        assert storage.get_job(jid).progress == {"step": 3, "of": [10]}
        storage.heartbeat_job(jid, "w", progress={"step": 4})
        assert storage.get_job(jid).progress == {"step": 4}
        with pytest.raises(StorageError):
            storage.heartbeat_job(jid, "w", progress={"bad": float("nan")})
        assert storage.get_job(jid).progress == {"step": 4}

    # -- models ----------------------------------------------------------------------------
    def test_model_lifecycle(self, storage: SearchStorage) -> None:
        """A model starts QUEUED without metrics; updates merge metrics and follow the states."""
        jid = storage.create_job("retrain", {})
        arch = {"branches": [[1, 2]], "widths": [(4, 8)]}
        mid = storage.create_model("knee", arch, "abc", owner="alice", job_id=jid, source={"search_id": 1})
        model = storage.get_model(mid)
        assert (model.name, model.owner, model.job_id, model.task, model.state) == (
            "knee", "alice", jid, "semantic", JobState.QUEUED
        )  # fmt: skip
        assert model.arch == {"branches": [[1, 2]], "widths": [[4, 8]]}
        assert (model.metrics, model.checkpoint_uri, model.error, model.source) == ({}, None, None, {"search_id": 1})
        storage.update_model(mid, state=JobState.RUNNING, metrics={"epoch": 1})
        storage.update_model(mid, metrics={"miou": 0.25})
        storage.update_model(mid, state=JobState.SUCCEEDED, checkpoint_uri="file:///m/best.pt")
        model = storage.get_model(mid)
        assert model.state is JobState.SUCCEEDED
        assert model.metrics == {"epoch": 1, "miou": 0.25}
        assert model.checkpoint_uri == "file:///m/best.pt"
        assert model.updated_at >= model.created_at
        with pytest.raises(IllegalTransition):
            storage.update_model(mid, state=JobState.RUNNING)
        storage.update_model(mid, state=JobState.SUCCEEDED, metrics={"fps": 90.0})  # same state: allowed
        assert storage.get_model(mid).metrics == {"epoch": 1, "miou": 0.25, "fps": 90.0}

    def test_queued_model_may_fail_and_keeps_its_error(self, storage: SearchStorage) -> None:
        """A model whose job failed before it started goes QUEUED -> FAILED with the error."""
        mid = storage.create_model("m", {}, "h")
        storage.update_model(mid, state=JobState.FAILED, error="job failed: no data")
        model = storage.get_model(mid)
        assert (model.state, model.error) == (JobState.FAILED, "job failed: no data")

    def test_models_unknown_ids_and_bad_json(self, storage: SearchStorage) -> None:
        """Unknown model or job ids raise KeyError; an arch JSON cannot hold raises StorageError."""
        with pytest.raises(KeyError):
            storage.get_model(424242)
        with pytest.raises(KeyError):
            storage.update_model(424242, metrics={})
        with pytest.raises(KeyError):
            storage.create_model("m", {}, "h", job_id=424242)
        with pytest.raises(StorageError):
            storage.create_model("m", {"bad": object()}, "h")
        with pytest.raises(StorageError):
            storage.create_model("m", {}, "h", source={"bad": float("inf")})
        assert storage.list_models() == ([], 0)

    def test_list_models_filters_and_paginates(self, storage: SearchStorage) -> None:
        """list_models: id order, owner / job filters, total independent of the page."""
        j1 = storage.create_job("retrain", {})
        j2 = storage.create_job("retrain", {})
        ids = [
            storage.create_model(f"m{i}", {}, f"h{i}", owner="alice" if i % 2 else "bob", job_id=j1 if i < 3 else j2)
            for i in range(5)
        ]

        def listed(**kw: Any) -> tuple[list[int], int]:
            page, total = storage.list_models(**kw)
            return [m.id for m in page], total

        assert listed() == (ids, 5)
        assert listed(offset=2, limit=2) == (ids[2:4], 5)
        assert listed(owner="alice") == ([ids[1], ids[3]], 2)
        assert listed(job_id=j1) == (ids[:3], 3)
        assert listed(owner="bob", job_id=j2) == ([ids[4]], 1)
        with pytest.raises(ValueError):
            storage.list_models(offset=-1)

    def test_model_records_are_copies(self, storage: SearchStorage) -> None:
        """Mutating an arch passed in, or a returned record, changes nothing stored."""
        arch: dict[str, Any] = {"b": [1]}
        mid = storage.create_model("m", arch, "h")
        arch["b"].append(2)
        got = storage.get_model(mid)
        got.metrics["x"] = 1
        got.arch["b"].append(3)
        again = storage.get_model(mid)
        assert (again.arch, again.metrics) == ({"b": [1]}, {})

    # -- API keys --------------------------------------------------------------------------
    def test_api_keys(self, storage: SearchStorage) -> None:
        """Keys are found by hash, listed per user, unique by hash, and revoked idempotently."""
        a = storage.create_api_key("alice", "a" * 64, name="laptop", prefix="hyk_abcd")
        b = storage.create_api_key("bob", "b" * 64)
        with pytest.raises(DuplicateName):
            storage.create_api_key("mallory", "a" * 64)
        key = storage.get_api_key("a" * 64)
        assert key is not None
        assert (key.id, key.user, key.name, key.prefix, key.revoked_at) == (a, "alice", "laptop", "hyk_abcd", None)
        assert storage.get_api_key("c" * 64) is None
        assert [k.id for k in storage.list_api_keys("alice")] == [a]
        assert [k.id for k in storage.list_api_keys()] == [a, b]
        storage.revoke_api_key(a)
        revoked = storage.get_api_key("a" * 64)
        assert revoked is not None and revoked.revoked_at is not None
        storage.revoke_api_key(a)
        again = storage.get_api_key("a" * 64)
        assert again is not None and again.revoked_at == revoked.revoked_at
        with pytest.raises(KeyError):
            storage.revoke_api_key(999_999)
        bob = storage.get_api_key("b" * 64)
        assert bob is not None and bob.revoked_at is None

    # -- deployments -----------------------------------------------------------------------
    def test_deployment_lifecycle(self, storage: SearchStorage) -> None:
        """Create (deploying), update state / options / model / public / error, delete, reuse the name."""
        m1 = storage.create_model("m1", {}, "h1", owner="alice")
        m2 = storage.create_model("m2", {}, "h2", owner="alice")
        did = storage.create_deployment("seg", m1, {"max_batch_size": 4}, owner="alice")
        d = storage.get_deployment(did)
        assert (d.name, d.model_id, d.state, d.public, d.error, d.owner) == (
            "seg",
            m1,
            "deploying",
            False,
            None,
            "alice",
        )
        assert d.options == {"max_batch_size": 4}
        with pytest.raises(DuplicateName):
            storage.create_deployment("seg", m2, {})
        storage.update_deployment(did, state="failed", error="boom")
        storage.update_deployment(
            did, state="running", options={"max_batch_size": 8}, model_id=m2, public=True, error=""
        )
        d = storage.get_deployment(did)
        assert (d.state, d.options, d.model_id, d.public, d.error) == ("running", {"max_batch_size": 8}, m2, True, None)
        found = storage.find_deployment("seg")
        assert found is not None and found.id == did
        with pytest.raises(ValueError):
            storage.update_deployment(did, state="exploded")
        with pytest.raises(KeyError):
            storage.update_deployment(did, model_id=987_654)
        storage.update_deployment(did, state="deleted")
        with pytest.raises(IllegalTransition):
            storage.update_deployment(did, state="running")
        assert storage.find_deployment("seg") is None
        again = storage.create_deployment("seg", m1, {})  # the name is free again
        assert again != did
        assert [x.id for x in storage.list_deployments()] == [again]
        assert [x.id for x in storage.list_deployments(include_deleted=True)] == [did, again]

    def test_deployments_unknown_ids_and_owner_filter(self, storage: SearchStorage) -> None:
        with pytest.raises(KeyError):
            storage.create_deployment("x", 987_654, {})
        with pytest.raises(KeyError):
            storage.get_deployment(987_654)
        m = storage.create_model("m", {}, "h")
        a = storage.create_deployment("a", m, {}, owner="alice")
        b = storage.create_deployment("b", m, {}, owner="bob", public=True)
        assert [d.id for d in storage.list_deployments(owner="alice")] == [a]
        assert [d.id for d in storage.list_deployments()] == [a, b]
        with pytest.raises(StorageError):
            storage.create_deployment("c", m, {"bad": float("nan")})
