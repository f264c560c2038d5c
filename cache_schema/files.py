"""Durable file primitives: atomic replacement, directory flushes and content hashes.

Everything the project writes that a reader may open while (or after) the writer dies goes through
:func:`atomic_write_bytes` / :func:`atomic_write_text` / :func:`atomic_write_json`: the bytes go to a
hidden temporary file in the same directory, are flushed to disk, and the file is renamed over its final
name, so a reader sees either the old file or the whole new one. The temporary file is created with the
permissions an ordinary ``open(..., "w")`` would give (``0o666`` minus the umask), not ``mkstemp``'s
``0o600``, so colleagues on a shared file system can read what a build or a training run wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, BinaryIO

HASH_BLOCK = 1 << 20  # bytes read per hashing step: large enough to stream at disk speed


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Flush a directory entry (a rename into it) to disk; a no-op where directories cannot be opened."""
    try:
        fd = os.open(os.fspath(directory), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_path_for(final_path: str | os.PathLike[str]) -> Path:
    """A new, unique hidden file next to ``final_path`` (same directory, so a rename onto it is atomic).

    The name is ``.<final name>.<random>.tmp``; the file exists (empty) when this returns and has the
    umask-respecting mode of a normally created file.
    """
    final = Path(final_path)
    while True:
        candidate = final.with_name(f".{final.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return candidate


def temp_files_for(final_path: str | os.PathLike[str]) -> list[Path]:
    """Temporary files that :func:`temp_path_for` made for ``final_path`` and that still exist."""
    final = Path(final_path)
    return sorted(final.parent.glob(f".{final.name}.*.tmp"))


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see either the old file or the whole new one, never a part."""
    final = Path(path)
    tmp = temp_path_for(final)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(final.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """:func:`atomic_write_bytes` of UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], payload: Any) -> None:
    """:func:`atomic_write_text` of ``payload`` as indented, key-sorted JSON (NaN refused), newline-ended."""
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, allow_nan=False) + "\n")


def sha256_of_stream(handle: BinaryIO, *, block: int = HASH_BLOCK) -> str:
    """Hex SHA-256 of what remains to be read from a binary file object, read ``block`` bytes at a time."""
    digest = hashlib.sha256()
    while chunk := handle.read(block):
        digest.update(chunk)
    return digest.hexdigest()


def sha256_of_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in :data:`HASH_BLOCK` blocks."""
    with open(path, "rb") as handle:
        return sha256_of_stream(handle)
