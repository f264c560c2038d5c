"""Reading a cache (local or remote): checked manifest, row-group units with read-ahead, lazy checksums,
Arrow tables and torch tensors.

The unit of streaming is one Parquet row group of one shard. Columns convert to torch without Python loops
over elements: scalar columns become 1-D tensors, ``list<x>`` columns a :class:`Ragged` (flat values plus
row offsets), and ``list<fixed_size_list<x>[w]>`` columns a :class:`Ragged` whose values are 2-D (n, w).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from cache_schema.errors import SchemaError, ShardError
from cache_schema.group_guard import GroupGuard, unreadable_group
from cache_schema.manifest import Manifest
from cache_schema.shard_checks import check_shard_file, checksum_problem
from cache_schema.store import Store, open_store

__all__ = ["CacheReader", "Ragged", "RowGroupUnit", "check_shard", "pad_ragged", "table_to_numpy", "table_to_torch"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ragged:
    """A batch of variable-length rows: ``values`` (N, ...) and ``offsets`` (B + 1,) int64.

    Row ``i`` is ``values[offsets[i]:offsets[i + 1]]``. ``values`` is 1-D for ``list<x>`` columns and
    2-D (N, w) for ``list<fixed_size_list<x>[w]>`` columns.
    """

    values: torch.Tensor
    offsets: torch.Tensor

    def __len__(self) -> int:
        return int(self.offsets.numel()) - 1

    @property
    def lengths(self) -> torch.Tensor:
        """(B,) int64 row lengths."""
        return self.offsets[1:] - self.offsets[:-1]

    def row(self, index: int) -> torch.Tensor:
        """Values of one row."""
        return self.values[int(self.offsets[index]) : int(self.offsets[index + 1])]

    def row_ids(self) -> torch.Tensor:
        """(N,) int64: the row each value belongs to."""
        return torch.repeat_interleave(torch.arange(len(self)), self.lengths)

    def pad(self, pad_value: float | int | bool = 0, max_len: int | None = None) -> torch.Tensor:
        """Dense (B, max_len[, w]) tensor; see :func:`pad_ragged`."""
        return pad_ragged(self, pad_value, max_len)


def pad_ragged(ragged: Ragged, pad_value: float | int | bool = 0, max_len: int | None = None) -> torch.Tensor:
    """Pad a ragged column to a dense (B, max_len) tensor, or (B, max_len, w) for fixed-width items.

    ``max_len`` defaults to the longest row; a row longer than ``max_len`` is an error (never silently cut).
    """
    lengths = ragged.lengths
    batch = len(ragged)
    longest = int(lengths.max()) if batch else 0
    if max_len is None:
        max_len = longest
    elif longest > max_len:
        raise ValueError(f"a row has {longest} items, more than max_len={max_len}; raise max_len")
    out = torch.full((batch, max_len, *ragged.values.shape[1:]), pad_value, dtype=ragged.values.dtype)
    if ragged.values.shape[0]:
        rows = ragged.row_ids()
        cols = torch.arange(ragged.values.shape[0]) - ragged.offsets[:-1][rows]
        out[rows, cols] = ragged.values
    return out


# ---------------------------------------------------------------------------------------------------------
# Arrow → torch
# ---------------------------------------------------------------------------------------------------------


def _writable(values: np.ndarray) -> np.ndarray:
    return values if values.flags.writeable else values.copy()  # torch.from_numpy needs a writable buffer


def _column_array(table: pa.Table, name: str) -> pa.Array:
    column = table.column(name)
    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if array.null_count:
        raise SchemaError(f"column {name!r} holds {array.null_count} nulls; cache columns are never null")
    return array


def column_to_numpy(array: pa.Array, name: str = "column") -> np.ndarray | tuple[np.ndarray, np.ndarray] | list[str]:
    """One Arrow column as numpy without copying where Arrow allows (the arrays may be read-only): scalars as
    an array, lists as (flat values, int64 row offsets from 0) with values 2-D (n, w) for
    ``list<fixed_size_list<x>[w]>``, strings as a list of str."""
    type_ = array.type
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        return array.to_pylist()
    if pa.types.is_list(type_):
        offsets = array.offsets.to_numpy().astype(np.int64)
        offsets -= offsets[0]
        flat = array.flatten()  # respects slicing of the list array
        child = type_.value_type
        if pa.types.is_fixed_size_list(child):
            return flat.flatten().to_numpy(zero_copy_only=False).reshape(-1, child.list_size), offsets
        if pa.types.is_list(child) or pa.types.is_struct(child):
            raise SchemaError(f"column {name!r} has type {type_}, which the cache format does not use")
        return flat.to_numpy(zero_copy_only=False), offsets
    if pa.types.is_integer(type_) or pa.types.is_floating(type_) or pa.types.is_boolean(type_):
        return array.to_numpy(zero_copy_only=False)
    raise SchemaError(f"column {name!r} has type {type_}, which the cache format does not use")


def column_to_torch(array: pa.Array, name: str = "column") -> torch.Tensor | Ragged | list[str]:
    """One Arrow column as a tensor (scalars), a :class:`Ragged` (lists) or a list of str (strings)."""
    converted = column_to_numpy(array, name)
    if isinstance(converted, list):
        return converted
    if isinstance(converted, tuple):
        values, offsets = converted
        return Ragged(values=torch.from_numpy(_writable(values)), offsets=torch.from_numpy(offsets))
    return torch.from_numpy(_writable(converted))


def _table_columns(table: pa.Table, columns: Sequence[str] | None) -> list[str]:
    names = list(columns) if columns is not None else table.schema.names
    missing = [n for n in names if n not in table.schema.names]
    if missing:
        raise SchemaError(f"table has no columns {missing}; it has {table.schema.names}")
    return names


def table_to_numpy(
    table: pa.Table, columns: Sequence[str] | None = None
) -> dict[str, np.ndarray | tuple[np.ndarray, np.ndarray] | list[str]]:
    """Convert a table (e.g. one row group) with :func:`column_to_numpy`, column by column."""
    return {name: column_to_numpy(_column_array(table, name), name) for name in _table_columns(table, columns)}


def table_to_torch(
    table: pa.Table, columns: Sequence[str] | None = None
) -> dict[str, torch.Tensor | Ragged | list[str]]:
    """Convert a table (e.g. one row group) to torch: tensors, :class:`Ragged` pairs and lists of str.

    Shapes, for a table of B rows: ``t`` (B,) float64; ``input_ids`` Ragged(values (ΣL,) int32, offsets
    (B + 1,)); ``plain_topk_ids`` Ragged(values (Σn, k) int32, offsets (B + 1,)); ``sample_id`` list[str].
    """
    return {name: column_to_torch(_column_array(table, name), name) for name in _table_columns(table, columns)}


# ---------------------------------------------------------------------------------------------------------
# Shards and the reader
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowGroupUnit:
    """One Parquet row group of one shard: the reader's unit of streaming."""

    shard: str
    shard_index: int
    row_group: int
    rows: int
    first_row: int  # global index of the unit's first row in the cache (shards in manifest order)


CHECKSUMS = ("lazy", "open", "off")
DEFAULT_READ_AHEAD = 4  # row groups read in the background at once (requests in flight on a remote store)
_OPEN_THREADS = 16  # footers fetched at once when opening a remote cache (each costs a round trip)


def check_shard(store: Store, manifest: Manifest, index: int, *, verify_checksums: bool) -> pq.FileMetaData:
    """The footer of one listed shard after checking its presence, size, row count, schema and, with
    ``verify_checksums``, its SHA-256; the first problem found is raised as :class:`ShardError`."""
    found = check_shard_file(store, manifest, index, verify_checksums=verify_checksums)
    found.close()
    if found.problems:
        raise ShardError(f"shard {manifest.shards[index].file}: {found.problems[0]}")
    return found.parquet.metadata


class CacheReader:
    """A checked, read-only view of a cache at a path or URL (:mod:`cache_schema.store`).

    On construction the manifest is loaded (unknown format versions are refused) and every shard is checked
    against its manifest entry from its size and Parquet footer: presence, size, row count and schema.
    ``checksums`` says when each shard's SHA-256 is compared with the manifest's: ``"lazy"`` (default) the
    first time a row group of the shard is read, by the process that reads it, so a start on a large cache
    costs footers only; ``"open"`` every shard on construction; ``"off"`` never (``tide-cache validate``
    still checks them all). With ``content_checks`` every row group read is checked once against the content
    invariants ``validate`` checks, on the columns read (:mod:`cache_schema.group_guard`; training turns
    them on), and a failing one raises :class:`cache_schema.errors.ContentError`. A row group whose pages do
    not decode raises it too, naming the shard and row group, with or without the checks.

    Row groups are read on demand; :meth:`prefetch` starts reading the next ones on ``read_ahead`` background
    threads (each read asks for just the row group's column chunks, coalesced into few requests), and
    :meth:`iter_batches` reads ahead by itself, so a remote cache streams without ever being copied whole.
    """

    def __init__(
        self, path: str | os.PathLike[str] | Store, *, checksums: str = "lazy", read_ahead: int = DEFAULT_READ_AHEAD,
        content_checks: bool = False,
    ) -> None:
        if checksums not in CHECKSUMS:
            raise ValueError(f"checksums must be one of {list(CHECKSUMS)}; got {checksums!r}")
        if read_ahead < 0:
            raise ValueError(f"read_ahead must be >= 0; got {read_ahead}")
        self.store = open_store(path)
        self.path = self.store.display()
        self.manifest = Manifest.load(self.store)
        self.schema = self.manifest.arrow_schema()
        self.read_ahead = read_ahead
        count = len(self.manifest.shards)

        def open_shard(index: int) -> pq.FileMetaData:
            return check_shard(self.store, self.manifest, index, verify_checksums=checksums == "open")

        if self.store.is_local or count < 2:
            metadata = [open_shard(index) for index in range(count)]
        else:
            with ThreadPoolExecutor(min(_OPEN_THREADS, count), thread_name_prefix="tide-cache-open") as pool:
                metadata = list(pool.map(open_shard, range(count)))
        self._metadata = metadata
        self._verified = [checksums != "lazy"] * count
        self._verify_locks = [threading.Lock() for _ in range(count)]
        units: list[RowGroupUnit] = []
        first = 0
        for index, (entry, meta) in enumerate(zip(self.manifest.shards, metadata, strict=True)):
            for group in range(meta.num_row_groups):
                rows = meta.row_group(group).num_rows
                units.append(RowGroupUnit(entry.file, index, group, rows, first))
                first += rows
        self.units: list[RowGroupUnit] = units
        self._pool: ThreadPoolExecutor | None = None
        self._pending: OrderedDict[tuple[int, tuple[str, ...] | None], Future[pa.Table]] = OrderedDict()
        self._pending_lock = threading.Lock()
        self._thread = threading.local()
        self._guard = GroupGuard(self.manifest, self.path) if content_checks else None
        logger.debug("opened cache %s: %d rows in %d row groups", self.path, first, len(units))

    @property
    def pipeline(self) -> str:
        return self.manifest.pipeline

    @property
    def num_rows(self) -> int:
        return self.manifest.num_rows

    def __len__(self) -> int:
        return self.num_rows

    @property
    def num_units(self) -> int:
        return len(self.units)

    def _check_columns(self, columns: Sequence[str] | None) -> list[str] | None:
        if columns is None:
            return None
        columns = list(columns)
        unknown = [c for c in columns if c not in self.schema.names]
        if unknown:
            raise SchemaError(f"{self.path}: no columns {unknown} in this cache; it has {self.schema.names}")
        return columns

    # -- files and lazy checksums --------------------------------------------------------------------------

    @contextmanager
    def _parquet(self, shard_index: int) -> Iterator[pq.ParquetFile]:
        """A shard with its footer already read, on a file handle of this thread's own (no file position is
        shared between reader threads). Local handles are opened per read (an open costs microseconds);
        remote ones are kept per thread, since opening one costs a request. Remote reads pre-buffer: the
        row group's column chunks are fetched as a few coalesced ranges, concurrently."""
        entry = self.manifest.shards[shard_index]
        remote = not self.store.is_local
        handles = self._thread.__dict__.setdefault("handles", {}) if remote else {}
        source = handles.get(shard_index) or self.store.open_input(entry.file, size=entry.bytes)
        try:
            yield pq.ParquetFile(source, metadata=self._metadata[shard_index], pre_buffer=remote)
        finally:
            if remote:
                handles[shard_index] = source
            else:
                source.close()

    def verify_shard(self, shard_index: int) -> None:
        """Compare shard ``shard_index``'s SHA-256 with the manifest's once (raises :class:`ShardError`);
        every read of a row group calls it first."""
        if self._verified[shard_index]:
            return
        with self._verify_locks[shard_index]:
            if self._verified[shard_index]:
                return
            started = time.perf_counter()
            problem = checksum_problem(self.store, self.manifest, shard_index)
            if problem is not None:
                raise ShardError(f"shard {self.manifest.shards[shard_index].file}: {problem}")
            self._verified[shard_index] = True
            logger.debug("verified the sha256 of %s in %.2f s", self.manifest.shards[shard_index].file,
                         time.perf_counter() - started)

    def _read(self, index: int, columns: list[str] | None) -> pa.Table:
        unit = self.units[index]
        self.verify_shard(unit.shard_index)
        with self._parquet(unit.shard_index) as parquet:
            try:
                table = parquet.read_row_group(unit.row_group, columns=columns)
            except Exception as exc:  # damaged pages raise Arrow, OS and decoding errors alike
                raise unreadable_group(unit.shard, unit.row_group, self.path, exc) from exc
        if self._guard is not None:
            self._guard.check(index, unit.shard, unit.row_group, table)  # in the read-ahead thread when prefetched
        return table.replace_schema_metadata(None)

    # -- reading ---------------------------------------------------------------------------------------------

    def read_row_group(self, index: int, columns: Sequence[str] | None = None) -> pa.Table:
        """The rows of unit ``index`` (0 ≤ index < num_units) as an Arrow table (from the read-ahead when
        :meth:`prefetch` asked for it)."""
        if not 0 <= index < len(self.units):
            raise IndexError(f"row-group unit {index} is outside [0, {len(self.units)})")
        columns = self._check_columns(columns)
        with self._pending_lock:
            future = self._pending.pop((index, None if columns is None else tuple(columns)), None)
        if future is not None:
            return future.result()
        return self._read(index, columns)

    def prefetch(self, units: Iterable[int], columns: Sequence[str] | None = None) -> None:
        """Read ``units`` ahead on the background threads, in order (no-op with ``read_ahead=0``);
        :meth:`read_row_group` with the same columns then takes the results. Each call replaces the previous
        read-ahead: pending reads this call does not list are dropped. At most ``4 * read_ahead`` reads wait
        at once (the first ones listed), which bounds the memory of what was read but not yet taken."""
        if not self.read_ahead:
            return
        columns = self._check_columns(columns)
        key_columns = None if columns is None else tuple(columns)
        wanted = [(index, key_columns) for index in dict.fromkeys(int(u) for u in units)
                  if 0 <= index < len(self.units)][: 4 * self.read_ahead]
        with self._pending_lock:
            keep = set(wanted)
            for key in [key for key in self._pending if key not in keep]:
                self._pending.pop(key).cancel()
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.read_ahead, thread_name_prefix="tide-cache-read")
            for key in wanted:
                if key not in self._pending:
                    self._pending[key] = self._pool.submit(self._read, key[0], columns)

    def unit_column(self, name: str) -> list[np.ndarray]:
        """One column of every unit, as numpy arrays in unit order, read one shard at a time (one coalesced
        read of the column's chunks per shard). For planning (e.g. the replica of every row, to order an epoch): it
        reads a single column and leaves the shards' checksums to the reads of their rows."""
        self._check_columns([name])

        def shard_values(shard_index: int) -> list[np.ndarray]:
            with self._parquet(shard_index) as parquet:
                values = parquet.read(columns=[name]).column(0).to_numpy()  # one call: all its chunks at once
            meta = self._metadata[shard_index]
            bounds = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
            return [values[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

        count = len(self.manifest.shards)
        if self.store.is_local or count < 2:
            per_shard = [shard_values(index) for index in range(count)]
        else:
            with ThreadPoolExecutor(min(_OPEN_THREADS, count), thread_name_prefix="tide-cache-scan") as pool:
                per_shard = list(pool.map(shard_values, range(count)))
        return [values for shard in per_shard for values in shard]

    def iter_batches(
        self, columns: Sequence[str] | None = None, units: Iterable[int] | None = None
    ) -> Iterator[pa.Table]:
        """Yield one table per unit, in ``units`` order (default: all units in cache order), reading
        ``read_ahead`` units ahead in the background."""
        order = list(range(len(self.units)) if units is None else units)
        for position, index in enumerate(order):
            self.prefetch(order[position : position + 1 + self.read_ahead], columns)  # this one and the next
            yield self.read_row_group(index, columns)

    def iter_torch(
        self, columns: Sequence[str] | None = None, units: Iterable[int] | None = None
    ) -> Iterator[dict[str, torch.Tensor | Ragged | list[str]]]:
        """Like :meth:`iter_batches`, converted with :func:`table_to_torch`."""
        for table in self.iter_batches(columns, units):
            yield table_to_torch(table)

    def read_all(self, columns: Sequence[str] | None = None) -> pa.Table:
        """The whole cache as one Arrow table (shards in manifest order)."""
        tables = list(self.iter_batches(columns))
        if not tables:
            schema = self.schema if columns is None else pa.schema([self.schema.field(c) for c in columns])
            return schema.empty_table()
        return pa.concat_tables(tables)

    def to_pandas(self, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """The whole cache as a DataFrame (list columns hold numpy arrays per row)."""
        return self.read_all(columns).to_pandas()

    def after_fork(self) -> None:
        """Forget the read-ahead state inherited from the parent process (its threads did not survive the
        fork); this process starts its own threads on its first read-ahead."""
        self._pool = None
        self._pending = OrderedDict()
        self._pending_lock = threading.Lock()
        self._thread = threading.local()

    def close(self) -> None:
        """Stop the read-ahead threads (reads waiting to be taken are dropped)."""
        with self._pending_lock:
            pending, self._pending = list(self._pending.values()), OrderedDict()
            pool, self._pool = self._pool, None
        for future in pending:
            future.cancel()
        if pool is not None:
            pool.shutdown(wait=True)

    def __enter__(self) -> CacheReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
