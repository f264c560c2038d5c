"""Atomic shard writing (zstd Parquet) and a background writer (the directory's other files:
:mod:`cache_schema.directory`).

A shard is written under a hidden temporary name next to its final one (or, for a remote store, in the local
temporary directory), flushed to disk, hashed, and only then renamed to its final name (and the directory
entry flushed) or uploaded in one piece. A crash or exception at any point leaves
either no shard or the complete one under the final name. The manifest is written last.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cache_schema.errors import SchemaError, ShardWriteError
from cache_schema.files import sha256_of_stream
from cache_schema.manifest import DATA_DIR, ShardInfo, is_shard_name
from cache_schema.schemas import PASSES, num_target_items, schemas_match, table_from_rows, topk_codes_column
from cache_schema.shard_facts import with_facts
from cache_schema.store import Store, open_store

__all__ = [
    "DEFAULT_ROW_GROUP_ROWS",
    "DEFAULT_COMPRESSION_LEVEL",
    "AsyncShardWriter",
    "ShardInfo",
    "write_shard",
]

logger = logging.getLogger(__name__)

DEFAULT_ROW_GROUP_ROWS = 256
DEFAULT_COMPRESSION_LEVEL = 3

TableData = pa.Table | pa.RecordBatch | Iterable[pa.Table | pa.RecordBatch]


def _as_tables(data: TableData) -> Iterable[pa.Table]:
    if isinstance(data, pa.Table):
        yield data
        return
    if isinstance(data, pa.RecordBatch):
        yield pa.Table.from_batches([data])
        return
    for item in data:
        if isinstance(item, pa.RecordBatch):
            item = pa.Table.from_batches([item])
        if not isinstance(item, pa.Table):
            raise ShardWriteError(
                f"shard data must be Arrow tables or record batches; got {type(item).__name__}"
            )
        yield item


def byte_stream_split_columns(schema: pa.Schema) -> list[str]:
    """Columns written BYTE_STREAM_SPLIT: the packed top-k words (``P_topk_codes``).

    The encoding stores byte 0 of every word, then byte 1, … so that zstd sees the ranks' high bytes (nearly
    all zero: frequent ids have small ranks) and the value steps as separate homogeneous runs: 10–12 bytes
    less per position and pass than plain words on the Kneser-Ney family, at no measurable decode cost
    (docs/cache-format.md#size). Readers need pyarrow ≥ 16 (BYTE_STREAM_SPLIT for integer columns)."""
    packed = {topk_codes_column(name) for name in PASSES}
    return [field.name for field in schema if field.name in packed]


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """Columns worth Parquet dictionary encoding: integer, boolean and string columns, except those written
    BYTE_STREAM_SPLIT.

    Top-k vectors, log-partitions and float columns are nearly all distinct; dictionary pages only cost
    space and decode time there (measured: 6 % larger shards and slower reads at k = 64).
    """
    split = set(byte_stream_split_columns(schema))
    names = []
    for field in schema:
        type_ = field.type
        if pa.types.is_list(type_):
            type_ = type_.value_type
        if pa.types.is_fixed_size_list(type_) or pa.types.is_floating(type_) or field.name in split:
            continue
        names.append(field.name)
    return names


def _open_writer(path: Path, schema: pa.Schema, compression_level: int) -> pq.ParquetWriter:
    return pq.ParquetWriter(
        str(path),
        schema,
        compression="zstd",
        compression_level=compression_level,
        use_dictionary=dictionary_columns(schema),
        column_encoding={f"{name}.list.element": "BYTE_STREAM_SPLIT" for name in byte_stream_split_columns(schema)}
        or None,
    )


def _conform(table: pa.Table, schema: pa.Schema, file_name: str) -> pa.Table:
    differences = schemas_match(table.schema, schema)
    if differences:
        raise SchemaError(
            f"shard {file_name}: table does not match the cache schema: " + "; ".join(differences)
        )
    return table.cast(schema) if not table.schema.equals(schema, check_metadata=True) else table


def write_shard(
    directory: str | os.PathLike[str] | Store,
    file_name: str,
    data: TableData,
    *,
    schema: pa.Schema | None = None,
    row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
    compression_level: int = DEFAULT_COMPRESSION_LEVEL,
    overwrite: bool = False,
    facts: Mapping[str, Any] | None = None,
) -> ShardInfo:
    """Write one zstd Parquet shard atomically and return its manifest entry.

    Args:
        directory: the cache directory: a path, a URL or a :class:`~cache_schema.store.Store` (created if
            missing).
        file_name: the shard's name in the cache, ``data/<name>`` as a build names it
            (:func:`cache_schema.directory.shard_entry`) or a plain file name; it becomes the entry's ``file``.
        data: one table, or an iterable of tables / record batches streamed into the shard.
        schema: the cache schema; defaults to the first table's schema. Every table must match it.
        row_group_rows: rows per Parquet row group (the reader's unit of streaming).
        compression_level: zstd level.
        overwrite: replace an existing shard of the same name instead of refusing.
        facts: the manifest facts recorded in the shard's key-value metadata (format v2,
            :func:`cache_schema.shard_facts.shard_facts`; the reader cross-checks them with the manifest).

    The shard is written to a local temporary file (next to the target on a local store, in the system's
    temporary directory for a remote one), hashed, and then renamed or uploaded in one piece. If ``data``
    raises, or writing fails, the temporary file is removed and no shard appears under ``file_name``; the
    original exception propagates.
    """
    if not is_shard_name(file_name):
        raise ShardWriteError(f"shard file name must be a plain, non-hidden name, or one under {DATA_DIR}/; "
                              f"got {file_name!r}")
    if row_group_rows < 1:
        raise ShardWriteError(f"row_group_rows must be >= 1; got {row_group_rows}")
    store = open_store(directory)
    store.makedirs(file_name.rpartition("/")[0])
    final = store.display(file_name)
    if not overwrite and store.is_file(file_name):
        raise ShardWriteError(f"shard {final} already exists; pass overwrite=True to replace it")

    with store.spool(file_name) as tmp:
        writer: pq.ParquetWriter | None = None
        rows = 0
        num_targets = 0
        try:
            pending: list[pa.Table] = []
            pending_rows = 0

            def flush(force: bool) -> None:
                nonlocal pending, pending_rows
                if not pending or (pending_rows < row_group_rows and not force):
                    return
                buffered = pa.concat_tables(pending)
                full = (pending_rows // row_group_rows) * row_group_rows
                cut = pending_rows if force else full
                writer.write_table(buffered.slice(0, cut), row_group_size=row_group_rows)
                rest = buffered.slice(cut)
                pending, pending_rows = ([rest], rest.num_rows) if rest.num_rows else ([], 0)

            for table in _as_tables(data):
                if schema is None:
                    schema = table.schema
                table = _conform(table, schema, file_name)
                if writer is None:
                    writer = _open_writer(tmp, with_facts(schema, facts), compression_level)
                rows += table.num_rows
                num_targets += num_target_items(table)
                pending.append(table)
                pending_rows += table.num_rows
                flush(force=False)
            if writer is None:
                if schema is None:
                    raise ShardWriteError(
                        f"shard {file_name}: no data and no schema; cannot write an empty shard"
                    )
                writer = _open_writer(tmp, with_facts(schema, facts), compression_level)
            flush(force=True)
            writer.close()
            writer = None
            with open(tmp, "rb") as handle:
                digest = sha256_of_stream(handle)
                os.fsync(handle.fileno())
            size = tmp.stat().st_size
            store.upload(tmp, file_name)
        except BaseException:
            if writer is not None:
                try:
                    writer.close()
                except Exception:  # the original error matters, not the one from closing a broken file
                    logger.debug(
                        "closing the Parquet writer of %s after a failure also failed", tmp, exc_info=True
                    )
            raise
    info = ShardInfo(file=file_name, rows=rows, bytes=size, sha256=digest, num_targets=num_targets)
    logger.debug("wrote %s: %d rows, %d bytes, %d targets", final, rows, size, num_targets)
    return info


class AsyncShardWriter:
    """Compress and write shards on a background thread while the producer computes the next one.

    ``submit`` hands a table (or a list of row mappings, built into a table on the background thread) to a
    bounded queue; it blocks when ``max_pending`` shards are waiting, which bounds memory. An error on the
    background thread is raised by the caller's next ``submit`` or by ``close`` as :class:`ShardWriteError`
    chained to the original; shards submitted after a failure are not written.

    Use as a context manager or call ``close()``; ``close`` returns the written shards in submission order.
    """

    _STOP = object()

    def __init__(
        self,
        directory: str | os.PathLike[str] | Store,
        *,
        schema: pa.Schema | None = None,
        row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
        compression_level: int = DEFAULT_COMPRESSION_LEVEL,
        max_pending: int = 2,
        overwrite: bool = False,
        facts: Mapping[str, Any] | None = None,
    ) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1; got {max_pending}")
        self.directory = open_store(directory)
        self.schema = schema
        self._options: dict[str, Any] = {
            "row_group_rows": row_group_rows,
            "compression_level": compression_level,
            "overwrite": overwrite,
            "facts": facts,
        }
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_pending)
        self._infos: list[ShardInfo] = []
        self._error: tuple[str, BaseException] | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="tide-shard-writer", daemon=True)
        self._thread.start()

    @property
    def infos(self) -> list[ShardInfo]:
        """Shards written so far, in submission order."""
        return list(self._infos)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is self._STOP:
                    return
                if self._error is not None:
                    continue  # a previous shard failed: drop the rest without writing
                file_name, data = item
                try:
                    if not isinstance(data, (pa.Table, pa.RecordBatch)):
                        data = table_from_rows(data, self.schema)
                    info = write_shard(self.directory, file_name, data, schema=self.schema, **self._options)
                    self._infos.append(info)
                except BaseException as exc:  # handed to the producer thread
                    self._error = (file_name, exc)
            finally:
                self._queue.task_done()

    def _raise_pending_error(self) -> None:
        if self._error is not None:
            file_name, exc = self._error
            raise ShardWriteError(f"background write of shard {file_name} failed: {exc}") from exc

    def submit(self, file_name: str, data: pa.Table | Sequence[Mapping[str, Any]]) -> None:
        """Queue one shard; raises the error of an earlier background write, if any."""
        if self._closed:
            raise ShardWriteError("submit() called on a closed AsyncShardWriter")
        self._raise_pending_error()
        if not isinstance(data, (pa.Table, pa.RecordBatch)) and self.schema is None:
            raise ShardWriteError("submitting rows needs the writer's schema (AsyncShardWriter(schema=...))")
        self._queue.put((file_name, data))

    def close(self) -> list[ShardInfo]:
        """Wait for queued shards, stop the thread, raise any background error, return the shard entries."""
        if not self._closed:
            self._closed = True
            self._queue.put(self._STOP)
            self._thread.join()
        self._raise_pending_error()
        return self.infos

    def __enter__(self) -> AsyncShardWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
            return
        # The body failed: stop the thread but let the body's exception propagate, not a writer error.
        try:
            self.close()
        except ShardWriteError:
            logger.exception("background shard write also failed while handling another error")
