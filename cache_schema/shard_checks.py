"""The file-level checks of one listed shard, shared by the reader (which refuses the first problem) and
``validate`` (which reports them all): presence, size, SHA-256, Parquet readability, row count, schema."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from cache_schema.files import sha256_of_file
from cache_schema.manifest import Manifest
from cache_schema.schemas import schemas_match

FIX = "rebuild this shard with `tide-cache build` or restore it from a good copy"


@dataclass
class ShardFileCheck:
    """What the checks found: ``problems`` (messages without the shard name, each ending in the fix), the
    opened ``parquet`` file (None when the shard is missing or unreadable) and whether its schema is the
    manifest's (the content checks need it)."""

    problems: list[str] = field(default_factory=list)
    parquet: pq.ParquetFile | None = None
    schema_matches: bool = False


def check_shard_file(root: Path, manifest: Manifest, index: int, *, verify_checksums: bool) -> ShardFileCheck:
    """Check shard ``index`` of ``manifest`` under ``root`` against its manifest entry."""
    entry = manifest.shards[index]
    path = root / entry.file
    out = ShardFileCheck()
    if not path.is_file():
        out.problems.append(f"listed in the manifest but {path} does not exist; {FIX}")
        return out
    size = path.stat().st_size
    if size != entry.bytes:
        out.problems.append(f"size: expected {entry.bytes} bytes, found {size} (truncated or overwritten); {FIX}")
    if verify_checksums:
        digest = sha256_of_file(path)
        if digest != entry.sha256:
            out.problems.append(f"sha256: expected {entry.sha256}, found {digest}; {FIX}")
    try:
        parquet = pq.ParquetFile(path)
        rows = parquet.metadata.num_rows
        found_schema = parquet.schema_arrow
    except Exception as exc:  # damaged footers raise Arrow, OS and decoding errors alike
        out.problems.append(f"not a readable Parquet file ({type(exc).__name__}: {exc}); {FIX}")
        return out
    if rows != entry.rows:
        out.problems.append(f"row count: manifest says {entry.rows} rows, the shard has {rows}; {FIX}")
    differences = schemas_match(found_schema, manifest.arrow_schema())
    if differences:
        out.problems.append(f"schema disagrees with the manifest: {'; '.join(differences)}; {FIX}")
    out.parquet = parquet
    out.schema_matches = not differences
    return out
