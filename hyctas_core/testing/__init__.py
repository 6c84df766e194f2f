"""Test helpers shipped with the library (need pytest): the storage contract suite.

Import :class:`StorageContract` from :mod:`hyctas_core.testing.storage_contract` (or here) and
subclass it with a ``storage`` fixture to check a :class:`~hyctas_core.storage.SearchStorage`.
"""

from __future__ import annotations

from hyctas_core.testing.storage_contract import (
    StorageContract,
    commit_next,
    make_evaluations,
    make_generation,
    make_individuals,
)

__all__ = ["StorageContract", "commit_next", "make_evaluations", "make_generation", "make_individuals"]
