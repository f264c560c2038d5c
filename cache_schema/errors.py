"""Exceptions raised by the cache format package.

Every error says which file (manifest or shard) is at fault, what was expected, what was found and, where
there is one, how to fix it.
"""

from __future__ import annotations


class CacheError(Exception):
    """Base class of every cache format error."""


class ManifestError(CacheError):
    """``manifest.json`` is missing, unreadable or lacks a required field."""


class UnknownFormatVersionError(ManifestError):
    """The manifest declares a format version this library cannot read."""

    def __init__(self, path: str, found: object, supported: tuple[int, ...]) -> None:
        self.path = path
        self.found = found
        self.supported = supported
        versions = ", ".join(str(v) for v in supported)
        super().__init__(
            f"{path}: format_version {found!r} is not supported by this library (supported: {versions}); "
            "read it with the tide-offline release that wrote it or rebuild the cache with this one"
        )


class SchemaError(CacheError):
    """A table or shard does not have the columns and types the manifest implies."""


class BatchRowError(SchemaError):
    """A problem in one of several rows checked together; ``row`` is its index among them."""

    def __init__(self, row: int, message: str) -> None:
        super().__init__(message)
        self.row = row


class RowError(CacheError):
    """A row handed to the table builder is missing a column or has the wrong shape or type."""


class ShardError(CacheError):
    """A shard is missing or its bytes, checksum or row count disagree with the manifest."""


class ShardWriteError(CacheError):
    """Writing a shard failed; no partial shard was left under its final name."""


class StoreError(CacheError):
    """A cache location cannot be reached: an unknown URL, a missing filesystem package, a failed request."""


class ContentError(CacheError):
    """A row group read for training breaks a content invariant of the format, or its columns do not decode;
    the message names the shard, the row group and (for content) the row."""
