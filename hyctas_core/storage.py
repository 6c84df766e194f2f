"""Persistence of searches behind one small interface (after Optuna's ``BaseStorage``).

Implementations: ``InMemoryStorage`` (tests, throw-away runs) here, and ``SQLStorage`` over
SQLite (the embedded default) or PostgreSQL in ``services/storage``. Every implementation
passes the same contract suite (``hyctas_core/testing/storage_contract.py``).

Guarantees every implementation keeps:

- :meth:`SearchStorage.commit_generation` is atomic: the generation row, its individuals,
  the evaluation-cache entries and the search's ``generation`` counter are written in one
  transaction, or not at all. Generations are committed in order (0, 1, 2, ...), never twice.
- Returned records are copies: mutating them changes nothing stored.
- Unknown ids raise ``KeyError``; illegal state transitions raise :class:`IllegalTransition`;
  a duplicate search name (per owner) raises :class:`DuplicateName`; backend failures raise
  :class:`StorageError` with a one-line message.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = [
    "ApiKeyRecord",
    "DeploymentRecord",
    "DuplicateName",
    "EvaluationRecord",
    "GenerationRecord",
    "IllegalTransition",
    "IndividualRecord",
    "JobRecord",
    "JobState",
    "ModelRecord",
    "SearchRecord",
    "SearchState",
    "SearchStorage",
    "StorageError",
    "StorageUnavailable",
]


class StorageError(RuntimeError):
    """The backend failed (connection, integrity, ...); the message is one line."""


class StorageUnavailable(StorageError):
    """The backend cannot be reached right now (connection refused or lost, timeout, locked): retry later."""


class DuplicateName(StorageError):
    """A search with this name already exists for this owner."""


class IllegalTransition(StorageError):
    """A state change the state machine does not allow (e.g. cancel a finished search)."""


class SearchState(enum.StrEnum):
    CREATED = "created"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def is_finished(self) -> bool:
        return self in (SearchState.SUCCEEDED, SearchState.FAILED, SearchState.CANCELLED)


# Allowed transitions (from -> to). RUNNING -> RUNNING is allowed: a resumed search.
SEARCH_TRANSITIONS: dict[SearchState, frozenset[SearchState]] = {
    SearchState.CREATED: frozenset({SearchState.RUNNING, SearchState.CANCELLED, SearchState.FAILED}),
    SearchState.RUNNING: frozenset(
        {SearchState.RUNNING, SearchState.SUCCEEDED, SearchState.FAILED, SearchState.CANCELLED}
    ),
    SearchState.FAILED: frozenset({SearchState.RUNNING}),  # resume after a crash
    SearchState.SUCCEEDED: frozenset(),
    SearchState.CANCELLED: frozenset(),
}


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def is_finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED}),
    JobState.RUNNING: frozenset({JobState.QUEUED, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


# A model follows its job's states; it may also fail before it starts (its job failed first).
MODEL_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    **JOB_TRANSITIONS,
    JobState.QUEUED: JOB_TRANSITIONS[JobState.QUEUED] | {JobState.FAILED},
}


@dataclass
class SearchRecord:
    id: int
    name: str
    owner: str | None
    config: dict[str, Any]  # the full search config: a run can be replayed from the DB alone
    state: SearchState
    generation: int  # index of the last committed generation, -1 before the first
    reference_point: list[float] | None  # fixed hypervolume reference, set once
    error: str | None
    created_at: datetime
    updated_at: datetime
    # Retraining of front points after the search and the rank agreement with the supernet
    # (see hyctas_core.verify); None when the search asked for none.
    verification: dict[str, Any] | None = None


@dataclass
class GenerationRecord:
    index: int
    hypervolume: float
    front: list[str]  # hashes of the non-dominated archs among all evaluated so far, by cost
    n_evaluated: int  # distinct archs evaluated so far in the search (cumulative)
    n_new: int  # archs evaluated in this generation (cache misses)
    algorithm_state: bytes  # everything needed to continue (pickled pymoo algorithm + RNG)
    timings: dict[str, float] = field(default_factory=dict)  # e.g. eval_s, loop_s, storage_s
    created_at: datetime | None = None


@dataclass
class IndividualRecord:
    generation: int
    arch_hash: str
    arch: dict[str, Any]  # official JSON format
    num_branches: int
    objectives: dict[str, float]  # e.g. {"miou": 0.41, "latency_ms": 12.3, "gmacs": 1.2, "params_m": 0.8}
    status: str = "evaluated"  # or "failed"


@dataclass
class EvaluationRecord:
    """A cached evaluation: valid for every search that shares ``cache_key``."""

    cache_key: str  # hash of (supernet checkpoint, data, evaluation settings)
    arch_hash: str
    result: dict[str, Any]


@dataclass
class JobRecord:
    id: int
    kind: str  # "train_supernet", "search", "verify", "retrain", "deploy"
    owner: str | None
    state: JobState
    payload: dict[str, Any]
    attempts: int  # starts: the first, takeovers after a worker died, retries after a failure
    worker: str | None
    heartbeat_at: datetime | None
    result: dict[str, Any] | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    progress: dict[str, Any] | None = None  # live progress the worker reports with its heartbeats
    failures: int = 0  # attempts that ended in the handler's own error (a dead worker is not one)
    stream: str | None = None  # the queue stream it was submitted on (its workers sweep only theirs)

    @property
    def takeovers(self) -> int:
        """Starts after a worker died or went silent (not after a handler error)."""
        return max(0, self.attempts - 1 - self.failures)


@dataclass
class ModelRecord:
    """A model to retrain (or retrained) from scratch: one architecture, its job and its results."""

    id: int
    owner: str | None
    job_id: int | None  # the retrain job that trains it
    name: str
    arch: dict[str, Any]  # official JSON format
    arch_hash: str
    task: str  # "semantic" or "panoptic"
    source: dict[str, Any]  # where the arch came from, e.g. {"search_id": 3, "generation": 7}
    state: JobState
    metrics: dict[str, Any]  # e.g. {"miou": 0.41, "epoch": 12, "fps": 95.0}
    checkpoint_uri: str | None
    error: str | None
    created_at: datetime
    updated_at: datetime


@dataclass
class DeploymentRecord:
    """A model served by Ray Serve under a unique name (route ``/segment/{name}``)."""

    id: int
    owner: str | None
    name: str
    model_id: int
    options: dict[str, Any]  # replicas, batching, backend, device (validated by the API)
    state: str  # "deploying", "running", "failed", "deleting", "deleted"
    public: bool
    error: str | None
    created_at: datetime
    updated_at: datetime


DEPLOYMENT_STATES = ("deploying", "running", "failed", "deleting", "deleted")


def check_deployment_state(state: str | None) -> None:
    """Raises ValueError unless ``state`` is None or one of :data:`DEPLOYMENT_STATES` (shared by the backends)."""
    if state is not None and state not in DEPLOYMENT_STATES:
        raise ValueError(f"unknown deployment state {state!r}; one of {', '.join(DEPLOYMENT_STATES)}")


@dataclass
class ApiKeyRecord:
    """An API key; only a hash of the secret is stored, with a short prefix to recognise it."""

    id: int
    user: str
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None = None


class SearchStorage(abc.ABC):
    """Persists searches, generations, individuals, cached evaluations and jobs."""

    # -- searches -------------------------------------------------------------------------
    @abc.abstractmethod
    def create_search(self, name: str, config: dict[str, Any], *, owner: str | None = None) -> int:
        """Create a search in state CREATED with ``generation = -1``.

        Returns:
            The new search id.
        Raises:
            DuplicateName: ``name`` exists for ``owner``.
        """

    @abc.abstractmethod
    def get_search(self, search_id: int) -> SearchRecord:
        """Raises: KeyError: unknown id."""

    @abc.abstractmethod
    def find_search(self, name: str, *, owner: str | None = None) -> SearchRecord | None:
        """The search called ``name`` of ``owner``, or None."""

    @abc.abstractmethod
    def list_searches(
        self, *, owner: str | None = None, state: SearchState | None = None, offset: int = 0, limit: int = 100
    ) -> tuple[list[SearchRecord], int]:
        """(page of searches ordered by id, total count matching the filters).

        ``owner=None`` lists every owner's searches.
        """

    @abc.abstractmethod
    def set_search_state(self, search_id: int, state: SearchState, *, error: str | None = None) -> None:
        """Raises: KeyError: unknown id. IllegalTransition: not allowed by ``SEARCH_TRANSITIONS``."""

    @abc.abstractmethod
    def set_reference_point(self, search_id: int, point: list[float]) -> None:
        """Fix the hypervolume reference point. Raises: IllegalTransition: already set."""

    @abc.abstractmethod
    def set_search_verification(self, search_id: int, verification: dict[str, Any]) -> None:
        """Replace the search's verification record (JSON: state, k, rows, rank correlations).

        Raises: KeyError: unknown id. StorageError: not JSON-serialisable.
        """

    # -- generations ----------------------------------------------------------------------
    @abc.abstractmethod
    def commit_generation(
        self,
        search_id: int,
        generation: GenerationRecord,
        individuals: list[IndividualRecord],
        evaluations: list[EvaluationRecord],
    ) -> None:
        """Atomically store one generation and advance the search's ``generation`` counter.

        Raises:
            KeyError: unknown search.
            IllegalTransition: ``generation.index`` is not ``search.generation + 1``, or the
                search is finished.
        """

    @abc.abstractmethod
    def get_generation(self, search_id: int, index: int) -> GenerationRecord:
        """Raises: KeyError: unknown search or generation."""

    @abc.abstractmethod
    def list_generations(self, search_id: int) -> list[GenerationRecord]:
        """All generations in order; ``algorithm_state`` may be returned empty (b"") to save I/O."""

    @abc.abstractmethod
    def list_individuals(self, search_id: int, *, generation: int | None = None) -> list[IndividualRecord]:
        """Individuals of one generation, or of all (ordered by generation, then insertion)."""

    # -- evaluation cache -----------------------------------------------------------------
    @abc.abstractmethod
    def get_evaluations(self, cache_key: str, arch_hashes: list[str]) -> dict[str, dict[str, Any]]:
        """Cached results among ``arch_hashes`` (missing ones are absent from the dict)."""

    # -- jobs -----------------------------------------------------------------------------
    @abc.abstractmethod
    def create_job(
        self, kind: str, payload: dict[str, Any], *, owner: str | None = None, stream: str | None = None
    ) -> int:
        """A new job in state QUEUED with 0 attempts, submitted on queue ``stream``; returns its id."""

    @abc.abstractmethod
    def get_job(self, job_id: int) -> JobRecord:
        """Raises: KeyError: unknown id."""

    @abc.abstractmethod
    def list_jobs(
        self, *, owner: str | None = None, state: JobState | None = None, offset: int = 0, limit: int = 100
    ) -> tuple[list[JobRecord], int]:
        """(page of jobs ordered by id, total count)."""

    @abc.abstractmethod
    def start_job(self, job_id: int, worker: str, *, stale_after_s: float | None = None) -> JobRecord:
        """QUEUED -> RUNNING, ``attempts += 1``, ``worker`` and ``heartbeat_at = now``.

        Args:
            job_id: The job.
            worker: Who runs it.
            stale_after_s: Also take over a RUNNING job whose heartbeat is older than this
                (its worker went silent): ``attempts += 1`` and the new ``worker``.

        Raises: KeyError. IllegalTransition: the job is not QUEUED (nor a stale RUNNING one).
        """

    @abc.abstractmethod
    def heartbeat_job(self, job_id: int, worker: str, *, progress: dict[str, Any] | None = None) -> None:
        """Refresh ``heartbeat_at`` (and store ``progress`` when given).

        Raises: IllegalTransition: not RUNNING on ``worker`` (the lease was lost or the job cancelled).
        """

    @abc.abstractmethod
    def release_job(self, job_id: int, worker: str) -> None:
        """Hand a job back at once: RUNNING on ``worker`` -> QUEUED, worker and heartbeat cleared.

        For a worker that stops (shutdown, a stalled job) before the job ends: the next
        ``start_job`` needs no stale lease. Raises: IllegalTransition: not RUNNING on ``worker``.
        """

    @abc.abstractmethod
    def record_job_failure(self, job_id: int, worker: str, *, progress: dict[str, Any] | None = None) -> JobRecord:
        """Count a failed attempt (``failures += 1``, ``progress`` stored when given); the job stays RUNNING.

        Raises: IllegalTransition: not RUNNING on ``worker``. StorageError: ``progress`` not JSON.
        """

    @abc.abstractmethod
    def finish_job(
        self, job_id: int, state: JobState, *, result: dict[str, Any] | None = None, error: str | None = None
    ) -> None:
        """RUNNING -> SUCCEEDED / FAILED / CANCELLED, or QUEUED -> CANCELLED; finished jobs are immutable.

        Raises: KeyError. IllegalTransition.
        """

    @abc.abstractmethod
    def requeue_stale_jobs(self, older_than_s: float) -> list[int]:
        """RUNNING jobs whose heartbeat is older than ``older_than_s`` go back to QUEUED; returns their ids."""

    # -- models ---------------------------------------------------------------------------
    @abc.abstractmethod
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
        """A new model in state QUEUED with no metrics; returns its id.

        Raises: KeyError: unknown ``job_id``. StorageError: ``arch`` / ``source`` not JSON.
        """

    @abc.abstractmethod
    def get_model(self, model_id: int) -> ModelRecord:
        """Raises: KeyError: unknown id."""

    @abc.abstractmethod
    def list_models(
        self, *, owner: str | None = None, job_id: int | None = None, offset: int = 0, limit: int = 100
    ) -> tuple[list[ModelRecord], int]:
        """(page of models ordered by id, total count); ``owner=None``: every owner."""

    @abc.abstractmethod
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

        Raises: KeyError. IllegalTransition: the model is finished (SUCCEEDED, FAILED or
        CANCELLED) and ``state`` would move it (re-setting its own state is allowed).
        """

    # -- deployments ----------------------------------------------------------------------
    @abc.abstractmethod
    def create_deployment(
        self, name: str, model_id: int, options: dict[str, Any], *, owner: str | None = None, public: bool = False
    ) -> int:
        """A deployment in state ``deploying``; returns its id.

        Raises: KeyError: unknown model. DuplicateName: a live (not ``deleted``) deployment has this name.
        """

    @abc.abstractmethod
    def get_deployment(self, deployment_id: int) -> DeploymentRecord:
        """Raises: KeyError: unknown id."""

    @abc.abstractmethod
    def find_deployment(self, name: str) -> DeploymentRecord | None:
        """The live (not ``deleted``) deployment called ``name``, or None."""

    @abc.abstractmethod
    def list_deployments(self, *, owner: str | None = None, include_deleted: bool = False) -> list[DeploymentRecord]:
        """Deployments ordered by id; ``owner=None``: every owner's."""

    @abc.abstractmethod
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

        Raises: KeyError: unknown deployment or model. ValueError: unknown state.
        IllegalTransition: the deployment is ``deleted``.
        """

    # -- API keys -------------------------------------------------------------------------
    @abc.abstractmethod
    def create_api_key(self, user: str, key_hash: str, *, name: str = "", prefix: str = "") -> int:
        """Store a key's hash for ``user``; returns its id. Raises: DuplicateName: the hash exists."""

    @abc.abstractmethod
    def get_api_key(self, key_hash: str) -> ApiKeyRecord | None:
        """The key with this hash (revoked ones too: check ``revoked_at``), or None."""

    @abc.abstractmethod
    def list_api_keys(self, user: str | None = None) -> list[ApiKeyRecord]:
        """Keys of ``user`` (every user's when None), ordered by id."""

    @abc.abstractmethod
    def revoke_api_key(self, key_id: int) -> None:
        """Revoke a key (idempotent). Raises: KeyError: unknown id."""

    # -- convenience (concrete) -----------------------------------------------------------
    def latest_generation(self, search_id: int) -> GenerationRecord | None:
        """The last committed generation (with its algorithm state), or None."""
        search = self.get_search(search_id)
        return None if search.generation < 0 else self.get_generation(search_id, search.generation)

    def pareto_front(self, search_id: int) -> list[IndividualRecord]:
        """The archs on the last generation's front (over everything evaluated so far), in front order."""
        latest = self.latest_generation(search_id)
        if latest is None:
            return []
        first: dict[str, IndividualRecord] = {}
        for ind in self.list_individuals(search_id):
            first.setdefault(ind.arch_hash, ind)
        return [first[h] for h in latest.front if h in first]
