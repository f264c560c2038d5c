"""The file-level checks of one listed shard, shared by the reader (which refuses the first problem) and
``validate`` (which reports them all): presence, size, SHA-256, Parquet readability (the footer), row count,
schema, and the manifest facts the shard records (:mod:`cache_schema.shard_facts`). Without the SHA-256 the checks read only the file's size and its Parquet footer: what the trainer's
start-up can afford on a cache of hundreds of GB (the reader hashes each shard when it first reads it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow.parquet as pq

from cache_schema.manifest import Manifest
from cache_schema.schemas import schemas_match
from cache_schema.shard_facts import fact_problems
from cache_schema.store import Store

FIX = "rebuild this shard with `tide-cache build` or restore it from a good copy"


@dataclass
class ShardFileCheck:
    """What the checks found: ``problems`` (messages without the shard name, each ending in the fix), the
    opened ``parquet`` file (None when the shard is missing or unreadable) and whether its schema is the
    manifest's (the content checks need it)."""

    problems: list[str] = field(default_factory=list)
    parquet: pq.ParquetFile | None = None
    schema_matches: bool = False
    source: Any = None  # the open file under ``parquet``

    def close(self) -> None:
        """Close the shard's file (the footer stays available as ``parquet.metadata``)."""
        if self.source is not None:
            self.source.close()


def checksum_problem(store: Store, manifest: Manifest, index: int) -> str | None:
    """The SHA-256 check of shard ``index``: None when the file's hash is the manifest's, else the problem."""
    entry = manifest.shards[index]
    digest = store.sha256(entry.file)
    return None if digest == entry.sha256 else f"sha256: expected {entry.sha256}, found {digest}; {FIX}"


def check_shard_file(store: Store, manifest: Manifest, index: int, *, verify_checksums: bool) -> ShardFileCheck:
    """Check shard ``index`` of ``manifest`` in the cache at ``store`` against its manifest entry."""
    entry = manifest.shards[index]
    out = ShardFileCheck()
    size = store.size(entry.file)
    if size is None:
        out.problems.append(f"listed in the manifest but {store.display(entry.file)} does not exist; {FIX}")
        return out
    if size != entry.bytes:
        out.problems.append(f"size: expected {entry.bytes} bytes, found {size} (truncated or overwritten); {FIX}")
    if verify_checksums:
        problem = checksum_problem(store, manifest, index)
        if problem is not None:
            out.problems.append(problem)
    try:
        out.source = store.open_input(entry.file, size=size)
        parquet = pq.ParquetFile(out.source)
        rows = parquet.metadata.num_rows
        found_schema = parquet.schema_arrow
    except Exception as exc:  # damaged footers raise Arrow, OS and decoding errors alike
        out.problems.append(f"not a readable Parquet file ({type(exc).__name__}: {exc}); {FIX}")
        out.close()
        return out
    if rows != entry.rows:
        out.problems.append(f"row count: manifest says {entry.rows} rows, the shard has {rows}; {FIX}")
    differences = schemas_match(found_schema, manifest.arrow_schema())
    if differences:
        out.problems.append(f"schema disagrees with the manifest: {'; '.join(differences)}; {FIX}")
    out.problems += fact_problems(manifest, parquet.metadata.metadata)
    out.parquet = parquet
    out.schema_matches = not differences
    return out
