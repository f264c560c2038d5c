"""The teacher's LM-head file of an exact-target cache: its name, its header and the checks against the manifest.

``teacher_head.safetensors`` holds one tensor, ``weight`` (shared_vocab_size, hidden_size), the teacher's
output-embedding rows of the shared vocabulary in the teacher's dtype. The manifest records its size and
SHA-256 (``targets.exact``); training and ``tide-cache validate`` refuse a file that is missing or differs.
The header is read here without torch: a safetensors file starts with the byte length of its JSON header
(unsigned 64-bit little endian), then that header, then the raw tensor bytes.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

from cache_schema.errors import CacheError
from cache_schema.exact_targets import ExactInfo
from cache_schema.files import sha256_of_file
from cache_schema.store import LocalStore, Store, open_store

HEAD_FILE = "teacher_head.safetensors"
HEAD_TENSOR = "weight"
# safetensors' names of the head dtypes the manifest records
SAFETENSORS_DTYPES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}
_MAX_HEADER = 1 << 24  # a one-tensor header is a few hundred bytes; anything near this is not a head file


class HeadFileError(CacheError):
    """The LM-head file of an exact-target cache is missing, altered or not the head the manifest describes."""


def local_copy(store: Store, name: str) -> Path:
    """A local path holding file ``name`` of ``store``: the file itself on a local store, else a download
    into a fresh temporary directory."""
    if isinstance(store, LocalStore):
        return store.local_path(name)
    path = Path(tempfile.mkdtemp(prefix="tide-head-")) / name
    store.download(name, path)
    return path


def verify_head_file(root: str | os.PathLike[str] | Store, info: ExactInfo, *,
                     verify_checksum: bool = True) -> Path:
    """A local path of the head file once it exists with the manifest's size (and SHA-256); else
    :class:`HeadFileError`. A cache on an object store has its head file downloaded once to a temporary
    directory (it is read whole anyway: training keeps the head in memory)."""
    store = open_store(root)
    where = store.display(info.head_file)
    if not store.is_file(info.head_file):
        raise HeadFileError(f"{where}: the teacher LM-head file of this exact-target cache is missing; copy it "
                            "along with the shards or rebuild the cache")
    size = store.size(info.head_file)
    if size != info.head_bytes:
        raise HeadFileError(f"{where}: the teacher LM-head file has {size} bytes, the manifest says "
                            f"{info.head_bytes}: it was altered or truncated; restore it or rebuild the cache")
    path = local_copy(store, info.head_file)
    if verify_checksum:
        found = sha256_of_file(path)
        if found != info.head_sha256:
            raise HeadFileError(f"{where}: the teacher LM-head file's SHA-256 {found[:16]}… differs from the "
                                f"manifest's {info.head_sha256[:16]}…: it was altered; restore it or rebuild the cache")
    return path


def read_head_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor names → dtype, shape, data offsets)."""
    path = Path(path)
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) != 8:
            raise HeadFileError(f"{path}: too short to be a safetensors file")
        (length,) = struct.unpack("<Q", prefix)
        if not 0 < length < _MAX_HEADER:
            raise HeadFileError(f"{path}: not a safetensors file (header length {length})")
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HeadFileError(f"{path}: the safetensors header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise HeadFileError(f"{path}: the safetensors header is not a JSON object")
    return header


def check_head_header(path: str | os.PathLike[str], info: ExactInfo, shared_vocab_size: int) -> None:
    """The file holds ``weight`` of the manifest's dtype and shape (shared_vocab_size, hidden_size)."""
    header = read_head_header(path)
    entry = header.get(HEAD_TENSOR)
    if not isinstance(entry, dict):
        raise HeadFileError(f"{path}: no tensor {HEAD_TENSOR!r} (found {sorted(k for k in header if k != '__metadata__')})")
    expected_shape = [int(shared_vocab_size), info.hidden_size]
    if entry.get("shape") != expected_shape or entry.get("dtype") != SAFETENSORS_DTYPES.get(info.head_dtype):
        raise HeadFileError(f"{path}: tensor {HEAD_TENSOR!r} is {entry.get('dtype')} {entry.get('shape')}, the manifest "
                            f"describes {SAFETENSORS_DTYPES.get(info.head_dtype)} {expected_shape}")


def head_problems(root: str | os.PathLike[str] | Store, info: ExactInfo | None, shared_vocab_size: int | None, *,
                  verify_checksum: bool) -> list[str]:
    """What is wrong with a cache's head file, one line each (empty for a cache without exact targets)."""
    if info is None:
        return []
    try:
        path = verify_head_file(root, info, verify_checksum=verify_checksum)
        check_head_header(path, info, int(shared_vocab_size or 0))
    except HeadFileError as exc:
        return [str(exc)]
    return []


__all__ = ["HEAD_FILE", "HEAD_TENSOR", "SAFETENSORS_DTYPES", "HeadFileError", "check_head_header", "head_problems", "local_copy",
           "read_head_header", "verify_head_file"]
