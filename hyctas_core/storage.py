"""Persistence of searches behind one small interface (after Optuna's ``BaseStorage``).

:class:`SearchStore` is what the method itself needs: searches, their generations and
individuals, and the evaluation cache. The service's full storage (jobs, models, deployments,
API keys; :class:`services.storage.base.Storage`) extends it. Backends:
:class:`~hyctas_core.storage_memory.InMemorySearchStore` here (library use, tests) and
``SQLStorage`` over SQLite or PostgreSQL in ``services/storage``; both pass the same contract
suite (:mod:`hyctas_core.testing.storage_contract`).

The rules live here, once: the state machine, the order of generations, the reference point
set once, strict JSON. A backend implements reads and a few small hooks
(:meth:`SearchStore._insert_search`, :meth:`SearchStore._edit_search`,
:meth:`SearchStore._append_generation`).

Guarantees every backend keeps:

- :meth:`SearchStore.commit_generation` is atomic: the generation row, its individuals, the
  evaluation-cache entries and the search's ``generation`` counter are written in one
  transaction, or not at all. Generations are committed in order (0, 1, 2, ...), never twice.
- JSON payloads (configs, objectives, results) are stored as strict JSON: tuples come back as
  lists, non-string keys as strings, and NaN, infinity or an arbitrary object is refused with
  :class:`StorageError` before anything is written.
- Returned records are copies: mutating them changes nothing stored.
- Unknown ids raise ``KeyError``; illegal state transitions raise :class:`IllegalTransition`;
  a duplicate search name (per owner) raises :class:`DuplicateName`; backend failures raise
  :class:`StorageError` with a one-line message.
"""

from __future__ import annotations

import abc
import enum
import json
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

__all__ = [
    "SEARCH_TRANSITIONS",
    "DuplicateName",
    "EvaluationRecord",
    "GenerationCommit",
    "GenerationRecord",
    "IllegalTransition",
    "IndividualRecord",
    "SearchEdit",
    "SearchRecord",
    "SearchState",
    "SearchStore",
    "StorageError",
    "StorageUnavailable",
    "check_transition",
    "json_copy",
    "utcnow",
]

S = TypeVar("S", bound=enum.StrEnum)


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


def utcnow() -> datetime:
    return datetime.now(UTC)


def json_copy(value: Any, what: str) -> Any:
    """A deep copy of ``value`` through strict JSON, as a database stores it.

    Raises:
        StorageError: ``value`` is not representable in strict JSON (NaN, infinity, an object).
    """
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise StorageError(f"{what} is not JSON-serialisable: {exc}") from None


def check_transition(what: str, current: S, new: S, allowed: Mapping[S, frozenset[S]]) -> None:
    """Raises :class:`IllegalTransition` unless ``current -> new`` is in ``allowed`` (``what``: e.g. "job 3")."""
    if new not in allowed[current]:
        raise IllegalTransition(
            f"{what}: {current.value} -> {new.value} is not allowed"
            f" (allowed: {sorted(s.value for s in allowed[current]) or 'none'})"
        )


@dataclass
class GenerationCommit:
    """One generation as :meth:`SearchStore.append_generation` hands it to a backend: validated
    copies of the generation (``created_at`` set), its individuals and its evaluation-cache entries."""

    generation: GenerationRecord
    individuals: list[IndividualRecord]
    evaluations: list[EvaluationRecord]


@dataclass
class SearchEdit:
    """A search opened for writing by :meth:`SearchStore._edit_search`: the record to change in place
    (its fields are written back when the block ends without an error) and the backend's own
    transaction handle, for :meth:`SearchStore._append_generation`."""

    record: SearchRecord
    tx: Any = None


class SearchStore(abc.ABC):
    """Persists searches, their generations and individuals, and cached evaluations.

    The public methods below are the contract; the concrete ones hold the rules every backend
    shares and call the backend's hooks.
    """

    # -- backend hooks --------------------------------------------------------------------
    @abc.abstractmethod
    def _insert_search(self, name: str, owner: str | None, config: dict[str, Any], now: datetime) -> int:
        """Insert a CREATED search (``generation = -1``); its id. Raises: DuplicateName."""

    @abc.abstractmethod
    def _edit_search(self, search_id: int) -> AbstractContextManager[SearchEdit]:
        """Open search ``search_id`` for writing, locked against concurrent writers, in one transaction.

        On a normal exit the record's ``state``, ``error``, ``generation``, ``reference_point``,
        ``verification`` and ``updated_at`` are written back and the transaction commits; on an
        exception nothing is written. Raises: KeyError: unknown id.
        """

    @abc.abstractmethod
    def _append_generation(self, edit: SearchEdit, commit: GenerationCommit) -> None:
        """Insert the generation, its individuals and the evaluation-cache entries (a key already
        there keeps its first value) inside ``edit``'s transaction.

        Raises: IllegalTransition: the generation exists (a concurrent writer was first).
        """

    # -- searches -------------------------------------------------------------------------
    def create_search(self, name: str, config: dict[str, Any], *, owner: str | None = None) -> int:
        """Create a search in state CREATED with ``generation = -1``.

        Args:
            name: Unique per owner.
            config: The full search config (JSON): a run can be replayed from the store alone.
            owner: The owner, or None.

        Returns:
            The new search id.

        Raises:
            DuplicateName: ``name`` exists for ``owner``.
            StorageError: ``config`` is not JSON-serialisable; nothing is stored.
        """
        return self._insert_search(name, owner, json_copy(config, "search config"), utcnow())

    @abc.abstractmethod
    def get_search(self, search_id: int) -> SearchRecord:
        """Raises: KeyError: unknown id."""

    @abc.abstractmethod
    def find_search(self, name: str, *, owner: str | None = None) -> SearchRecord | None:
        """The search called ``name`` of ``owner`` (None: the search without owner), or None."""

    def set_search_state(self, search_id: int, state: SearchState, *, error: str | None = None) -> None:
        """Move the search to ``state``; ``error`` replaces the stored error (None clears it).

        Raises:
            KeyError: unknown id.
            IllegalTransition: not allowed by ``SEARCH_TRANSITIONS``.
        """
        state = SearchState(state)
        with self._edit_search(search_id) as edit:
            check_transition(f"search {search_id}", edit.record.state, state, SEARCH_TRANSITIONS)
            edit.record.state = state
            edit.record.error = error
            edit.record.updated_at = utcnow()

    def set_reference_point(self, search_id: int, point: list[float]) -> None:
        """Fix the hypervolume reference point, once.

        Raises:
            KeyError: unknown id.
            IllegalTransition: already set.
            StorageError: not JSON-serialisable (NaN, infinity).
        """
        values = json_copy([float(x) for x in point], "reference point")
        with self._edit_search(search_id) as edit:
            if edit.record.reference_point is not None:
                raise IllegalTransition(f"search {search_id}: the reference point is already set")
            edit.record.reference_point = values
            edit.record.updated_at = utcnow()

    def set_search_verification(self, search_id: int, verification: dict[str, Any]) -> None:
        """Replace the search's verification record (JSON: state, k, rows, rank correlations).

        Raises:
            KeyError: unknown id.
            StorageError: not JSON-serialisable (e.g. NaN).
        """
        stored = json_copy(verification, "verification")
        with self._edit_search(search_id) as edit:
            edit.record.verification = stored
            edit.record.updated_at = utcnow()

    # -- generations ----------------------------------------------------------------------
    def commit_generation(
        self,
        search_id: int,
        generation: GenerationRecord,
        individuals: list[IndividualRecord],
        evaluations: list[EvaluationRecord],
    ) -> None:
        """Atomically store one generation and advance the search's ``generation`` counter.

        One transaction: the search is locked; the generation, its individuals and the new
        evaluation-cache entries (a key already cached keeps its first value) are inserted; the
        counter moves. Any failure stores nothing.

        Raises:
            KeyError: unknown search.
            IllegalTransition: ``generation.index`` is not ``search.generation + 1`` (also when a
                concurrent writer committed it first), or the search is finished.
            ValueError: an individual belongs to another generation.
            StorageError: a payload is not JSON-serialisable.
        """
        index = generation.index
        for ind in individuals:
            if ind.generation != index:
                raise ValueError(f"individual {ind.arch_hash!r} has generation {ind.generation}, expected {index}")
        # Copy (and validate) everything before the transaction: a bad payload stores nothing.
        gen = GenerationRecord(
            index=index,
            hypervolume=float(generation.hypervolume),
            front=json_copy(list(generation.front), "generation front"),
            n_evaluated=generation.n_evaluated,
            n_new=generation.n_new,
            algorithm_state=bytes(generation.algorithm_state),
            timings=json_copy(dict(generation.timings), "generation timings"),
        )
        inds = [
            IndividualRecord(
                generation=index,
                arch_hash=ind.arch_hash,
                arch=json_copy(ind.arch, f"arch of individual {ind.arch_hash!r}"),
                num_branches=ind.num_branches,
                objectives=json_copy(ind.objectives, f"objectives of individual {ind.arch_hash!r}"),
                status=ind.status,
            )
            for ind in individuals
        ]
        evals = [
            EvaluationRecord(ev.cache_key, ev.arch_hash, json_copy(ev.result, f"evaluation of {ev.arch_hash!r}"))
            for ev in evaluations
        ]
        with self._edit_search(search_id) as edit:
            search = edit.record
            if search.state.is_finished():
                raise IllegalTransition(f"search {search_id} is {search.state.value}: cannot commit a generation")
            if index != search.generation + 1:
                raise IllegalTransition(
                    f"search {search_id}: generation {index} cannot follow {search.generation}"
                    f" (expected {search.generation + 1})"
                )
            gen.created_at = utcnow()
            self._append_generation(edit, GenerationCommit(gen, inds, evals))
            search.generation = index
            search.updated_at = gen.created_at

    @abc.abstractmethod
    def get_generation(self, search_id: int, index: int) -> GenerationRecord:
        """Raises: KeyError: unknown search or generation."""

    @abc.abstractmethod
    def list_individuals(self, search_id: int, *, generation: int | None = None) -> list[IndividualRecord]:
        """Individuals of one generation, or of all (ordered by generation, then insertion)."""

    # -- evaluation cache -----------------------------------------------------------------
    @abc.abstractmethod
    def get_evaluations(self, cache_key: str, arch_hashes: list[str]) -> dict[str, dict[str, Any]]:
        """Cached results among ``arch_hashes`` (missing ones are absent from the dict)."""

    # -- convenience (concrete; a backend may answer them in fewer queries) ----------------
    def latest_generation(self, search_id: int) -> GenerationRecord | None:
        """The last committed generation (with its algorithm state), or None."""
        search = self.get_search(search_id)
        return None if search.generation < 0 else self.get_generation(search_id, search.generation)

    def latest_front(self, search_id: int) -> tuple[GenerationRecord | None, list[IndividualRecord]]:
        """The last committed generation (its ``algorithm_state`` may be empty) and its front's
        individuals, in front order; (None, []) before the first generation.

        Raises: KeyError: unknown search.
        """
        latest = self.latest_generation(search_id)
        if latest is None:
            return None, []
        first: dict[str, IndividualRecord] = {}
        for ind in self.list_individuals(search_id):
            first.setdefault(ind.arch_hash, ind)
        return latest, [first[h] for h in latest.front if h in first]

    def pareto_front(self, search_id: int) -> list[IndividualRecord]:
        """The archs on the last generation's front (over everything evaluated so far), in front order.

        Raises: KeyError: unknown search.
        """
        return self.latest_front(search_id)[1]
