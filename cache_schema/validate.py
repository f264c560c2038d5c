"""``validate_cache``: every way a cache can disagree with its manifest or with the format's invariants.

Checks, in order: the manifest (format, version, fields); per shard its presence, size, SHA-256, Parquet
readability, row count and schema; unlisted shard files; then content invariants on every row group (ids
inside the vocabularies, positions inside their sequences, chunk bounds, sorted top-k values, probability
mass ≤ 1, timestep range, per-item list lengths, CompDemo groups) and the manifest's target counts.

Content checks are vectorised with numpy over a whole row group. Each problem names the shard, the row
(0-based within the shard) and the field; a check that fails on many rows reports the first few and a count.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cache_schema.errors import ManifestError
from cache_schema.files import sha256_of_file
from cache_schema.manifest import MANIFEST_FILE, Manifest
from cache_schema.schemas import (
    PIPELINE_SHARED,
    chunk_logprob_column,
    gold_logprob_column,
    log_partitions_column,
    schemas_match,
    topk_ids_column,
    topk_values_column,
)

__all__ = ["Problem", "validate_cache", "PROBABILITY_TOLERANCE"]

# Slack on Σ exp(v/T − log Z_T) ≤ 1 and on log-probs ≤ 0: the stored values are rounded to value_dtype.
PROBABILITY_TOLERANCE = {"float16": 1e-2, "float32": 1e-3}
_FIX = "rebuild this shard with `tide-cache build` or restore it from a good copy"


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


class _Collector:
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
class _List:
    values: np.ndarray  # (N,) or (N, w)
    offsets: np.ndarray  # (B + 1,) int64, starting at 0
    lengths: np.ndarray  # (B,)
    row_of: np.ndarray  # (N,) row index of each value


def _array(table: pa.Table, name: str) -> pa.Array:
    column = table.column(name)
    return column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)


def _list(table: pa.Table, name: str) -> _List:
    array = _array(table, name)
    offsets = array.offsets.to_numpy().astype(np.int64)
    offsets -= offsets[0]
    flat = array.flatten()
    if pa.types.is_fixed_size_list(flat.type):
        values = flat.flatten().to_numpy(zero_copy_only=False).reshape(-1, flat.type.list_size)
    else:
        values = flat.to_numpy(zero_copy_only=False)
    lengths = np.diff(offsets)
    return _List(values, offsets, lengths, np.repeat(np.arange(len(lengths)), lengths))


def _scalar(table: pa.Table, name: str) -> np.ndarray:
    return _array(table, name).to_numpy(zero_copy_only=False)


def _first_bad(bad: np.ndarray, row_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique rows holding a bad element, and the flat index of the first bad element of each."""
    index = np.flatnonzero(bad)
    rows, first = np.unique(row_of[index], return_index=True)
    return rows, index[first]


# ---------------------------------------------------------------------------------------------------------
# Content checks
# ---------------------------------------------------------------------------------------------------------


class _GroupChecker:
    """Content invariants of one row group; rows are reported relative to the shard."""

    def __init__(self, manifest: Manifest, table: pa.Table, base: int, out: _Collector) -> None:
        self.m = manifest
        self.table = table
        self.base = base
        self.out = out
        self.rows = table.num_rows
        self.tol = PROBABILITY_TOLERANCE[manifest.targets.value_dtype]

    # -- generic element checks -----------------------------------------------------------------------------

    def in_range(self, name: str, col: _List, upper: np.ndarray | int, what: str) -> None:
        """Every element in [0, upper), ``upper`` an int or a per-row array; 2-D values are checked per item."""
        if np.isscalar(upper):
            limit = upper
        else:
            limit = np.asarray(upper)[col.row_of]
            if col.values.ndim == 2:
                limit = limit[:, None]
        bad = (col.values < 0) | (col.values >= limit)
        item_bad = bad.any(axis=1) if bad.ndim == 2 else bad
        rows, first = _first_bad(item_bad, col.row_of)

        def detail(local: int) -> str:
            i = first[np.searchsorted(rows, local)]
            value = col.values[i][np.argmax(bad[i])] if bad.ndim == 2 else col.values[i]
            bound = upper if np.isscalar(upper) else int(np.asarray(upper)[local])
            return f"item {i - col.offsets[local]} holds {value}, {what} is {bound}"

        self.out.rows(name, f"values outside [0, {what})", rows, self.base, detail)

    def ascending(self, name: str, col: _List) -> None:
        """Strictly ascending within each row."""
        if col.values.size < 2:
            return
        same_row = col.row_of[1:] == col.row_of[:-1]
        bad = np.zeros(col.values.shape[0], dtype=bool)
        bad[1:] = same_row & ~(col.values[1:] > col.values[:-1])
        rows, first = _first_bad(bad, col.row_of)
        self.out.rows(
            name,
            "positions are not strictly ascending",
            rows,
            self.base,
            lambda local: f"item {first[np.searchsorted(rows, local)] - col.offsets[local]}",
        )

    def same_length(self, name: str, col: _List, expected: np.ndarray, what: str) -> np.ndarray:
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

    def member_of(self, name: str, col: _List, pool: _List, what: str) -> None:
        """Every element of a row is one of that row's ``pool`` elements."""
        if col.values.size == 0:
            return
        width = int(max(col.values.max(initial=0), pool.values.max(initial=0))) + 1
        keys = col.row_of.astype(np.int64) * width + col.values
        pool_keys = pool.row_of.astype(np.int64) * width + pool.values
        bad = ~np.isin(keys, pool_keys)
        rows, first = _first_bad(bad, col.row_of)
        self.out.rows(
            name,
            f"positions not in {what}",
            rows,
            self.base,
            lambda local: f"position {col.values[first[np.searchsorted(rows, local)]]}",
        )

    # -- common columns -------------------------------------------------------------------------------------

    def common(self) -> dict[str, _List]:
        m, out, base = self.m, self.out, self.base
        key = _scalar(self.table, "sample_key")
        out.rows(
            "sample_key", "sample_key is negative (must be in [0, 2**63))", np.flatnonzero(key < 0), base
        )
        replica = _scalar(self.table, "replica")
        out.rows(
            "replica",
            f"replica outside [0, {m.noise.replicas}) (noise.replicas)",
            np.flatnonzero((replica < 0) | (replica >= m.noise.replicas)),
            base,
            lambda local: f"found {replica[local]}",
        )
        t = _scalar(self.table, "t")
        out.rows(
            "t",
            "t outside (0, 1]",
            np.flatnonzero(~((t > 0) & (t <= 1))),
            base,
            lambda local: f"found {t[local]!r}",
        )

        ids = _list(self.table, "input_ids")
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
        maskable = _list(self.table, "maskable")
        maskable_ok = self.same_length("maskable", maskable, seq_len, "len(input_ids)")

        teacher = _list(self.table, "teacher_input_ids")
        self.in_range("teacher_input_ids", teacher, m.teacher.vocab_size, "teacher.vocab_size")

        masked = _list(self.table, "masked_positions")
        self.in_range("masked_positions", masked, seq_len, "len(input_ids)")
        self.ascending("masked_positions", masked)
        # Masked positions must be maskable (only checked on rows whose maskable column is well formed).
        inside = (masked.values >= 0) & (masked.values < seq_len[masked.row_of]) & maskable_ok[masked.row_of]
        flat = maskable.offsets[masked.row_of[inside]] + masked.values[inside]
        not_maskable = np.zeros(masked.values.shape[0], dtype=bool)
        not_maskable[np.flatnonzero(inside)] = ~maskable.values[flat]
        rows, first = _first_bad(not_maskable, masked.row_of)
        out.rows(
            "masked_positions",
            "masked position is not maskable",
            rows,
            base,
            lambda local: f"position {masked.values[first[np.searchsorted(rows, local)]]}",
        )
        return {
            "input_ids": ids,
            "maskable": maskable,
            "teacher_input_ids": teacher,
            "masked_positions": masked,
        }

    def compdemo_group(self, items: np.ndarray) -> None:
        group = _list(self.table, "compdemo_group")
        if "compdemo" in self.m.targets.passes:
            self.same_length("compdemo_group", group, items, "the number of target items")
        else:
            self.same_length("compdemo_group", group, np.zeros_like(items), "0 (no compdemo pass stored)")
        rows = np.unique(group.row_of[group.values > 1])
        self.out.rows("compdemo_group", "values other than 0 (group A) and 1 (group B)", rows, self.base)

    # -- pipeline B -----------------------------------------------------------------------------------------

    def shared(self, cols: dict[str, _List]) -> int:
        ids, teacher, masked = cols["input_ids"], cols["teacher_input_ids"], cols["masked_positions"]
        targets = _list(self.table, "target_positions")
        teacher_targets = _list(self.table, "target_teacher_positions")
        items = targets.lengths
        self.in_range("target_positions", targets, ids.lengths, "len(input_ids)")
        self.ascending("target_positions", targets)
        self.member_of("target_positions", targets, masked, "masked_positions")
        pairs_ok = self.same_length(
            "target_teacher_positions", teacher_targets, items, "len(target_positions)"
        )
        self.in_range("target_teacher_positions", teacher_targets, teacher.lengths, "len(teacher_input_ids)")
        self.compdemo_group(items)

        # Gold ids at the target positions (-1 where the position is out of range).
        row_of = targets.row_of
        s_ok = (targets.values >= 0) & (targets.values < ids.lengths[row_of])
        gold = np.full(targets.values.shape[0], -1, dtype=np.int64)
        gold[s_ok] = ids.values[ids.offsets[row_of[s_ok]] + targets.values[s_ok]]
        if pairs_ok.all():
            # Aligned pairs carry the same token id on both sides (shared vocabulary).
            t_ok = (teacher_targets.values >= 0) & (teacher_targets.values < teacher.lengths[row_of])
            both = s_ok & t_ok
            teacher_gold = np.full_like(gold, -1)
            teacher_gold[both] = teacher.values[teacher.offsets[row_of[both]] + teacher_targets.values[both]]
            rows, first = _first_bad(both & (gold != teacher_gold), row_of)

            def detail(local: int) -> str:
                i = first[np.searchsorted(rows, local)]
                return f"student id {gold[i]} vs teacher id {teacher_gold[i]}"

            self.out.rows(
                "target_teacher_positions",
                "aligned student and teacher tokens differ",
                rows,
                self.base,
                detail,
            )
        for pass_name in self.m.targets.passes:
            self.shared_pass(pass_name, items, gold)
        return int(items.sum())

    def shared_pass(self, pass_name: str, items: np.ndarray, gold: np.ndarray) -> None:
        names = (
            topk_ids_column(pass_name),
            topk_values_column(pass_name),
            log_partitions_column(pass_name),
            gold_logprob_column(pass_name),
        )
        lists = [_list(self.table, n) for n in names]
        lengths_ok = [
            self.same_length(n, col, items, "len(target_positions)").all()
            for n, col in zip(names, lists, strict=True)
        ]
        top_ids, top_values, log_z, gold_lp = lists
        self.in_range(names[0], top_ids, int(self.m.teacher.shared_vocab_size), "teacher.shared_vocab_size")

        values = top_values.values.astype(np.float64)
        row_of = top_values.row_of
        unsorted = np.isnan(values).any(axis=1) | (np.diff(values, axis=1) > 0).any(axis=1)
        self.out.rows(
            names[1], "top-k values are not sorted descending", np.unique(row_of[unsorted]), self.base
        )
        if values.shape[1]:
            rows, first = _first_bad(~(np.abs(values[:, 0]) <= self.tol), row_of)
            self.out.rows(
                names[1],
                "first top-k value is not 0 (values are logits minus the row max)",
                rows,
                self.base,
                lambda local: f"found {values[first[np.searchsorted(rows, local)], 0]}",
            )
        logz = log_z.values.astype(np.float64)
        nonfinite = ~np.isfinite(logz).all(axis=1)
        self.out.rows(
            names[2], "log-partitions are not finite", np.unique(log_z.row_of[nonfinite]), self.base
        )
        if lengths_ok[1] and lengths_ok[2] and values.shape[0]:
            temperatures = np.asarray(self.m.targets.temperatures, dtype=np.float64)
            with np.errstate(over="ignore", invalid="ignore"):
                mass = np.exp(values[:, None, :] / temperatures[None, :, None] - logz[:, :, None]).sum(axis=2)
            mass_rows, mass_first = _first_bad(~(mass <= 1.0 + self.tol).all(axis=1), row_of)
            self.out.rows(
                names[2],
                f"top-k probability mass exceeds 1 (+{self.tol}) at some temperature",
                mass_rows,
                self.base,
                lambda local: f"mass {mass[mass_first[np.searchsorted(mass_rows, local)]].max():.6f}",
            )
        gold_values = gold_lp.values.astype(np.float64)
        rows, first = _first_bad(gold_values > self.tol, gold_lp.row_of)
        self.out.rows(
            names[3],
            "gold log-prob is positive",
            rows,
            self.base,
            lambda local: f"found {gold_values[first[np.searchsorted(rows, local)]]}",
        )
        if lengths_ok[3]:
            shared_vocab = int(self.m.teacher.shared_vocab_size)
            unexplained = np.isnan(gold_values) & (gold >= 0) & (gold < shared_vocab)
            self.out.rows(
                names[3],
                "gold log-prob is NaN although the gold id is inside the shared vocabulary",
                np.unique(gold_lp.row_of[unexplained]),
                self.base,
            )

    # -- pipeline A -----------------------------------------------------------------------------------------

    def cross(self, cols: dict[str, _List]) -> int:
        ids, teacher, masked = cols["input_ids"], cols["teacher_input_ids"], cols["masked_positions"]
        s_start = _list(self.table, "chunk_student_start")
        others = {
            n: _list(self.table, n)
            for n in (
                "chunk_student_end",
                "chunk_teacher_start",
                "chunk_teacher_end",
                "chunk_masked",
                "chunk_in_prompt",
            )
        }
        items = s_start.lengths
        aligned = all(
            self.same_length(n, col, items, "len(chunk_student_start)").all() for n, col in others.items()
        )
        self.compdemo_group(items)
        if not aligned:
            return int(
                np.count_nonzero(others["chunk_masked"].values)
            )  # chunk columns disagree: reported above
        chunk_row = s_start.row_of
        flags = others["chunk_masked"].values.astype(bool)

        def bounds(side: str, lo: np.ndarray, hi: np.ndarray, length: np.ndarray, what: str) -> np.ndarray:
            bad = (lo < 0) | (hi <= lo) | (hi > length[chunk_row])
            rows, first = _first_bad(bad, chunk_row)

            def detail(local: int) -> str:
                i = first[np.searchsorted(rows, local)]
                return f"chunk {i - s_start.offsets[local]}: [{lo[i]}, {hi[i]})"

            self.out.rows(
                f"chunk_{side}_start/end",
                f"chunk bounds not 0 <= start < end <= {what}",
                rows,
                self.base,
                detail,
            )
            return ~bad

        s_ok = bounds(
            "student", s_start.values, others["chunk_student_end"].values, ids.lengths, "len(input_ids)"
        )
        bounds(
            "teacher",
            others["chunk_teacher_start"].values,
            others["chunk_teacher_end"].values,
            teacher.lengths,
            "len(teacher_input_ids)",
        )
        prompt = others["chunk_in_prompt"].values.astype(bool)
        self.out.rows(
            "chunk_masked",
            "a prompt chunk is masked (prompt tokens are never maskable)",
            np.unique(chunk_row[flags & prompt]),
            self.base,
        )

        # Chunk consistency between chunk_masked and masked_positions.
        position_ok = (masked.values >= 0) & (masked.values < ids.lengths[masked.row_of])
        is_masked = np.zeros(ids.values.shape[0], dtype=bool)
        is_masked[ids.offsets[masked.row_of[position_ok]] + masked.values[position_ok]] = True
        prefix = np.concatenate([[0], np.cumsum(is_masked)])
        where = np.flatnonzero(s_ok)
        start = ids.offsets[chunk_row[where]] + s_start.values[where]
        stop = ids.offsets[chunk_row[where]] + others["chunk_student_end"].values[where]
        count = prefix[stop] - prefix[start]
        if self.m.noise.chunk_consistent:
            bad_items = np.where(flags[where], count != stop - start, count != 0)
            check = "chunk_masked disagrees with masked_positions (a chunk is fully masked or not at all)"
        else:
            bad_items = flags[where] != (count > 0)
            check = "chunk_masked disagrees with masked_positions (masked iff any of its tokens is)"
        self.out.rows("chunk_masked", check, np.unique(chunk_row[where[bad_items]]), self.base)

        for pass_name in self.m.targets.passes:
            self.cross_pass(pass_name, items, flags, s_start)
        return int(np.count_nonzero(flags))

    def cross_pass(self, pass_name: str, items: np.ndarray, flags: np.ndarray, chunks: _List) -> None:
        name = chunk_logprob_column(pass_name)
        col = _list(self.table, name)
        if not self.same_length(name, col, items, "len(chunk_student_start)").all():
            return
        values = col.values.astype(np.float64)
        wrong = np.where(flags, ~(np.isfinite(values) & (values <= self.tol)), ~np.isnan(values))
        rows, first = _first_bad(wrong, chunks.row_of)

        def detail(local: int) -> str:
            i = first[np.searchsorted(rows, local)]
            return f"chunk {i - chunks.offsets[local]}: masked={bool(flags[i])}, value={values[i]}"

        self.out.rows(
            name,
            "chunk log-prob must be finite and <= 0 where the chunk is masked, NaN where it is not",
            rows,
            self.base,
            detail,
        )

    def run(self) -> int:
        cols = self.common()
        return self.shared(cols) if self.m.pipeline == PIPELINE_SHARED else self.cross(cols)


# ---------------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------------


def _validate_shard(
    root: Path, manifest: Manifest, index: int, *, verify_checksums: bool, check_content: bool, max_rows: int
) -> list[Problem]:
    entry = manifest.shards[index]
    out = _Collector(entry.file, max_rows)
    path = root / entry.file
    if not path.is_file():
        out.add(f"listed in the manifest but {path} does not exist; {_FIX}")
        return out.finish()
    size = path.stat().st_size
    if size != entry.bytes:
        out.add(f"size: expected {entry.bytes} bytes, found {size} (truncated or overwritten); {_FIX}")
    if verify_checksums:
        digest = sha256_of_file(path)
        if digest != entry.sha256:
            out.add(f"sha256: expected {entry.sha256}, found {digest}; {_FIX}")
    try:
        parquet = pq.ParquetFile(path)
        rows = parquet.metadata.num_rows
        found_schema = parquet.schema_arrow
    except Exception as exc:  # damaged footers raise Arrow, OS and decoding errors alike
        out.add(f"not a readable Parquet file ({type(exc).__name__}: {exc}); {_FIX}")
        return out.finish()
    if rows != entry.rows:
        out.add(f"row count: manifest says {entry.rows} rows, the shard has {rows}; {_FIX}")
    differences = schemas_match(found_schema, manifest.arrow_schema())
    if differences:
        out.add(f"schema disagrees with the manifest: {'; '.join(differences)}")
        return out.finish()
    if not check_content:
        return out.finish()
    base = 0
    targets = 0
    for group in range(parquet.metadata.num_row_groups):
        try:
            table = parquet.read_row_group(group)
        except Exception as exc:  # damaged pages raise Arrow, OS and decoding errors alike
            out.add(
                f"row group {group} (rows from {base}) is not readable ({type(exc).__name__}: {exc}); {_FIX}"
            )
            return out.finish()
        try:
            targets += _GroupChecker(manifest, table, base, out).run()
        except Exception as exc:  # damaged bytes can decode to arbitrary values; report, never crash
            out.add(f"row group {group} (rows from {base}) could not be checked: {type(exc).__name__}: {exc}")
            return out.finish()
        base += table.num_rows
    if targets != entry.num_targets:
        out.add(f"num_targets: manifest says {entry.num_targets}, the shard holds {targets}")
    return out.finish()


def validate_cache(
    path: str | os.PathLike[str],
    *,
    verify_checksums: bool = True,
    check_content: bool = True,
    max_rows_per_check: int = 5,
) -> list[Problem]:
    """All problems found in the cache at ``path``; an empty list means the cache is intact.

    Args:
        path: the cache directory.
        verify_checksums: hash every shard and compare with the manifest's SHA-256.
        check_content: read every row group and check the content invariants.
        max_rows_per_check: rows reported per (shard, field, check) before the rest are counted.
    """
    root = Path(path)
    try:
        manifest = Manifest.load(root)
    except ManifestError as exc:
        return [Problem(str(exc), field="manifest")]
    problems: list[Problem] = []
    for index in range(len(manifest.shards)):
        problems += _validate_shard(
            root,
            manifest,
            index,
            verify_checksums=verify_checksums,
            check_content=check_content,
            max_rows=max_rows_per_check,
        )
    listed = {s.file for s in manifest.shards}
    for stray in sorted(root.glob("*.parquet")):
        if stray.name not in listed:
            problems.append(
                Problem(
                    "a shard file that the manifest does not list (left by an unfinished build?)", stray.name
                )
            )
    return problems
