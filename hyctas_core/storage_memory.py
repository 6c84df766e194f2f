"""``InMemoryStorage``: the :class:`~hyctas_core.storage.SearchStorage` kept in process memory.

For tests and throw-away runs. Everything is lost when the process ends. It behaves like the
SQL backend wherever the interface leaves room: JSON payloads (configs, objectives, results,
...) go through a JSON round trip on the way in, so tuples come back as lists, non-string keys
as strings, and a value JSON cannot hold (an arbitrary object, NaN or infinity) is refused with
:class:`~hyctas_core.storage.StorageError` exactly where a database would refuse it.

Thread-safe: one lock guards all state; every method is atomic.
"""

from __future__ import annotations

import copy
import json
import threading
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from hyctas_core.storage import (
    JOB_TRANSITIONS,
    MODEL_TRANSITIONS,
    SEARCH_TRANSITIONS,
    ApiKeyRecord,
    DeploymentRecord,
    DuplicateName,
    EvaluationRecord,
    GenerationRecord,
    IllegalTransition,
    IndividualRecord,
    JobRecord,
    JobState,
    ModelRecord,
    SearchRecord,
    SearchState,
    SearchStorage,
    StorageError,
    check_deployment_state,
)

__all__ = ["InMemoryStorage"]


def _now() -> datetime:
    return datetime.now(UTC)


def _json_copy(value: Any, what: str) -> Any:
    """A deep copy of ``value`` through JSON, as a database would store it.

    Raises:
        StorageError: ``value`` is not representable in strict JSON.
    """
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise StorageError(f"{what} is not JSON-serialisable: {exc}") from None


def _check_page(offset: int, limit: int) -> None:
    if offset < 0 or limit < 0:
        raise ValueError(f"offset and limit must be >= 0, got offset={offset}, limit={limit}")


@dataclass
class _SearchData:
    record: SearchRecord
    generations: list[GenerationRecord] = field(default_factory=list)  # position == index
    individuals: list[IndividualRecord] = field(default_factory=list)  # in commit order


class InMemoryStorage(SearchStorage):
    """A complete, thread-safe, in-process :class:`~hyctas_core.storage.SearchStorage`.

    Records are deep-copied on the way in and on the way out: mutating an argument after the
    call, or a returned record, changes nothing stored.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._searches: dict[int, _SearchData] = {}
        self._evaluations: dict[tuple[str, str], dict[str, Any]] = {}
        self._jobs: dict[int, JobRecord] = {}
        self._models: dict[int, ModelRecord] = {}
        self._api_keys: dict[int, tuple[str, ApiKeyRecord]] = {}  # id -> (hash, record)
        self._next_search_id = 1
        self._next_job_id = 1
        self._next_model_id = 1
        self._deployments: dict[int, DeploymentRecord] = {}
        self._next_deployment_id = 1
        self._next_key_id = 1

    # -- helpers (call with the lock held) --------------------------------------------------
    def _search(self, search_id: int) -> _SearchData:
        try:
            return self._searches[search_id]
        except KeyError:
            raise KeyError(f"unknown search id {search_id}") from None

    def _job(self, job_id: int) -> JobRecord:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise KeyError(f"unknown job id {job_id}") from None

    def _find(self, name: str, owner: str | None) -> _SearchData | None:
        for data in self._searches.values():
            if data.record.name == name and data.record.owner == owner:
                return data
        return None

    # -- searches -------------------------------------------------------------------------
    def create_search(self, name: str, config: dict[str, Any], *, owner: str | None = None) -> int:
        """Create a search in state CREATED with ``generation = -1``.

        Args:
            name: Unique per owner.
            config: The full search config (JSON-serialisable).
            owner: The owner, or None.

        Returns:
            The new search id.

        Raises:
            DuplicateName: ``name`` exists for ``owner``.
            StorageError: ``config`` is not JSON-serialisable.
        """
        stored_config = _json_copy(config, "search config")
        with self._lock:
            if self._find(name, owner) is not None:
                raise DuplicateName(f"a search named {name!r} already exists for owner {owner!r}")
            search_id = self._next_search_id
            self._next_search_id += 1
            now = _now()
            self._searches[search_id] = _SearchData(
                SearchRecord(
                    id=search_id,
                    name=name,
                    owner=owner,
                    config=stored_config,
                    state=SearchState.CREATED,
                    generation=-1,
                    reference_point=None,
                    error=None,
                    created_at=now,
                    updated_at=now,
                )
            )
            return search_id

    def get_search(self, search_id: int) -> SearchRecord:
        """The search ``search_id``.

        Raises:
            KeyError: unknown id.
        """
        with self._lock:
            return copy.deepcopy(self._search(search_id).record)

    def find_search(self, name: str, *, owner: str | None = None) -> SearchRecord | None:
        """The search called ``name`` of ``owner`` (None: the search without owner), or None."""
        with self._lock:
            data = self._find(name, owner)
            return None if data is None else copy.deepcopy(data.record)

    def list_searches(
        self, *, owner: str | None = None, state: SearchState | None = None, offset: int = 0, limit: int = 100
    ) -> tuple[list[SearchRecord], int]:
        """(page of searches ordered by id, total count matching the filters).

        ``owner=None`` lists every owner's searches.

        Raises:
            ValueError: negative ``offset`` or ``limit``.
        """
        _check_page(offset, limit)
        with self._lock:
            matching = [
                d.record
                for _, d in sorted(self._searches.items())
                if (owner is None or d.record.owner == owner) and (state is None or d.record.state == state)
            ]
            return copy.deepcopy(matching[offset : offset + limit]), len(matching)

    def set_search_state(self, search_id: int, state: SearchState, *, error: str | None = None) -> None:
        """Move the search to ``state``; ``error`` replaces the stored error (None clears it).

        Raises:
            KeyError: unknown id.
            IllegalTransition: not allowed by ``SEARCH_TRANSITIONS``.
        """
        state = SearchState(state)
        with self._lock:
            record = self._search(search_id).record
            if state not in SEARCH_TRANSITIONS[record.state]:
                raise IllegalTransition(
                    f"search {search_id}: {record.state.value} -> {state.value} is not allowed"
                    f" (allowed: {sorted(s.value for s in SEARCH_TRANSITIONS[record.state]) or 'none'})"
                )
            record.state = state
            record.error = error
            record.updated_at = _now()

    def set_reference_point(self, search_id: int, point: list[float]) -> None:
        """Fix the hypervolume reference point.

        Raises:
            KeyError: unknown id.
            IllegalTransition: already set.
            StorageError: ``point`` is not JSON-serialisable (e.g. NaN).
        """
        stored = _json_copy([float(x) for x in point], "reference point")
        with self._lock:
            record = self._search(search_id).record
            if record.reference_point is not None:
                raise IllegalTransition(f"search {search_id}: the reference point is already set")
            record.reference_point = stored
            record.updated_at = _now()

    def set_search_verification(self, search_id: int, verification: dict[str, Any]) -> None:
        """Replace the search's verification record.

        Raises:
            KeyError: unknown id.
            StorageError: not JSON-serialisable (e.g. NaN).
        """
        stored = _json_copy(verification, "verification")
        with self._lock:
            record = self._search(search_id).record
            record.verification = stored
            record.updated_at = _now()

    # -- generations ----------------------------------------------------------------------
    def commit_generation(
        self,
        search_id: int,
        generation: GenerationRecord,
        individuals: list[IndividualRecord],
        evaluations: list[EvaluationRecord],
    ) -> None:
        """Atomically store one generation and advance the search's ``generation`` counter.

        Existing evaluation-cache entries are kept (the first write of a key wins).

        Raises:
            KeyError: unknown search.
            IllegalTransition: ``generation.index`` is not ``search.generation + 1``, or the
                search is finished.
            ValueError: an individual belongs to another generation.
            StorageError: a payload is not JSON-serialisable; nothing is stored.
        """
        for ind in individuals:
            if ind.generation != generation.index:
                raise ValueError(
                    f"individual {ind.arch_hash!r} has generation {ind.generation}, expected {generation.index}"
                )
        # Copy (and validate) everything before touching the state: a failure stores nothing.
        gen = GenerationRecord(
            index=generation.index,
            hypervolume=float(generation.hypervolume),
            front=_json_copy(list(generation.front), "generation front"),
            n_evaluated=generation.n_evaluated,
            n_new=generation.n_new,
            algorithm_state=bytes(generation.algorithm_state),
            timings=_json_copy(dict(generation.timings), "generation timings"),
            created_at=None,
        )
        inds = [
            IndividualRecord(
                generation=ind.generation,
                arch_hash=ind.arch_hash,
                arch=_json_copy(ind.arch, f"arch of individual {ind.arch_hash!r}"),
                num_branches=ind.num_branches,
                objectives=_json_copy(ind.objectives, f"objectives of individual {ind.arch_hash!r}"),
                status=ind.status,
            )
            for ind in individuals
        ]
        evals = [
            ((ev.cache_key, ev.arch_hash), _json_copy(ev.result, f"evaluation of {ev.arch_hash!r}"))
            for ev in evaluations
        ]
        with self._lock:
            data = self._search(search_id)
            record = data.record
            if record.state.is_finished():
                raise IllegalTransition(f"search {search_id} is {record.state.value}: cannot commit a generation")
            if generation.index != record.generation + 1:
                raise IllegalTransition(
                    f"search {search_id}: generation {generation.index} cannot follow {record.generation}"
                    f" (expected {record.generation + 1})"
                )
            now = _now()
            gen.created_at = now
            data.generations.append(gen)
            data.individuals.extend(inds)
            for key, result in evals:
                self._evaluations.setdefault(key, result)
            record.generation = generation.index
            record.updated_at = now

    def get_generation(self, search_id: int, index: int) -> GenerationRecord:
        """Generation ``index`` of the search, with its algorithm state.

        Raises:
            KeyError: unknown search or generation.
        """
        with self._lock:
            data = self._search(search_id)
            if not 0 <= index < len(data.generations):
                raise KeyError(f"search {search_id} has no generation {index}")
            return copy.deepcopy(data.generations[index])

    def list_generations(self, search_id: int) -> list[GenerationRecord]:
        """All generations in order, with ``algorithm_state`` returned empty (b"").

        Raises:
            KeyError: unknown search.
        """
        with self._lock:
            data = self._search(search_id)
            return [copy.deepcopy(replace(g, algorithm_state=b"")) for g in data.generations]

    def list_individuals(self, search_id: int, *, generation: int | None = None) -> list[IndividualRecord]:
        """Individuals of one generation, or of all (ordered by generation, then insertion).

        Raises:
            KeyError: unknown search.
        """
        with self._lock:
            data = self._search(search_id)
            return copy.deepcopy([i for i in data.individuals if generation is None or i.generation == generation])

    # -- evaluation cache -----------------------------------------------------------------
    def get_evaluations(self, cache_key: str, arch_hashes: list[str]) -> dict[str, dict[str, Any]]:
        """Cached results among ``arch_hashes`` (missing ones are absent from the dict)."""
        with self._lock:
            found = {h: self._evaluations[(cache_key, h)] for h in arch_hashes if (cache_key, h) in self._evaluations}
            return copy.deepcopy(found)

    # -- jobs -----------------------------------------------------------------------------
    def create_job(
        self, kind: str, payload: dict[str, Any], *, owner: str | None = None, stream: str | None = None
    ) -> int:
        """A new job in state QUEUED with 0 attempts.

        Returns:
            The new job id.

        Raises:
            StorageError: ``payload`` is not JSON-serialisable.
        """
        stored = _json_copy(payload, "job payload")
        with self._lock:
            job_id = self._next_job_id
            self._next_job_id += 1
            now = _now()
            self._jobs[job_id] = JobRecord(
                id=job_id,
                kind=kind,
                owner=owner,
                state=JobState.QUEUED,
                payload=stored,
                attempts=0,
                stream=stream,
                worker=None,
                heartbeat_at=None,
                result=None,
                error=None,
                created_at=now,
                updated_at=now,
            )
            return job_id

    def get_job(self, job_id: int) -> JobRecord:
        """The job ``job_id``.

        Raises:
            KeyError: unknown id.
        """
        with self._lock:
            return copy.deepcopy(self._job(job_id))

    def list_jobs(
        self, *, owner: str | None = None, state: JobState | None = None, offset: int = 0, limit: int = 100
    ) -> tuple[list[JobRecord], int]:
        """(page of jobs ordered by id, total count matching the filters); ``owner=None``: every owner.

        Raises:
            ValueError: negative ``offset`` or ``limit``.
        """
        _check_page(offset, limit)
        with self._lock:
            matching = [
                j
                for _, j in sorted(self._jobs.items())
                if (owner is None or j.owner == owner) and (state is None or j.state == state)
            ]
            return copy.deepcopy(matching[offset : offset + limit]), len(matching)

    def start_job(self, job_id: int, worker: str, *, stale_after_s: float | None = None) -> JobRecord:
        """QUEUED (or a RUNNING job silent for ``stale_after_s``) -> RUNNING on ``worker``, ``attempts += 1``.

        Returns:
            The updated job.

        Raises:
            KeyError: unknown id.
            IllegalTransition: the job is not QUEUED, nor RUNNING with a stale heartbeat.
        """
        with self._lock:
            job = self._job(job_id)
            now = _now()
            stale = (
                stale_after_s is not None
                and job.state is JobState.RUNNING
                and (job.heartbeat_at is None or job.heartbeat_at < now - timedelta(seconds=stale_after_s))
            )
            if job.state is not JobState.QUEUED and not stale:
                raise IllegalTransition(f"job {job_id} is {job.state.value}, not queued: cannot start it")
            job.state = JobState.RUNNING
            job.attempts += 1
            job.worker = worker
            job.heartbeat_at = now
            job.updated_at = now
            return copy.deepcopy(job)

    def _running_job(self, job_id: int, worker: str) -> JobRecord:
        """The job if it is RUNNING on ``worker`` (call with the lock held). Raises KeyError, IllegalTransition."""
        job = self._job(job_id)
        if job.state is not JobState.RUNNING or job.worker != worker:
            raise IllegalTransition(
                f"job {job_id} is {job.state.value} on worker {job.worker!r}, not running on {worker!r}"
            )
        return job

    def heartbeat_job(self, job_id: int, worker: str, *, progress: dict[str, Any] | None = None) -> None:
        """Refresh ``heartbeat_at`` (and store ``progress`` when given).

        Raises:
            KeyError: unknown id.
            IllegalTransition: not RUNNING on ``worker``.
            StorageError: ``progress`` is not JSON-serialisable.
        """
        stored = None if progress is None else _json_copy(progress, "job progress")
        with self._lock:
            job = self._running_job(job_id, worker)
            now = _now()
            if stored is not None:
                job.progress = stored
            job.heartbeat_at = now
            job.updated_at = now

    def release_job(self, job_id: int, worker: str) -> None:
        """RUNNING on ``worker`` -> QUEUED, worker and heartbeat cleared.

        Raises:
            KeyError: unknown id.
            IllegalTransition: not RUNNING on ``worker``.
        """
        with self._lock:
            job = self._running_job(job_id, worker)
            job.state = JobState.QUEUED
            job.worker = None
            job.heartbeat_at = None
            job.updated_at = _now()

    def record_job_failure(self, job_id: int, worker: str, *, progress: dict[str, Any] | None = None) -> JobRecord:
        """Count a failed attempt; the job stays RUNNING on ``worker`` (its lease runs out for a retry).

        Raises:
            KeyError: unknown id.
            IllegalTransition: not RUNNING on ``worker``.
            StorageError: ``progress`` is not JSON-serialisable.
        """
        stored = None if progress is None else _json_copy(progress, "job progress")
        with self._lock:
            job = self._running_job(job_id, worker)
            job.failures += 1
            if stored is not None:
                job.progress = stored
            job.updated_at = _now()
            return copy.deepcopy(job)

    def finish_job(
        self, job_id: int, state: JobState, *, result: dict[str, Any] | None = None, error: str | None = None
    ) -> None:
        """RUNNING -> SUCCEEDED / FAILED / CANCELLED, or QUEUED -> CANCELLED; finished jobs are immutable.

        Raises:
            KeyError: unknown id.
            IllegalTransition: ``state`` is not a finished state, or the move is not allowed.
            StorageError: ``result`` is not JSON-serialisable.
        """
        state = JobState(state)
        stored = None if result is None else _json_copy(result, "job result")
        with self._lock:
            job = self._job(job_id)
            if not state.is_finished() or state not in JOB_TRANSITIONS[job.state]:
                raise IllegalTransition(f"job {job_id}: cannot finish {job.state.value} -> {state.value}")
            job.state = state
            job.result = stored
            job.error = error
            job.updated_at = _now()

    def requeue_stale_jobs(self, older_than_s: float) -> list[int]:
        """RUNNING jobs whose heartbeat is older than ``older_than_s`` go back to QUEUED (worker cleared).

        Returns:
            The requeued job ids, ascending.
        """
        with self._lock:
            now = _now()
            cutoff = now - timedelta(seconds=older_than_s)
            stale = []
            for job_id, job in sorted(self._jobs.items()):
                if job.state is JobState.RUNNING and job.heartbeat_at is not None and job.heartbeat_at < cutoff:
                    job.state = JobState.QUEUED
                    job.worker = None
                    job.updated_at = now
                    stale.append(job_id)
            return stale

    # -- models ---------------------------------------------------------------------------
    def _model(self, model_id: int) -> ModelRecord:
        try:
            return self._models[model_id]
        except KeyError:
            raise KeyError(f"unknown model id {model_id}") from None

    def create_model(
        self,
        name: str,
        arch: dict[str, Any],
        arch_hash: str,
        *,
        owner: str | None = None,
        job_id: int | None = None,
        task: str = "semantic",
        source: dict[str, Any] | None = None,
    ) -> int:
        """A new model in state QUEUED with no metrics.

        Returns:
            The new model id.

        Raises:
            KeyError: unknown ``job_id``.
            StorageError: ``arch`` or ``source`` is not JSON-serialisable.
        """
        stored_arch = _json_copy(arch, "model arch")
        stored_source = _json_copy(source or {}, "model source")
        with self._lock:
            if job_id is not None:
                self._job(job_id)
            model_id = self._next_model_id
            self._next_model_id += 1
            now = _now()
            self._models[model_id] = ModelRecord(
                id=model_id,
                owner=owner,
                job_id=job_id,
                name=name,
                arch=stored_arch,
                arch_hash=arch_hash,
                task=task,
                source=stored_source,
                state=JobState.QUEUED,
                metrics={},
                checkpoint_uri=None,
                error=None,
                created_at=now,
                updated_at=now,
            )
            return model_id

    def get_model(self, model_id: int) -> ModelRecord:
        """The model ``model_id``.

        Raises:
            KeyError: unknown id.
        """
        with self._lock:
            return copy.deepcopy(self._model(model_id))

    def list_models(
        self, *, owner: str | None = None, job_id: int | None = None, offset: int = 0, limit: int = 100
    ) -> tuple[list[ModelRecord], int]:
        """(page of models ordered by id, total count matching the filters).

        Raises:
            ValueError: negative ``offset`` or ``limit``.
        """
        _check_page(offset, limit)
        with self._lock:
            matching = [
                m
                for _, m in sorted(self._models.items())
                if (owner is None or m.owner == owner) and (job_id is None or m.job_id == job_id)
            ]
            return copy.deepcopy(matching[offset : offset + limit]), len(matching)

    def update_model(
        self,
        model_id: int,
        *,
        state: JobState | None = None,
        metrics: dict[str, Any] | None = None,
        checkpoint_uri: str | None = None,
        error: str | None = None,
    ) -> None:
        """Change what is given; ``metrics`` are merged into the stored ones.

        Raises:
            KeyError: unknown id.
            IllegalTransition: ``state`` is not reachable from the model's state.
            StorageError: ``metrics`` is not JSON-serialisable.
        """
        new_metrics = None if metrics is None else _json_copy(metrics, "model metrics")
        with self._lock:
            model = self._model(model_id)
            if state is not None:
                state = JobState(state)
                if state is not model.state and state not in MODEL_TRANSITIONS[model.state]:
                    raise IllegalTransition(f"model {model_id}: cannot move {model.state.value} -> {state.value}")
                model.state = state
            if new_metrics is not None:
                model.metrics = {**model.metrics, **new_metrics}
            if checkpoint_uri is not None:
                model.checkpoint_uri = checkpoint_uri
            if error is not None:
                model.error = error
            model.updated_at = _now()

    # -- deployments ----------------------------------------------------------------------
    def _deployment(self, deployment_id: int) -> DeploymentRecord:
        try:
            return self._deployments[deployment_id]
        except KeyError:
            raise KeyError(f"unknown deployment id {deployment_id}") from None

    def create_deployment(
        self, name: str, model_id: int, options: dict[str, Any], *, owner: str | None = None, public: bool = False
    ) -> int:
        """A deployment in state ``deploying``.

        Returns:
            The new deployment id.

        Raises:
            KeyError: unknown model.
            DuplicateName: a live deployment has this name.
            StorageError: ``options`` is not JSON-serialisable.
        """
        stored = _json_copy(options, "deployment options")
        with self._lock:
            self._model(model_id)
            if any(d.name == name and d.state != "deleted" for d in self._deployments.values()):
                raise DuplicateName(f"a deployment named {name!r} exists")
            deployment_id = self._next_deployment_id
            self._next_deployment_id += 1
            now = _now()
            self._deployments[deployment_id] = DeploymentRecord(
                deployment_id, owner, name, model_id, stored, "deploying", public, None, now, now
            )
            return deployment_id

    def get_deployment(self, deployment_id: int) -> DeploymentRecord:
        """The deployment ``deployment_id``.

        Raises:
            KeyError: unknown id.
        """
        with self._lock:
            return copy.deepcopy(self._deployment(deployment_id))

    def find_deployment(self, name: str) -> DeploymentRecord | None:
        """The live deployment called ``name``, or None."""
        with self._lock:
            for d in self._deployments.values():
                if d.name == name and d.state != "deleted":
                    return copy.deepcopy(d)
            return None

    def list_deployments(self, *, owner: str | None = None, include_deleted: bool = False) -> list[DeploymentRecord]:
        """Deployments ordered by id."""
        with self._lock:
            return [
                copy.deepcopy(d)
                for _, d in sorted(self._deployments.items())
                if (owner is None or d.owner == owner) and (include_deleted or d.state != "deleted")
            ]

    def update_deployment(
        self,
        deployment_id: int,
        *,
        state: str | None = None,
        options: dict[str, Any] | None = None,
        model_id: int | None = None,
        public: bool | None = None,
        error: str | None = None,
    ) -> None:
        """Change what is given (``error=""`` clears it).

        Raises:
            KeyError: unknown deployment or model.
            ValueError: unknown state.
            IllegalTransition: the deployment is deleted.
        """
        check_deployment_state(state)
        stored = None if options is None else _json_copy(options, "deployment options")
        with self._lock:
            d = self._deployment(deployment_id)
            if d.state == "deleted":
                raise IllegalTransition(f"deployment {deployment_id} is deleted")
            if model_id is not None:
                self._model(model_id)
                d.model_id = model_id
            if state is not None:
                d.state = state
            if stored is not None:
                d.options = stored
            if public is not None:
                d.public = public
            if error is not None:
                d.error = error or None
            d.updated_at = _now()

    # -- API keys -------------------------------------------------------------------------
    def create_api_key(self, user: str, key_hash: str, *, name: str = "", prefix: str = "") -> int:
        """Store a key's hash for ``user``.

        Returns:
            The key id.

        Raises:
            DuplicateName: a key with this hash exists.
        """
        with self._lock:
            if any(h == key_hash for h, _ in self._api_keys.values()):
                raise DuplicateName("an API key with this hash exists")
            key_id = self._next_key_id
            self._next_key_id += 1
            self._api_keys[key_id] = (key_hash, ApiKeyRecord(key_id, user, name, prefix, _now()))
            return key_id

    def get_api_key(self, key_hash: str) -> ApiKeyRecord | None:
        """The key with this hash (revoked ones too), or None."""
        with self._lock:
            for h, record in self._api_keys.values():
                if h == key_hash:
                    return copy.deepcopy(record)
            return None

    def list_api_keys(self, user: str | None = None) -> list[ApiKeyRecord]:
        """Keys of ``user`` (every user's when None), ordered by id."""
        with self._lock:
            return [copy.deepcopy(r) for _, (_, r) in sorted(self._api_keys.items()) if user is None or r.user == user]

    def revoke_api_key(self, key_id: int) -> None:
        """Revoke a key (idempotent).

        Raises:
            KeyError: unknown id.
        """
        with self._lock:
            if key_id not in self._api_keys:
                raise KeyError(f"unknown API key id {key_id}")
            record = self._api_keys[key_id][1]
            if record.revoked_at is None:
                record.revoked_at = _now()
