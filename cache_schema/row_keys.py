"""The row uniqueness invariant: no two rows of a cache share (sample_id, replica).

A build writes every sample it keeps once per noise replica. Rows may share a ``sample_key`` on purpose
(``--duplicates keep`` keeps conversations that repeat an earlier one, counted in the manifest's
``build.stats.data_changes.duplicates_kept``), but each kept row has its own ``sample_id``; so the check keys
on (sample_id, replica), which holds for every build. A repeat across row groups and shards is found through
:class:`SeenKeys`, which the caller keeps for the whole cache (validate) or run (training).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from cache_schema.content_checks import GroupChecker, scalar_column

__all__ = ["ROW_KEY_COLUMNS", "SeenKeys", "check_unique_rows", "row_keys"]

ROW_KEY_COLUMNS = ("sample_id", "replica")


def row_keys(table: pa.Table) -> np.ndarray:
    """(B,) uint64 hashes of each row's (sample_id, replica). Two distinct keys collide with probability
    2**-64 per pair (about 3e-8 for a million rows), which would report a repeat that is not one."""
    ids = pd.util.hash_array(scalar_column(table, "sample_id").astype(object))
    replicas = pd.util.hash_array(scalar_column(table, "replica").astype(np.uint64))
    return ids ^ (replicas * np.uint64(0x9E3779B97F4A7C15))  # odd multiplier: a bijection, keeps bits mixed


class SeenKeys:
    """The row keys checked so far: a few sorted arrays whose sizes at least halve along the list, merged
    like a binary counter, so adding n keys costs O(n log n) in all and a lookup O(log² n); 8 bytes a row
    (a Python set would take about 60)."""

    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(run.size for run in self._runs)

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """(n,) bool: which of ``keys`` were added before."""
        found = np.zeros(keys.shape[0], dtype=bool)
        for run in self._runs:
            where = np.minimum(np.searchsorted(run, keys), run.size - 1)
            found |= run[where] == keys
        return found

    def add(self, keys: np.ndarray) -> None:
        run = np.unique(keys)
        if not run.size:
            return
        while self._runs and self._runs[-1].size <= run.size:
            run = np.union1d(self._runs.pop(), run)
        self._runs.append(run)


def check_unique_rows(check: GroupChecker, seen: SeenKeys) -> np.ndarray:
    """Report each row of the group that repeats the (sample_id, replica) of an earlier row of the group or of
    a row in ``seen``; returns the group's keys (the caller adds them to ``seen``)."""
    keys = row_keys(check.table)
    repeat = seen.contains(keys)
    _, first = np.unique(keys, return_index=True)
    within = np.ones(keys.shape[0], dtype=bool)
    within[first] = False
    ids = scalar_column(check.table, "sample_id")
    replicas = scalar_column(check.table, "replica")
    check.out.rows("sample_id", "another row has the same (sample_id, replica); a build writes each sample once "
                   "per replica", np.flatnonzero(repeat | within), check.base,
                   lambda local: f"sample_id {ids[local]!r}, replica {replicas[local]}")
    return keys
