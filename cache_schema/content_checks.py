"""The content invariants of a cache's row groups, vectorised with numpy over a whole row group.

Checked: ids inside the vocabularies, positions inside their sequences, chunk bounds, finite and sorted
top-k values, probability mass ≤ 1 (v1) or the k policy and log tails (v2), timestep range, per-item list
lengths and CompDemo groups. Each problem names the shard, the row (0-based from ``base``) and the field; a
check that fails on many rows reports the first few and a count.

The checks run on the columns the table holds: ``tide-cache validate`` reads every column, so it runs them
all; training reads only the columns it trains on (:mod:`cache_schema.group_guard`), and a check whose
columns it did not read is skipped there, since nothing of those columns reaches the student.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from cache_schema.manifest import MANIFEST_FILE, Manifest

# Slack on Σ exp(v/T − log Z_T) ≤ 1 and on log-probs ≤ 0 (format v1, by value_dtype), and on the stored log
# tails and gold log-probs (format v2, by encoding): the stored numbers are rounded.
PROBABILITY_TOLERANCE = {"float16": 1e-2, "float32": 1e-3}
ENCODING_TOLERANCE = {"rank24-delta8": 1e-2, "float32": 1e-4}


def tolerance(manifest: Manifest) -> float:
    """The rounding slack of a cache's stored target numbers."""
    targets = manifest.targets
    if targets.sparse is not None:
        return ENCODING_TOLERANCE[targets.sparse.encoding.name]
    return PROBABILITY_TOLERANCE[targets.value_dtype or "float32"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a cache. ``row`` is 0-based within ``shard``."""

    message: str
    shard: str | None = None
    row: int | None = None
    field: str | None = None

    def __str__(self) -> str:
        where = [self.shard or MANIFEST_FILE]
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.field is not None:
            where.append(f"field {self.field}")
        return f"{': '.join(where)}: {self.message}"


# ---------------------------------------------------------------------------------------------------------
# Problem collection with a per-check cap
# ---------------------------------------------------------------------------------------------------------


class Collector:
    def __init__(self, shard: str, max_rows: int) -> None:
        self.shard = shard
        self.max_rows = max_rows
        self.problems: list[Problem] = []
        self._overflow: dict[tuple[str, str], int] = {}
        self._reported: dict[tuple[str, str], int] = {}

    def add(self, message: str, *, field: str | None = None, row: int | None = None) -> None:
        self.problems.append(Problem(message, self.shard, row, field))

    def rows(
        self,
        field: str,
        check: str,
        bad_rows: np.ndarray,
        base: int,
        detail: Callable[[int], str] | None = None,
    ) -> None:
        """Report local rows ``bad_rows`` (unique, ascending) of a row group starting at shard row ``base``."""
        if bad_rows.size == 0:
            return
        key = (field, check)
        done = self._reported.get(key, 0)
        take = max(0, min(self.max_rows - done, bad_rows.size))
        for local in bad_rows[:take].tolist():
            message = check if detail is None else f"{check} ({detail(local)})"
            self.add(message, field=field, row=base + local)
        self._reported[key] = done + take
        if bad_rows.size > take:
            self._overflow[key] = self._overflow.get(key, 0) + int(bad_rows.size - take)

    def finish(self) -> list[Problem]:
        for (field, check), count in self._overflow.items():
            self.add(f"{check} — and {count} more rows", field=field)
        return self.problems


# ---------------------------------------------------------------------------------------------------------
# Column access
# ---------------------------------------------------------------------------------------------------------


@dataclass
class ColumnList:
    """A list column of a row group as flat numpy values, row offsets, lengths and each value's row."""

    values: np.ndarray  # (N,) or (N, w)
    offsets: np.ndarray  # (B + 1,) int64, starting at 0
    lengths: np.ndarray  # (B,)
    row_of: np.ndarray  # (N,) row index of each value


def _array(table: pa.Table, name: str) -> pa.Array:
    column = table.column(name)
    return column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)


def column_list(table: pa.Table, name: str) -> ColumnList:
    array = _array(table, name)
    offsets = array.offsets.to_numpy().astype(np.int64)
    offsets -= offsets[0]
    flat = array.flatten()
    if pa.types.is_fixed_size_list(flat.type):
        values = flat.flatten().to_numpy(zero_copy_only=False).reshape(-1, flat.type.list_size)
    else:
        values = flat.to_numpy(zero_copy_only=False)
    lengths = np.diff(offsets)
    return ColumnList(values, offsets, lengths, np.repeat(np.arange(len(lengths)), lengths))


def scalar_column(table: pa.Table, name: str) -> np.ndarray:
    return _array(table, name).to_numpy(zero_copy_only=False)


def first_bad(bad: np.ndarray, row_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique rows holding a bad element, and the flat index of the first bad element of each."""
    index = np.flatnonzero(bad)
    rows, first = np.unique(row_of[index], return_index=True)
    return rows, index[first]


# ---------------------------------------------------------------------------------------------------------
# Content checks
# ---------------------------------------------------------------------------------------------------------


class GroupChecker:
    """Content invariants of one row group; rows are reported relative to the shard."""

    def __init__(self, manifest: Manifest, table: pa.Table, base: int, out: Collector) -> None:
        self.m = manifest
        self.table = table
        self.base = base
        self.out = out
        self.rows = table.num_rows
        self.tol = tolerance(manifest)
        self.names = frozenset(table.schema.names)

    def has(self, *names: str) -> bool:
        """Whether the row group holds every column ``names`` (training reads a subset of the columns)."""
        return self.names.issuperset(names)

    # -- generic element checks -----------------------------------------------------------------------------

    def in_range(self, name: str, col: ColumnList, upper: np.ndarray | int, what: str) -> None:
        """Every element in [0, upper), ``upper`` an int or a per-row array; 2-D values are checked per item."""
        if np.isscalar(upper):
            limit = upper
        else:
            limit = np.asarray(upper)[col.row_of]
            if col.values.ndim == 2:
                limit = limit[:, None]
        bad = (col.values < 0) | (col.values >= limit)
        item_bad = bad.any(axis=1) if bad.ndim == 2 else bad
        rows, first = first_bad(item_bad, col.row_of)

        def detail(local: int) -> str:
            i = first[np.searchsorted(rows, local)]
            value = col.values[i][np.argmax(bad[i])] if bad.ndim == 2 else col.values[i]
            bound = upper if np.isscalar(upper) else int(np.asarray(upper)[local])
            return f"item {i - col.offsets[local]} holds {value}, {what} is {bound}"

        self.out.rows(name, f"values outside [0, {what})", rows, self.base, detail)

    def ascending(self, name: str, col: ColumnList) -> None:
        """Strictly ascending within each row."""
        if col.values.size < 2:
            return
        same_row = col.row_of[1:] == col.row_of[:-1]
        bad = np.zeros(col.values.shape[0], dtype=bool)
        bad[1:] = same_row & ~(col.values[1:] > col.values[:-1])
        rows, first = first_bad(bad, col.row_of)
        self.out.rows(
            name,
            "positions are not strictly ascending",
            rows,
            self.base,
            lambda local: f"item {first[np.searchsorted(rows, local)] - col.offsets[local]}",
        )

    def same_length(self, name: str, col: ColumnList, expected: np.ndarray, what: str) -> np.ndarray:
        """Row lengths equal to ``expected``; returns the boolean mask of good rows."""
        good = col.lengths == expected
        rows = np.flatnonzero(~good)
        self.out.rows(
            name,
            f"length differs from {what}",
            rows,
            self.base,
            lambda local: f"{col.lengths[local]} vs {expected[local]}",
        )
        return good

    def member_of(self, name: str, col: ColumnList, pool: ColumnList, what: str) -> None:
        """Every element of a row is one of that row's ``pool`` elements."""
        if col.values.size == 0:
            return
        width = int(max(col.values.max(initial=0), pool.values.max(initial=0))) + 1
        keys = col.row_of.astype(np.int64) * width + col.values
        pool_keys = pool.row_of.astype(np.int64) * width + pool.values
        bad = ~np.isin(keys, pool_keys)
        rows, first = first_bad(bad, col.row_of)
        self.out.rows(
            name,
            f"positions not in {what}",
            rows,
            self.base,
            lambda local: f"position {col.values[first[np.searchsorted(rows, local)]]}",
        )

    # -- common columns -------------------------------------------------------------------------------------

    def common(self) -> dict[str, ColumnList]:
        """The columns every cache has; returns the list columns it decoded (``teacher_input_ids`` only
        when the row group holds it)."""
        m, out, base = self.m, self.out, self.base
        if self.has("sample_key"):
            key = scalar_column(self.table, "sample_key")
            out.rows(
                "sample_key", "sample_key is negative (must be in [0, 2**63))", np.flatnonzero(key < 0), base
            )
        replica = scalar_column(self.table, "replica")
        out.rows(
            "replica",
            f"replica outside [0, {m.noise.replicas}) (noise.replicas)",
            np.flatnonzero((replica < 0) | (replica >= m.noise.replicas)),
            base,
            lambda local: f"found {replica[local]}",
        )
        t = scalar_column(self.table, "t")
        out.rows(
            "t",
            "t outside (0, 1]",
            np.flatnonzero(~((t > 0) & (t <= 1))),
            base,
            lambda local: f"found {t[local]!r}",
        )

        ids = column_list(self.table, "input_ids")
        seq_len = ids.lengths
        self.in_range("input_ids", ids, m.student.vocab_size, "student.vocab_size")
        block, max_len = m.student.block_size, m.student.max_length
        out.rows(
            "input_ids",
            f"length is not a multiple of student.block_size={block} or exceeds student.max_length={max_len}",
            np.flatnonzero((seq_len % block != 0) | (seq_len > max_len)),
            base,
            lambda local: f"length {seq_len[local]}",
        )
        maskable = column_list(self.table, "maskable")
        maskable_ok = self.same_length("maskable", maskable, seq_len, "len(input_ids)")

        found = {"input_ids": ids, "maskable": maskable}
        if self.has("teacher_input_ids"):
            found["teacher_input_ids"] = column_list(self.table, "teacher_input_ids")
            self.in_range("teacher_input_ids", found["teacher_input_ids"], m.teacher.vocab_size,
                          "teacher.vocab_size")

        masked = column_list(self.table, "masked_positions")
        self.in_range("masked_positions", masked, seq_len, "len(input_ids)")
        self.ascending("masked_positions", masked)
        # Masked positions must be maskable (only checked on rows whose maskable column is well formed).
        inside = (masked.values >= 0) & (masked.values < seq_len[masked.row_of]) & maskable_ok[masked.row_of]
        flat = maskable.offsets[masked.row_of[inside]] + masked.values[inside]
        not_maskable = np.zeros(masked.values.shape[0], dtype=bool)
        not_maskable[np.flatnonzero(inside)] = ~maskable.values[flat]
        rows, first = first_bad(not_maskable, masked.row_of)
        out.rows(
            "masked_positions",
            "masked position is not maskable",
            rows,
            base,
            lambda local: f"position {masked.values[first[np.searchsorted(rows, local)]]}",
        )
        found["masked_positions"] = masked
        return found

    def compdemo_group(self, items: np.ndarray) -> None:
        if not self.has("compdemo_group"):
            return
        group = column_list(self.table, "compdemo_group")
        if "compdemo" in self.m.targets.passes:
            self.same_length("compdemo_group", group, items, "the number of target items")
        else:
            self.same_length("compdemo_group", group, np.zeros_like(items), "0 (no compdemo pass stored)")
        rows = np.unique(group.row_of[group.values > 1])
        self.out.rows("compdemo_group", "values other than 0 (group A) and 1 (group B)", rows, self.base)
