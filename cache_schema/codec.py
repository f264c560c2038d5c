"""Sparse teacher targets on disk: the encodings of a pass's columns, their encoder and vectorised decoder.

What a pass stores per target item (format v2): ``counts`` (entries kept, ragged), the entries' ids and
values (logit minus the row max, descending, the first 0), the log tail mass at every stored temperature
and the gold token's log-prob. The bit layouts are specified in ``docs/cache-format.md``; in short:

* ``rank24-delta8`` (default): one uint32 word per entry, ``rank << 8 | delta``. ``rank`` is the entry's id
  as its index in the cache's id table (ids by descending frequency in the build's data, then the other
  ids ascending), so frequent ids have small ranks and the high bytes compress away. ``delta`` is the
  entry's quantised value as an 8-bit step from the previous entry's: value_j = −step·u_j with u_0 = 0 and
  u_j = u_{j−1} + delta_j, step = ``value_step`` nats (1/8). The encoder feeds its rounding back (u_j is
  the integer nearest −v_j/step, or u_{j−1} + 255 when the gap is wider), so every entry is within step/2
  of its true value unless it lies over 255 steps below its predecessor. Log tails and gold log-probs are
  float16.
* ``float32``: int32 ids and float32 values as they are, float32 log tails and gold log-probs (exact).
* format v1 (read only): fixed-k ids and values and log-partitions; the tail is 1 − Σ_topk p.

Everything here is numpy; :class:`SparseArrays` is the decoded form (flat entries, item by item).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cache_schema.errors import BatchRowError, SchemaError
from cache_schema.schemas import (
    ENCODING_FLOAT32,
    ENCODING_PACKED,
    SPARSE_ENCODINGS,
    gold_logprob_column,
    log_partitions_column,
    log_tails_column,
    topk_codes_column,
    topk_counts_column,
    topk_ids_column,
    topk_values_column,
)

VALUE_STEP = 0.125  # nats per quantisation step of rank24-delta8
RANK_BITS = 24
MAX_DELTA = 255
_LN2 = float(np.log(2.0))


@dataclass
class SparseArrays:
    """Sparse targets of N items as flat numpy arrays.

    counts: int64 (N,) entries per item (≥ 1); ids: int32 or int64 (Σ counts,) and values: float32 (Σ counts,),
    item by item, each item's entries by descending value; log_tails: float32 (N, n_T); gold_logprob: float32 (N,).
    """

    counts: np.ndarray
    ids: np.ndarray
    values: np.ndarray
    log_tails: np.ndarray
    gold_logprob: np.ndarray

    @property
    def starts(self) -> np.ndarray:
        """int64 (N,): index of each item's first entry."""
        return np.cumsum(self.counts) - self.counts

    def select(self, keep: np.ndarray) -> SparseArrays:
        """The items where ``keep`` (bool (N,)) is True."""
        entries = np.repeat(keep, self.counts)
        return SparseArrays(self.counts[keep], self.ids[entries], self.values[entries], self.log_tails[keep],
                            self.gold_logprob[keep])

    @staticmethod
    def concat(parts: Sequence[SparseArrays], num_temperatures: int) -> SparseArrays:
        if not parts:
            return SparseArrays(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32),
                                np.zeros((0, num_temperatures), np.float32), np.zeros(0, np.float32))
        return SparseArrays(*(np.concatenate([getattr(p, name) for p in parts]) for name in
                              ("counts", "ids", "values", "log_tails", "gold_logprob")))


@dataclass
class PaddedArrays:
    """Sparse targets of N items padded to the widest: what training consumes.

    counts: int64 (N,) ≥ 1; ids: int32 (N, W), padding repeats column 0; values: float32 (N, W), −inf at
    padding; log_tails: float32 (N, n_T); gold_logprob: float32 (N,). W is the largest count (1 if N = 0)."""

    counts: np.ndarray
    ids: np.ndarray
    values: np.ndarray
    log_tails: np.ndarray
    gold_logprob: np.ndarray

    @classmethod
    def from_flat(cls, counts: np.ndarray, ids: np.ndarray, values: np.ndarray, log_tails: np.ndarray,
                  gold_logprob: np.ndarray, where: str = "targets") -> PaddedArrays:
        """Pad flat entries (item by item, ``counts`` each) to the widest item; ``where`` names them in errors.

        Boolean-mask assignment into an (N, W) array fills it row-major, i.e. item by item in order: the
        padding needs no per-entry index arithmetic."""
        counts = np.asarray(counts).astype(np.int64)
        if counts.size and int(counts.min()) < 1:
            raise SchemaError(f"{where}: every item needs at least one stored entry; counts go down to "
                              f"{int(counts.min())}")
        total = int(counts.sum())
        if ids.shape != (total,) or values.shape != (total,):
            raise SchemaError(f"{where}: {ids.shape[0]} ids and {values.shape[0]} values stored but the counts add "
                              f"up to {total}")
        width = int(counts.max()) if counts.size else 1
        valid = np.arange(width)[None, :] < counts[:, None]
        starts = np.cumsum(counts) - counts
        padded_ids = np.empty(valid.shape, dtype=np.int32)
        padded_ids[:] = ids[starts][:, None]  # padding repeats column 0
        padded_ids[valid] = ids
        padded_values = np.full(valid.shape, -np.inf, dtype=np.float32)
        padded_values[valid] = values
        # copies: a column read from Arrow is read-only, and torch refuses to share a read-only buffer
        return cls(counts, padded_ids, padded_values, np.array(log_tails, dtype=np.float32),
                   np.array(gold_logprob, dtype=np.float32))

    def select(self, keep: np.ndarray) -> PaddedArrays:
        """The items where ``keep`` (bool (N,)) is True, same width."""
        return PaddedArrays(self.counts[keep], self.ids[keep], self.values[keep], self.log_tails[keep],
                            self.gold_logprob[keep])


# ------------------------------------------------------------------------------------------------- id table


def id_table_from_counts(counts: np.ndarray, limit: int | None = None) -> list[int]:
    """Ids by descending count (ties by ascending id), those with a count > 0 only, at most ``limit``."""
    counts = np.asarray(counts)
    seen = np.flatnonzero(counts > 0)
    order = seen[np.lexsort((seen, -counts[seen]))]
    return [int(v) for v in (order if limit is None else order[:limit])]


class IdRanks:
    """The bijection between ids and ranks of a cache: the listed ids take ranks 0.., in table order; every
    other id of [0, ``vocab_size``) follows, in ascending id order."""

    def __init__(self, table: Sequence[int], vocab_size: int) -> None:
        listed = np.asarray(table, dtype=np.int64)
        if vocab_size < 1 or vocab_size >= 1 << RANK_BITS:
            raise SchemaError(f"vocab_size {vocab_size} does not fit {RANK_BITS}-bit ranks")
        if listed.size and (listed.min() < 0 or listed.max() >= vocab_size):
            raise SchemaError(f"id table holds ids outside [0, {vocab_size})")
        if np.unique(listed).size != listed.size:
            raise SchemaError("id table lists an id twice")
        rest = np.ones(vocab_size, dtype=bool)
        rest[listed] = False
        self.id_of = np.concatenate([listed, np.flatnonzero(rest)]).astype(np.int32)  # rank → id
        self.rank_of = np.empty(vocab_size, dtype=np.uint32)  # id → rank
        self.rank_of[self.id_of] = np.arange(vocab_size, dtype=np.uint32)
        self.vocab_size = vocab_size


# ------------------------------------------------------------------------------------------------ quantiser


def quantise_values(values: np.ndarray, counts: np.ndarray, step: float = VALUE_STEP) -> np.ndarray:
    """8-bit deltas (Σ counts,) uint8 of descending ``values`` per item, with the rounding fed back.

    u_j = min(round(−v_j/step), u_{j−1} + 255) solves to u_j = 255·j + min_{i≤j}(round(−v_i/step) − 255·i)
    (j the entry's index in its item), a cumulative minimum per item."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.uint8)
    target = np.rint(-np.asarray(values, dtype=np.float64) / step).astype(np.int64)
    item = np.repeat(np.arange(counts.shape[0], dtype=np.int64), counts)
    local = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    separated = target - MAX_DELTA * local - (item << 40)  # later items lie lower: the minimum restarts
    units = MAX_DELTA * local + np.minimum.accumulate(separated) + (item << 40)
    deltas = np.diff(units, prepend=0)
    deltas[np.cumsum(counts) - counts] = units[np.cumsum(counts) - counts]
    if deltas.min() < 0 or deltas.max() > MAX_DELTA:
        raise SchemaError("top-k values must be sorted descending with the first value 0 (logits minus the row max)")
    return deltas.astype(np.uint8)


def dequantise_values(deltas: np.ndarray, counts: np.ndarray, step: float = VALUE_STEP) -> np.ndarray:
    """float32 values (Σ counts,) from 8-bit deltas: one running sum over all entries, less its value before
    each item's first entry."""
    counts = np.asarray(counts, dtype=np.int64)
    running = np.cumsum(deltas, dtype=np.int64)
    starts = np.cumsum(counts) - counts
    before = running[starts] - deltas[starts] if starts.size else starts
    return (running - np.repeat(before, counts)).astype(np.float32) * np.float32(-step)


# ---------------------------------------------------------------------------------------------------- sizes


def item_bytes(encoding: str, entries: float, num_temperatures: int) -> float:
    """Uncompressed bytes of one target item's pass columns: its count (uint32), ``entries`` top entries (one
    uint32 word for rank24-delta8; an int32 id and a float32 value for float32), a log tail per stored
    temperature and the gold log-prob (float16 for rank24-delta8, float32 for float32). List offsets, 4 bytes
    per row and column, are left out: they are per row, not per item."""
    if encoding not in SPARSE_ENCODINGS:
        raise SchemaError(f"unknown sparse-target encoding {encoding!r}; expected one of {list(SPARSE_ENCODINGS)}")
    entry, small = (4, 2) if encoding == ENCODING_PACKED else (8, 4)
    return 4 + entry * entries + small * (num_temperatures + 1)


# ---------------------------------------------------------------------------------------------------- codecs


def log1mexp(x: np.ndarray) -> np.ndarray:
    """log(1 − exp(x)) for x ≤ 0, stable at both ends (−inf at 0, 0 at −inf)."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(x > -_LN2, np.log(-np.expm1(x)), np.log1p(-np.exp(x)))


class SparseCodec:
    """One encoding of a pass's sparse targets: its columns, the encoder of one row, the batch decoder."""

    def __init__(self, encoding: str, *, num_temperatures: int, id_table: Sequence[int] | None = None,
                 vocab_size: int | None = None, value_step: float | None = None,
                 max_entries: int | None = None) -> None:
        if encoding not in SPARSE_ENCODINGS:
            raise SchemaError(f"unknown sparse-target encoding {encoding!r}; expected one of {list(SPARSE_ENCODINGS)}")
        self.encoding = encoding
        self.num_temperatures = int(num_temperatures)
        self.value_step = VALUE_STEP if value_step is None else float(value_step)
        self.max_entries = max_entries  # the manifest's k ceiling: a row keeping more contradicts it
        self.ranks = None
        if encoding == ENCODING_PACKED:
            if id_table is None or vocab_size is None:
                raise SchemaError(f"encoding {encoding!r} needs the id table and the shared vocabulary size")
            self.ranks = IdRanks(id_table, vocab_size)

    def columns(self, pass_name: str) -> list[str]:
        entries = ([topk_codes_column(pass_name)] if self.encoding == ENCODING_PACKED
                   else [topk_ids_column(pass_name), topk_values_column(pass_name)])
        return [topk_counts_column(pass_name), *entries, log_tails_column(pass_name), gold_logprob_column(pass_name)]

    def encode(self, arrays: SparseArrays, pass_name: str) -> dict[str, np.ndarray]:
        """One row's pass columns from its items' sparse targets."""
        out = {topk_counts_column(pass_name): arrays.counts.astype(np.uint32)}
        small = np.float32 if self.encoding == ENCODING_FLOAT32 else np.float16
        if self.encoding == ENCODING_PACKED:
            ranks = self.ranks.rank_of[arrays.ids]
            deltas = quantise_values(arrays.values, arrays.counts, self.value_step)
            out[topk_codes_column(pass_name)] = (ranks << np.uint32(8)) | deltas.astype(np.uint32)
        else:
            out[topk_ids_column(pass_name)] = arrays.ids.astype(np.int32)
            out[topk_values_column(pass_name)] = arrays.values.astype(np.float32)
        out[log_tails_column(pass_name)] = arrays.log_tails.astype(small)
        out[gold_logprob_column(pass_name)] = arrays.gold_logprob.astype(small)
        return out

    def num_items(self, columns: Mapping[str, np.ndarray], pass_name: str) -> int:
        """Items of one row's pass columns, after checking that its entries add up to its counts (so that rows
        concatenated for one decode cannot trade entries) and that no item keeps more than ``max_entries``."""
        counts = np.asarray(columns[topk_counts_column(pass_name)])
        entries = columns[self.columns(pass_name)[1]]
        if len(entries) != int(counts.sum(dtype=np.int64)):
            raise SchemaError(f"pass {pass_name!r}: {len(entries)} stored entries but the counts add up to "
                              f"{int(counts.sum(dtype=np.int64))}")
        if self.max_entries is not None and counts.size and int(counts.max()) > self.max_entries:
            raise SchemaError(f"pass {pass_name!r}: an item keeps {int(counts.max())} entries but the manifest's k "
                              f"ceiling is {self.max_entries}")
        return int(counts.shape[0])

    def items_per_row(self, rows: Sequence[Mapping[str, np.ndarray]], pass_name: str) -> np.ndarray:
        """Items of each row's pass columns (R,), checked as :meth:`num_items` checks one row, all rows at once;
        :class:`cache_schema.errors.BatchRowError` names the first row at fault."""
        counts_name, entries_name = self.columns(pass_name)[:2]
        items = np.fromiter((len(row[counts_name]) for row in rows), dtype=np.int64, count=len(rows))
        entries = np.fromiter((len(row[entries_name]) for row in rows), dtype=np.int64, count=len(rows))
        counts = np.concatenate([np.asarray(row[counts_name]).reshape(-1) for row in rows]).astype(np.int64)
        summed = np.concatenate([[0], np.cumsum(counts)])
        ends = np.cumsum(items)
        bad = summed[ends] - summed[ends - items] != entries
        if self.max_entries is not None and counts.size and int(counts.max()) > self.max_entries:
            bad[np.repeat(np.arange(len(rows)), items)[counts > self.max_entries]] = True
        _raise_first(self, rows, bad, pass_name)
        return items

    def decode_padded(self, columns: Mapping[str, np.ndarray], pass_name: str) -> PaddedArrays:
        """Padded sparse targets (what training consumes) from a pass's columns of any number of rows."""
        flat = self.decode(columns, pass_name)
        return PaddedArrays.from_flat(flat.counts, flat.ids, flat.values, flat.log_tails, flat.gold_logprob,
                                      f"pass {pass_name!r}")

    def decode(self, columns: Mapping[str, np.ndarray], pass_name: str) -> SparseArrays:
        """Sparse targets from a pass's columns of any number of rows, concatenated (flat entries).

        rank24-delta8: a shift and a table lookup give the ids, a running sum the values
        (:func:`dequantise_values`)."""
        counts = np.asarray(columns[topk_counts_column(pass_name)]).astype(np.int64)
        where = f"pass {pass_name!r}"
        if self.encoding == ENCODING_PACKED:
            words = np.asarray(columns[topk_codes_column(pass_name)], dtype=np.uint32)
            if words.shape[0] != int(counts.sum()):
                raise SchemaError(f"{where}: {words.shape[0]} stored entries but the counts add up to "
                                  f"{int(counts.sum())}")
            ranks = words >> np.uint32(8)
            if ranks.size and int(ranks.max()) >= self.ranks.vocab_size:
                raise SchemaError(f"{where}: rank {int(ranks.max())} outside the {self.ranks.vocab_size}-id shared "
                                  "vocabulary")
            ids = self.ranks.id_of[ranks]
            values = dequantise_values((words & np.uint32(MAX_DELTA)).astype(np.uint8), counts, self.value_step)
        else:
            ids = np.asarray(columns[topk_ids_column(pass_name)], dtype=np.int32)
            values = np.asarray(columns[topk_values_column(pass_name)], dtype=np.float32)
        tails = np.asarray(columns[log_tails_column(pass_name)], dtype=np.float32)
        gold = np.asarray(columns[gold_logprob_column(pass_name)], dtype=np.float32)
        if tails.size != counts.shape[0] * self.num_temperatures or gold.shape != counts.shape:
            raise SchemaError(f"{where}: {counts.shape[0]} items but {tails.size} log tails for "
                              f"{self.num_temperatures} temperatures and {gold.shape[0]} gold log-probs")
        if ids.shape != (int(counts.sum()),) or values.shape != ids.shape:
            raise SchemaError(f"{where}: {ids.shape[0]} ids and {values.shape[0]} values stored but the counts add "
                              f"up to {int(counts.sum())}")
        return SparseArrays(counts, ids, values, tails.reshape(counts.shape[0], self.num_temperatures), gold)


class V1Codec:
    """Reads format-v1 passes: fixed-k ids and values, log-partitions (the tail is 1 − Σ_topk p)."""

    def __init__(self, k: int, temperatures: Sequence[float]) -> None:
        self.k = int(k)
        self.temperatures = np.asarray(temperatures, dtype=np.float64)
        self.encoding = "v1"

    def columns(self, pass_name: str) -> list[str]:
        return [topk_ids_column(pass_name), topk_values_column(pass_name), log_partitions_column(pass_name),
                gold_logprob_column(pass_name)]

    def num_items(self, columns: Mapping[str, np.ndarray], pass_name: str) -> int:
        return int(np.asarray(columns[gold_logprob_column(pass_name)]).shape[0])

    def items_per_row(self, rows: Sequence[Mapping[str, np.ndarray]], pass_name: str) -> np.ndarray:
        """Items of each row's pass columns (R,): one gold log-prob per item."""
        gold = gold_logprob_column(pass_name)
        return np.fromiter((len(row[gold]) for row in rows), dtype=np.int64, count=len(rows))

    def decode(self, columns: Mapping[str, np.ndarray], pass_name: str) -> SparseArrays:
        padded = self.decode_padded(columns, pass_name)
        return SparseArrays(padded.counts, padded.ids.reshape(-1), padded.values.reshape(-1), padded.log_tails,
                            padded.gold_logprob)

    def decode_padded(self, columns: Mapping[str, np.ndarray], pass_name: str) -> PaddedArrays:
        """Fixed-k targets (every item full width) with log tails log(1 − Σ_topk p) from the log-partitions."""
        ids = np.asarray(columns[topk_ids_column(pass_name)], dtype=np.int32).reshape(-1, self.k)
        values = np.asarray(columns[topk_values_column(pass_name)], dtype=np.float64).reshape(-1, self.k)
        n = ids.shape[0]
        log_z = np.asarray(columns[log_partitions_column(pass_name)], dtype=np.float64).reshape(n, len(self.temperatures))
        scaled = values[:, None, :] / self.temperatures[None, :, None]
        top = scaled.max(axis=2)
        log_top = top + np.log(np.exp(scaled - top[:, :, None]).sum(axis=2)) - log_z
        tails = log1mexp(np.minimum(log_top, 0.0)).astype(np.float32)
        gold = np.asarray(columns[gold_logprob_column(pass_name)], dtype=np.float32)
        return PaddedArrays(np.full(n, self.k, dtype=np.int64), ids, values.astype(np.float32), tails, gold)


def _raise_first(codec: SparseCodec, rows: Sequence[Mapping[str, np.ndarray]], bad: np.ndarray, pass_name: str) -> None:
    """Re-check the rows flagged ``bad`` one by one (:meth:`SparseCodec.num_items` words the problem) and raise
    :class:`cache_schema.errors.BatchRowError` for the first."""
    for row in np.flatnonzero(bad):
        try:
            codec.num_items(rows[row], pass_name)
        except SchemaError as exc:
            raise BatchRowError(int(row), str(exc)) from None


def codec_for(manifest: Any) -> SparseCodec | V1Codec:
    """The codec of a ``shared`` cache's pass columns, from its :class:`cache_schema.manifest.Manifest`."""
    targets = manifest.targets
    if manifest.format_version == 1:
        return V1Codec(int(targets.k), targets.temperatures)
    encoding = targets.sparse.encoding
    return SparseCodec(encoding.name, num_temperatures=len(targets.temperatures), id_table=encoding.id_table,
                       vocab_size=manifest.teacher.shared_vocab_size, value_step=encoding.value_step,
                       max_entries=targets.sparse.k_policy.ceiling)
