"""Test helpers shipped with the library (need pytest): the storage contract suite.

Subclass :class:`SearchStoreContract` with a ``storage`` fixture to check a
:class:`~hyctas_core.storage.SearchStore`.
"""

from __future__ import annotations

from hyctas_core.testing.storage_contract import (
    SearchStoreContract,
    commit_next,
    make_evaluations,
    make_generation,
    make_individuals,
)

__all__ = ["SearchStoreContract", "commit_next", "make_evaluations", "make_generation", "make_individuals"]
