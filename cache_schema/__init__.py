"""The on-disk logits cache (format v2; v1 caches are read): Arrow schemas, manifest, atomic writer, reader,
validation.

Importing the package does not import torch; ``CacheReader``, ``Ragged``, ``pad_ragged`` and
``table_to_torch`` load ``cache_schema.reader`` (and torch) on first access.
"""

from __future__ import annotations

from typing import Any

from cache_schema.directory import CacheDirectory, shard_file_name, write_manifest
from cache_schema.errors import (
    CacheError,
    ManifestError,
    RowError,
    SchemaError,
    ShardError,
    ShardWriteError,
    UnknownFormatVersionError,
)
from cache_schema.manifest import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    Manifest,
    NoiseInfo,
    ShardInfo,
    StudentInfo,
    TargetsInfo,
    TeacherInfo,
)
from cache_schema.schemas import cross_schema, schema_for, shared_schema, table_from_columns, table_from_rows
from cache_schema.validate import Problem, validate_cache
from cache_schema.writer import AsyncShardWriter, write_shard

_READER_NAMES = ("CacheReader", "Ragged", "RowGroupUnit", "pad_ragged", "table_to_torch")

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "AsyncShardWriter",
    "CacheDirectory",
    "CacheError",
    "Manifest",
    "ManifestError",
    "NoiseInfo",
    "Problem",
    "RowError",
    "SchemaError",
    "ShardError",
    "ShardInfo",
    "ShardWriteError",
    "StudentInfo",
    "TargetsInfo",
    "TeacherInfo",
    "UnknownFormatVersionError",
    "cross_schema",
    "schema_for",
    "shard_file_name",
    "shared_schema",
    "table_from_columns",
    "table_from_rows",
    "validate_cache",
    "write_manifest",
    "write_shard",
    *_READER_NAMES,
]


def __getattr__(name: str) -> Any:
    if name in _READER_NAMES:
        from cache_schema import reader

        return getattr(reader, name)
    raise AttributeError(f"module 'cache_schema' has no attribute {name!r}")
