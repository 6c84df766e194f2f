"""``InMemorySearchStore``: the :class:`~hyctas_core.storage.SearchStore` kept in process memory.

For library use and tests (a search without a database); everything is lost when the process
ends. The rules are the base class's; this module only keeps the records, under one lock, and
copies them on the way out.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from hyctas_core.storage import (
    DuplicateName,
    GenerationCommit,
    GenerationRecord,
    IndividualRecord,
    SearchEdit,
    SearchRecord,
    SearchState,
    SearchStore,
)

__all__ = ["InMemorySearchStore"]


@dataclass
class _SearchData:
    record: SearchRecord
    generations: list[GenerationRecord] = field(default_factory=list)  # position == index
    individuals: list[IndividualRecord] = field(default_factory=list)  # in commit order


class InMemorySearchStore(SearchStore):
    """A thread-safe, in-process :class:`~hyctas_core.storage.SearchStore`."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._searches: dict[int, _SearchData] = {}
        self._evaluations: dict[tuple[str, str], dict[str, Any]] = {}
        self._next_id = 1

    def _data(self, search_id: int) -> _SearchData:
        try:
            return self._searches[search_id]
        except KeyError:
            raise KeyError(f"unknown search id {search_id}") from None

    # -- hooks ----------------------------------------------------------------------------
    def _insert_search(self, name: str, owner: str | None, config: dict[str, Any], now: datetime) -> int:
        with self._lock:
            if self.find_search(name, owner=owner) is not None:
                raise DuplicateName(f"a search named {name!r} already exists for owner {owner!r}")
            search_id, self._next_id = self._next_id, self._next_id + 1
            record = SearchRecord(search_id, name, owner, config, SearchState.CREATED, -1, None, None, now, now)
            self._searches[search_id] = _SearchData(record)
            return search_id

    @contextmanager
    def _edit_search(self, search_id: int) -> Iterator[SearchEdit]:
        with self._lock:
            data = self._data(search_id)
            edit = SearchEdit(copy.deepcopy(data.record), tx=data)
            yield edit
            data.record = edit.record

    def _append_generation(self, edit: SearchEdit, commit: GenerationCommit) -> None:
        data: _SearchData = edit.tx
        data.generations.append(commit.generation)
        data.individuals.extend(commit.individuals)
        for ev in commit.evaluations:
            self._evaluations.setdefault((ev.cache_key, ev.arch_hash), ev.result)

    # -- reads ----------------------------------------------------------------------------
    def get_search(self, search_id: int) -> SearchRecord:
        with self._lock:
            return copy.deepcopy(self._data(search_id).record)

    def find_search(self, name: str, *, owner: str | None = None) -> SearchRecord | None:
        with self._lock:
            for data in self._searches.values():
                if data.record.name == name and data.record.owner == owner:
                    return copy.deepcopy(data.record)
            return None

    def get_generation(self, search_id: int, index: int) -> GenerationRecord:
        with self._lock:
            data = self._data(search_id)
            if not 0 <= index < len(data.generations):
                raise KeyError(f"search {search_id} has no generation {index}")
            return copy.deepcopy(data.generations[index])

    def list_individuals(self, search_id: int, *, generation: int | None = None) -> list[IndividualRecord]:
        with self._lock:
            data = self._data(search_id)
            return copy.deepcopy([i for i in data.individuals if generation is None or i.generation == generation])

    def get_evaluations(self, cache_key: str, arch_hashes: list[str]) -> dict[str, dict[str, Any]]:
        with self._lock:
            found = {h: self._evaluations[(cache_key, h)] for h in arch_hashes if (cache_key, h) in self._evaluations}
            return copy.deepcopy(found)
