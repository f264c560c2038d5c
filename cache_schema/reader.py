"""Reading a cache: checked manifest, row-group units, Arrow tables and torch tensors.

The unit of streaming is one Parquet row group of one shard. Columns convert to torch without Python loops
over elements: scalar columns become 1-D tensors, ``list<x>`` columns a :class:`Ragged` (flat values plus
row offsets), and ``list<fixed_size_list<x>[w]>`` columns a :class:`Ragged` whose values are 2-D (n, w).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from cache_schema.errors import SchemaError, ShardError
from cache_schema.manifest import Manifest
from cache_schema.shard_checks import check_shard_file

__all__ = ["CacheReader", "Ragged", "RowGroupUnit", "check_shard", "pad_ragged", "table_to_torch"]

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


def _to_numpy(array: pa.Array) -> np.ndarray:
    values = array.to_numpy(zero_copy_only=False)
    if not values.flags.writeable:
        values = values.copy()  # torch.from_numpy needs a writable buffer
    return values


def _column_array(table: pa.Table, name: str) -> pa.Array:
    column = table.column(name)
    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if array.null_count:
        raise SchemaError(f"column {name!r} holds {array.null_count} nulls; cache columns are never null")
    return array


def column_to_torch(array: pa.Array, name: str = "column") -> torch.Tensor | Ragged | list[str]:
    """One Arrow column as a tensor (scalars), a :class:`Ragged` (lists) or a list of str (strings)."""
    type_ = array.type
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        return array.to_pylist()
    if pa.types.is_list(type_):
        offsets = array.offsets.to_numpy().astype(np.int64)
        offsets -= offsets[0]
        flat = array.flatten()  # respects slicing of the list array
        child = type_.value_type
        if pa.types.is_fixed_size_list(child):
            width = child.list_size
            inner = _to_numpy(flat.flatten()).reshape(-1, width)
            values = torch.from_numpy(inner)
        elif pa.types.is_list(child) or pa.types.is_struct(child):
            raise SchemaError(f"column {name!r} has type {type_}, which the cache format does not use")
        else:
            values = torch.from_numpy(_to_numpy(flat))
        return Ragged(values=values, offsets=torch.from_numpy(offsets))
    if pa.types.is_integer(type_) or pa.types.is_floating(type_) or pa.types.is_boolean(type_):
        return torch.from_numpy(_to_numpy(array))
    raise SchemaError(f"column {name!r} has type {type_}, which the cache format does not use")


def table_to_torch(
    table: pa.Table, columns: Sequence[str] | None = None
) -> dict[str, torch.Tensor | Ragged | list[str]]:
    """Convert a table (e.g. one row group) to torch: tensors, :class:`Ragged` pairs and lists of str.

    Shapes, for a table of B rows: ``t`` (B,) float64; ``input_ids`` Ragged(values (ΣL,) int32, offsets
    (B + 1,)); ``plain_topk_ids`` Ragged(values (Σn, k) int32, offsets (B + 1,)); ``sample_id`` list[str].
    """
    names = list(columns) if columns is not None else table.schema.names
    missing = [n for n in names if n not in table.schema.names]
    if missing:
        raise SchemaError(f"table has no columns {missing}; it has {table.schema.names}")
    return {name: column_to_torch(_column_array(table, name), name) for name in names}


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


def check_shard(root: Path, manifest: Manifest, index: int, *, verify_checksums: bool) -> pq.ParquetFile:
    """Open one listed shard after checking its presence, size, checksum, row count and schema; the first
    problem found is raised as :class:`ShardError`."""
    found = check_shard_file(root, manifest, index, verify_checksums=verify_checksums)
    if found.problems:
        raise ShardError(f"shard {manifest.shards[index].file}: {found.problems[0]}")
    return found.parquet


class CacheReader:
    """A checked, read-only view of a cache directory.

    On construction the manifest is loaded (unknown format versions are refused) and every shard is checked
    against its manifest entry: presence, size, row count, schema and, with ``verify_checksums``, SHA-256.
    """

    def __init__(self, path: str | os.PathLike[str], *, verify_checksums: bool = True) -> None:
        self.path = Path(path)
        self.manifest = Manifest.load(self.path)
        self.schema = self.manifest.arrow_schema()
        self._files: list[pq.ParquetFile] = []
        units: list[RowGroupUnit] = []
        first = 0
        for index, entry in enumerate(self.manifest.shards):
            parquet = check_shard(self.path, self.manifest, index, verify_checksums=verify_checksums)
            self._files.append(parquet)
            for group in range(parquet.metadata.num_row_groups):
                rows = parquet.metadata.row_group(group).num_rows
                units.append(RowGroupUnit(entry.file, index, group, rows, first))
                first += rows
        self.units: list[RowGroupUnit] = units
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

    def read_row_group(self, index: int, columns: Sequence[str] | None = None) -> pa.Table:
        """The rows of unit ``index`` (0 ≤ index < num_units) as an Arrow table."""
        if not 0 <= index < len(self.units):
            raise IndexError(f"row-group unit {index} is outside [0, {len(self.units)})")
        unit = self.units[index]
        table = self._files[unit.shard_index].read_row_group(
            unit.row_group, columns=self._check_columns(columns)
        )
        return table.replace_schema_metadata(None)

    def iter_batches(
        self, columns: Sequence[str] | None = None, units: Iterable[int] | None = None
    ) -> Iterator[pa.Table]:
        """Yield one table per unit, in ``units`` order (default: all units in cache order)."""
        order = range(len(self.units)) if units is None else units
        for index in order:
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
