"""The service's storage contract: :class:`Storage` extends the method's
:class:`~hyctas_core.storage.SearchStore` with what the service keeps besides searches: listings,
jobs (the queue's durable side), models, deployments and API keys.

:class:`~services.storage.sql.SQLStorage` implements it over SQLite (the embedded default) or
PostgreSQL; ``tests/services/storage_contract.py`` is the suite every backend passes. The rules of
the search records are the core's (:class:`~hyctas_core.storage.SearchStore`), written once.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hyctas_core.storage import GenerationRecord, SearchRecord, SearchState, SearchStore

__all__ = [
    "DEPLOYMENT_STATES",
    "JOB_TRANSITIONS",
    "MODEL_TRANSITIONS",
    "ApiKeyRecord",
    "DeploymentRecord",
    "JobRecord",
    "JobState",
    "ModelRecord",
    "SearchSummary",
    "Storage",
    "check_deployment_state",
    "check_page",
]


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
    # What its replicas measured: the model's time per request (``LatencyWindow.summary`` plus
    # backend, device, device class and ``at``); None until a replica has served and reported.
    serving_latency: dict[str, Any] | None = None


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


@dataclass
class SearchSummary:
    """A search as a listing shows it: the record, its job, and its progress so far.

    Built for a whole page at once (:meth:`Storage.list_search_summaries`) without loading any
    generation's algorithm state.
    """

    search: SearchRecord
    job: JobRecord | None  # the search job (``config["job_id"]``), if it still exists
    generations: int  # committed generations
    hypervolume: float | None  # of the latest generation
    front_size: int
    n_evaluated: int  # distinct archs evaluated so far
    eval_s: float  # evaluation time over all generations
    generation_s: float  # evaluation and loop time over all generations

    @property
    def owner(self) -> str | None:
        return self.search.owner


def check_page(offset: int, limit: int) -> None:
    """Raises ValueError on a negative ``offset`` or ``limit`` (every listing)."""
    if offset < 0 or limit < 0:
        raise ValueError(f"offset and limit must be >= 0, got offset={offset}, limit={limit}")


class Storage(SearchStore):
    """Everything the service persists: the searches of :class:`~hyctas_core.storage.SearchStore`,
    and jobs, models, deployments and API keys."""

    # -- searches and generations: listings -----------------------------------------------
    @abc.abstractmethod
    def list_searches(
        self, *, owner: str | None = None, state: SearchState | None = None, offset: int = 0, limit: int = 100
    ) -> tuple[list[SearchRecord], int]:
        """(page of searches ordered by id, total count matching the filters).

        ``owner=None`` lists every owner's searches.
        """

    @abc.abstractmethod
    def list_generations(self, search_id: int) -> list[GenerationRecord]:
        """All generations in order; ``algorithm_state`` may be returned empty (b"") to save I/O."""

    # -- read models (a few aggregate queries whatever the size) ----------------------------
    @abc.abstractmethod
    def list_search_summaries(
        self, *, owner: str | None = None, state: SearchState | None = None, offset: int = 0, limit: int = 100
    ) -> tuple[list[SearchSummary], int]:
        """(page of search summaries ordered by id, total count matching the filters).

        Raises: ValueError: negative ``offset`` or ``limit``.
        """

    @abc.abstractmethod
    def get_search_summary(self, search_id: int) -> SearchSummary:
        """Raises: KeyError: unknown id."""

    @abc.abstractmethod
    def job_counts(self) -> dict[JobState, int]:
        """The number of jobs in each state (every state present, 0 when none)."""

    @abc.abstractmethod
    def running_hypervolumes(self) -> dict[int, float]:
        """search id -> hypervolume of the latest generation, for RUNNING searches with one."""

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
        self,
        *,
        owner: str | None = None,
        state: JobState | None = None,
        kind: str | None = None,
        offset: int = 0,
        limit: int = 100,
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
    def record_serving_latency(self, deployment_id: int, summary: dict[str, Any]) -> None:
        """Store what a replica measured (``summary`` gains ``at``, the time it was stored); the
        newest report wins. Touches nothing else, ``updated_at`` included.

        Raises: KeyError: unknown deployment.
        """

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
        """Change what is given (``error=""`` clears it). New options or another model clear
        ``serving_latency``: it was measured on what served before.

        Raises: KeyError: unknown deployment or model. ValueError: unknown state.
        IllegalTransition: the deployment is ``deleted``.
        """

    # -- API keys ---------------------------------------------------------------------------
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
