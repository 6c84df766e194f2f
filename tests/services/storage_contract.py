"""The contract of the service's :class:`~services.storage.base.Storage`: the core's
:class:`~hyctas_core.testing.storage_contract.SearchStoreContract` (searches, generations, the
evaluation cache) and what the service adds: listings, the job lifecycle, models, deployments and
API keys.

Where the interface leaves room, this suite fixes the project's choice: ``list_searches(owner=None)``
lists every owner; ``finish_job`` only accepts a finished state; a requeued job loses its worker.

One file on purpose (over 600 lines): one contract, one test per guarantee of the interface.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest

from hyctas_core.storage import DuplicateName, IllegalTransition, SearchState, StorageError
from hyctas_core.testing.storage_contract import (
    CONFIG,
    SearchStoreContract,
    commit_next,
    make_evaluations,
    make_generation,
    make_individuals,
    race,
    search_in,
)
from services.storage.base import JobRecord, JobState, Storage

__all__ = ["StorageContract"]


class StorageContract(SearchStoreContract):
    """Contract tests for a :class:`~services.storage.base.Storage`: every search test, and the rest."""

    @pytest.fixture
    def storage(self) -> Iterator[Storage]:
        """A fresh, empty storage (subclasses must override this fixture)."""
        raise NotImplementedError(f"{type(self).__name__} must define a `storage` fixture")

    def test_duplicate_name_for_same_owner_is_refused(self, storage: Storage) -> None:
        """The same (owner, name) twice raises DuplicateName, also for owner None."""
        storage.create_search("dup", CONFIG, owner="alice")
        storage.create_search("dup", CONFIG)
        with pytest.raises(DuplicateName):
            storage.create_search("dup", {"other": 1}, owner="alice")
        with pytest.raises(DuplicateName):
            storage.create_search("dup", {"other": 1})
        assert storage.list_searches()[1] == 2
        assert issubclass(DuplicateName, StorageError)

    def test_create_search_with_non_json_config_stores_nothing(self, storage: Storage) -> None:
        """A config JSON cannot hold raises StorageError and leaves no search behind."""
        with pytest.raises(StorageError):
            storage.create_search("bad", {"x": object()})
        with pytest.raises(StorageError):
            storage.create_search("nan", {"x": float("nan")})
        assert storage.list_searches() == ([], 0)
        assert storage.find_search("bad") is None

    def test_unknown_search_ids_raise_key_error(self, storage: Storage) -> None:
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
    def test_list_searches_paginates_in_id_order(self, storage: Storage) -> None:
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

    def test_list_searches_filters_by_owner_and_state(self, storage: Storage) -> None:
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

    def test_list_rejects_negative_paging(self, storage: Storage) -> None:
        """Negative offset or limit is a ValueError for searches and jobs."""
        with pytest.raises(ValueError):
            storage.list_searches(offset=-1)
        with pytest.raises(ValueError):
            storage.list_searches(limit=-1)
        with pytest.raises(ValueError):
            storage.list_jobs(offset=-1)
        with pytest.raises(ValueError):
            storage.list_jobs(limit=-5)

    def test_search_records_are_copies(self, storage: Storage) -> None:
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

    def test_generations_commit_in_order_only(self, storage: Storage) -> None:
        """A gap, a repeat or a negative index raises IllegalTransition and changes nothing."""
        sid = search_in(storage, SearchState.RUNNING, "order")
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

    def test_large_algorithm_state_round_trips_exactly(self, storage: Storage) -> None:
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

    def test_list_generations_in_order(self, storage: Storage) -> None:
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

    def test_generation_records_are_copies(self, storage: Storage) -> None:
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

    # -- jobs -----------------------------------------------------------------------------
    def test_create_job_is_queued_with_zero_attempts(self, storage: Storage) -> None:
        """A new job is QUEUED, 0 attempts, no worker / heartbeat / result / error; UTC timestamps."""
        jid = storage.create_job("search", {"search_id": 1, "gpus": [0, 1]}, owner="alice", stream="hyctas:jobs")
        job = storage.get_job(jid)
        assert job.stream == "hyctas:jobs" and storage.get_job(storage.create_job("search", {})).stream is None
        assert (job.id, job.kind, job.owner, job.state, job.attempts) == (jid, "search", "alice", JobState.QUEUED, 0)
        assert job.payload == {"search_id": 1, "gpus": [0, 1]}
        assert job.worker is None and job.heartbeat_at is None and job.result is None and job.error is None
        assert job.created_at.utcoffset() == timedelta(0) and job.created_at <= job.updated_at

    def test_job_lifecycle(self, storage: Storage) -> None:
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

    def test_failed_job_keeps_its_error(self, storage: Storage) -> None:
        """finish_job(FAILED, error=...) stores the error and no result."""
        jid = storage.create_job("retrain", {})
        storage.start_job(jid, "w")
        storage.finish_job(jid, JobState.FAILED, error="diverged at epoch 3")
        job = storage.get_job(jid)
        assert (job.state, job.error, job.result) == (JobState.FAILED, "diverged at epoch 3", None)

    def test_failures_are_counted_apart_from_takeovers(self, storage: Storage) -> None:
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

    def test_release_hands_a_job_back_at_once(self, storage: Storage) -> None:
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

    def test_finished_jobs_are_immutable(self, storage: Storage) -> None:
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

    def test_start_only_from_queued(self, storage: Storage) -> None:
        """Starting a RUNNING job raises IllegalTransition and keeps worker and attempts."""
        jid = storage.create_job("search", {})
        storage.start_job(jid, "w1")
        with pytest.raises(IllegalTransition):
            storage.start_job(jid, "w2")
        job = storage.get_job(jid)
        assert (job.worker, job.attempts) == ("w1", 1)

    def test_concurrent_starts_have_one_winner(self, storage: Storage) -> None:
        """Workers racing to start one job: one gets it, the others IllegalTransition."""
        jid = storage.create_job("search", {})
        winners, errors = race(3, lambda i: storage.start_job(jid, f"w{i}"))
        assert len(winners) == 1, errors
        assert len(errors) == 2 and all(isinstance(e, IllegalTransition) for e in errors), errors
        winner = winners[0]
        assert isinstance(winner, JobRecord)
        job = storage.get_job(jid)
        assert (job.attempts, job.worker) == (1, winner.worker)

    def test_heartbeat_needs_running_on_that_worker(self, storage: Storage) -> None:
        """Heartbeats of a queued job, or from another worker, raise IllegalTransition."""
        jid = storage.create_job("search", {})
        with pytest.raises(IllegalTransition):
            storage.heartbeat_job(jid, "w1")
        storage.start_job(jid, "w1")
        before = storage.get_job(jid).heartbeat_at
        with pytest.raises(IllegalTransition):
            storage.heartbeat_job(jid, "w2")
        assert storage.get_job(jid).heartbeat_at == before

    def test_finish_rules(self, storage: Storage) -> None:
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

    def test_requeue_stale_jobs(self, storage: Storage) -> None:
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

    def test_list_jobs_filters_and_paginates(self, storage: Storage) -> None:
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

    def test_unknown_job_ids_raise_key_error(self, storage: Storage) -> None:
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

    def test_job_records_are_copies(self, storage: Storage) -> None:
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

    def test_job_payload_must_be_json(self, storage: Storage) -> None:
        """A payload JSON cannot hold raises StorageError and creates no job."""
        with pytest.raises(StorageError):
            storage.create_job("search", {"bad": object()})
        assert storage.list_jobs() == ([], 0)

    def test_stale_running_job_can_be_taken_over(self, storage: Storage) -> None:
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

    def test_heartbeat_stores_progress(self, storage: Storage) -> None:
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
    def test_model_lifecycle(self, storage: Storage) -> None:
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

    def test_queued_model_may_fail_and_keeps_its_error(self, storage: Storage) -> None:
        """A model whose job failed before it started goes QUEUED -> FAILED with the error."""
        mid = storage.create_model("m", {}, "h")
        storage.update_model(mid, state=JobState.FAILED, error="job failed: no data")
        model = storage.get_model(mid)
        assert (model.state, model.error) == (JobState.FAILED, "job failed: no data")

    def test_models_unknown_ids_and_bad_json(self, storage: Storage) -> None:
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

    def test_list_models_filters_and_paginates(self, storage: Storage) -> None:
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

    def test_model_records_are_copies(self, storage: Storage) -> None:
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
    def test_api_keys(self, storage: Storage) -> None:
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
    def test_deployment_lifecycle(self, storage: Storage) -> None:
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

    def test_serving_latency_is_stored_apart_and_cleared_by_a_redeploy(self, storage: Storage) -> None:
        """A replica's report lands in ``serving_latency`` (stamped, newest wins) and touches nothing
        else; new options or another model clear it; a state change alone does not."""
        m1 = storage.create_model("m1", {}, "h1", owner="alice")
        m2 = storage.create_model("m2", {}, "h2", owner="alice")
        did = storage.create_deployment("seg", m1, {"max_batch_size": 4}, owner="alice")
        assert storage.get_deployment(did).serving_latency is None
        before = storage.get_deployment(did).updated_at
        storage.record_serving_latency(did, {"input_size": [64, 128], "requests": 3, "p50_ms": 9.5})
        storage.record_serving_latency(did, {"input_size": [64, 128], "requests": 7, "p50_ms": 9.0})
        d = storage.get_deployment(did)
        assert d.serving_latency is not None and d.serving_latency["requests"] == 7 and d.serving_latency["at"]
        assert d.updated_at == before and d.state == "deploying"
        storage.update_deployment(did, state="running")
        assert storage.get_deployment(did).serving_latency is not None
        storage.update_deployment(did, options={"max_batch_size": 8})
        assert storage.get_deployment(did).serving_latency is None
        storage.record_serving_latency(did, {"requests": 1})
        storage.update_deployment(did, model_id=m2)
        assert storage.get_deployment(did).serving_latency is None
        with pytest.raises(KeyError):
            storage.record_serving_latency(987_654, {"requests": 1})

    def test_deployments_unknown_ids_and_owner_filter(self, storage: Storage) -> None:
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
