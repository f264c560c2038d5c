"""Exact targets on disk: the teacher's final normed hidden state per target item, and what the manifest says.

With the teacher's LM-head rows for the shared vocabulary stored once in the cache
(:mod:`cache_schema.head_file`), the hidden state h of a target item gives the teacher's logits over the
whole shared vocabulary as ``W_shared · h``, at any temperature, so no tail has to be reconstructed. A pass
``P`` stores (see ``docs/cache-format.md``, "Exact tier"):

* ``bfloat16``: ``P_hidden`` ``list<fixed_size_list<int32>[H/2]>``, the bf16 bit patterns of h (the teacher's
  own precision on a GPU), two per little-endian 32-bit word, value 2j in the low half of word j (2·H bytes
  per item before compression);
* ``int8-rowscale``: ``P_hidden`` ``list<fixed_size_list<int32>[H/4]>``, int8 codes c four per little-endian
  word (value 4j in the lowest byte of word j), and ``P_hidden_scale`` ``list<float32>`` per item:
  h ≈ c · scale with scale = max|h| / 127 and c = round(h / scale) (H + 4 bytes).

Why packed words: Parquet has no 8- or 16-bit physical type, so an int8 or int16 column is stored as 32-bit
values and zstd wins back only part of the padding (measured at H = 4096: 4.9 KB per int8 item instead of
3.4 KB packed, 7.6 KB per bf16 item instead of 6.4 KB).

The columns go after every other column of a ``shared`` schema, one group per pass in pass order. Stored alone
(``targets.sparse`` absent) or next to the sparse targets. Everything here is numpy and pyarrow.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from cache_schema.errors import ManifestError, SchemaError
from cache_schema.schemas import PASSES

HIDDEN_BF16 = "bfloat16"
HIDDEN_INT8 = "int8-rowscale"
HIDDEN_ENCODINGS: tuple[str, ...] = (HIDDEN_BF16, HIDDEN_INT8)
HEAD_DTYPES: tuple[str, ...] = ("bfloat16", "float16", "float32")
INT8_LEVELS = 127  # codes lie in [−127, 127]: symmetric, so −h is stored as −c


def hidden_column(pass_name: str) -> str:
    """Name of the hidden-state column of a pass (exact targets)."""
    return f"{pass_name}_hidden"


def hidden_scale_column(pass_name: str) -> str:
    """Name of the per-item scale column of a pass (exact targets, ``int8-rowscale``)."""
    return f"{pass_name}_hidden_scale"


# ------------------------------------------------------------------------------------------------- bfloat16


def bf16_bits(values: np.ndarray) -> np.ndarray:
    """int16 bit patterns of float32 ``values`` rounded to bfloat16 (round to nearest, ties to even).

    Exact for values that are bfloat16 already (a teacher's bf16 hidden state cast to float32)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if not np.isfinite(values).all():
        raise SchemaError("hidden states must be finite to be stored as bfloat16")
    bits = values.view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16).view(np.int16)


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """float32 values of int16 bfloat16 bit patterns (exact)."""
    return (np.asarray(bits, dtype=np.int16).view(np.uint16).astype(np.uint32) << 16).view(np.float32)


# ------------------------------------------------------------------------------------------------- arrays


@dataclass
class HiddenArrays:
    """Stored hidden states of N items: ``codes`` (N, H) int16 bf16 bit patterns or int8 codes; ``scale``
    float32 (N,) for ``int8-rowscale``, None for ``bfloat16``."""

    codes: np.ndarray
    scale: np.ndarray | None = None

    @property
    def num_items(self) -> int:
        return int(self.codes.shape[0])

    def values(self) -> np.ndarray:
        """The hidden states as float32 (N, H)."""
        if self.scale is None:
            return bf16_to_float32(self.codes)
        return self.codes.astype(np.float32) * self.scale[:, None]

    def select(self, keep: np.ndarray) -> HiddenArrays:
        """The items where ``keep`` (bool (N,) or int indices) says."""
        return HiddenArrays(self.codes[keep], None if self.scale is None else self.scale[keep])

    @staticmethod
    def concat(parts: Sequence[HiddenArrays], codec: HiddenCodec) -> HiddenArrays:
        if not parts:
            return codec.empty()
        scale = None if parts[0].scale is None else np.concatenate([p.scale for p in parts])
        return HiddenArrays(np.concatenate([p.codes for p in parts]), scale)


class HiddenCodec:
    """One encoding of a pass's hidden-state columns: fields, quantiser, encoder and decoder of any rows."""

    def __init__(self, encoding: str, hidden_size: int) -> None:
        if encoding not in HIDDEN_ENCODINGS:
            raise SchemaError(f"unknown hidden-state encoding {encoding!r}; expected one of {list(HIDDEN_ENCODINGS)}")
        if isinstance(hidden_size, bool) or not isinstance(hidden_size, int) or hidden_size < 1:
            raise SchemaError(f"hidden_size must be a positive integer; got {hidden_size!r}")
        self.encoding = encoding
        self.hidden_size = hidden_size
        self.code_dtype = np.dtype("<i2" if encoding == HIDDEN_BF16 else "i1")
        per_word = 4 // self.code_dtype.itemsize
        if hidden_size % per_word:
            raise SchemaError(f"hidden_size {hidden_size} must be a multiple of {per_word} for {encoding!r} (codes are "
                              "packed into 32-bit words)")
        self.words = hidden_size // per_word  # 32-bit words per stored hidden state

    @property
    def has_scale(self) -> bool:
        return self.encoding == HIDDEN_INT8

    def columns(self, pass_name: str) -> list[str]:
        return [hidden_column(pass_name), *([hidden_scale_column(pass_name)] if self.has_scale else [])]

    def fields(self, pass_name: str) -> list[pa.Field]:
        fields = [pa.field(hidden_column(pass_name), pa.list_(pa.list_(pa.int32(), self.words)), nullable=False)]
        if self.has_scale:
            fields.append(pa.field(hidden_scale_column(pass_name), pa.list_(pa.float32()), nullable=False))
        return fields

    def empty(self) -> HiddenArrays:
        return HiddenArrays(np.zeros((0, self.hidden_size), dtype=self.code_dtype),
                            np.zeros(0, dtype=np.float32) if self.has_scale else None)

    def quantise(self, values: np.ndarray) -> HiddenArrays:
        """The stored form of float32 hidden states (N, H)."""
        values = np.asarray(values, dtype=np.float32)
        if values.ndim != 2 or values.shape[1] != self.hidden_size:
            raise SchemaError(f"hidden states must be (N, {self.hidden_size}); got shape {values.shape}")
        if self.encoding == HIDDEN_BF16:
            return HiddenArrays(bf16_bits(values))
        if not np.isfinite(values).all():
            raise SchemaError("hidden states must be finite to be stored as int8")
        peak = np.abs(values).max(axis=1) if values.shape[0] else np.zeros(0, dtype=np.float32)
        scale = (peak / INT8_LEVELS).astype(np.float32)
        safe = np.where(scale > 0, scale, np.float32(1.0))
        codes = np.clip(np.rint(values / safe[:, None]), -INT8_LEVELS, INT8_LEVELS).astype(np.int8)
        return HiddenArrays(codes, scale)

    def encode(self, arrays: HiddenArrays, pass_name: str) -> dict[str, np.ndarray]:
        """One row's pass columns from its items' stored hidden states."""
        codes = np.ascontiguousarray(arrays.codes, dtype=self.code_dtype)
        out = {hidden_column(pass_name): codes.view("<i4").reshape(-1, self.words).astype(np.int32, copy=False)}
        if self.has_scale:
            out[hidden_scale_column(pass_name)] = arrays.scale.astype(np.float32, copy=False)
        return out

    def unpack(self, words: np.ndarray) -> np.ndarray:
        """Codes (N, H) (int16 bf16 patterns or int8) from packed 32-bit words (N, H/k) or flat."""
        packed = np.ascontiguousarray(words, dtype="<i4").reshape(-1, self.words)
        return packed.view(self.code_dtype).reshape(-1, self.hidden_size)

    def decode(self, columns: Mapping[str, np.ndarray], pass_name: str) -> HiddenArrays:
        """Stored hidden states of any number of rows' items from a pass's columns (flat or (n, H/k) words)."""
        words = np.asarray(columns[hidden_column(pass_name)])
        if words.dtype != np.int32:
            raise SchemaError(f"pass {pass_name!r}: hidden states are stored as {words.dtype}, expected int32 words")
        if words.size % self.words:
            raise SchemaError(f"pass {pass_name!r}: {words.size} words are not a whole number of {self.words}-word "
                              "hidden states")
        codes = self.unpack(words)
        scale = None
        if self.has_scale:
            scale = np.asarray(columns[hidden_scale_column(pass_name)], dtype=np.float32).reshape(-1)
            if scale.shape[0] != codes.shape[0]:
                raise SchemaError(f"pass {pass_name!r}: {scale.shape[0]} scales for {codes.shape[0]} hidden states")
        return HiddenArrays(codes, scale)


def with_exact_columns(schema: pa.Schema, passes: Iterable[str], codec: HiddenCodec) -> pa.Schema:
    """``schema`` with the exact-target columns of ``passes`` appended (in the order of :data:`PASSES`)."""
    fields = list(schema)
    wanted = set(passes)
    for name in (p for p in PASSES if p in wanted):
        fields += codec.fields(name)
    return pa.schema(fields, metadata=schema.metadata)


# ------------------------------------------------------------------------------------------------- manifest


@dataclass
class ExactInfo:
    """A ``shared`` cache's exact targets (manifest ``targets.exact``): the hidden-state encoding and width,
    and the LM-head file (name inside the cache, size, SHA-256, dtype; its rows are the shared vocabulary)."""

    hidden_encoding: str
    hidden_size: int
    head_file: str
    head_bytes: int
    head_sha256: str
    head_dtype: str

    def codec(self) -> HiddenCodec:
        return HiddenCodec(self.hidden_encoding, self.hidden_size)

    def check(self) -> None:
        where = "manifest field 'targets.exact"
        if self.hidden_encoding not in HIDDEN_ENCODINGS:
            raise ManifestError(f"{where}.hidden_encoding' must be one of {list(HIDDEN_ENCODINGS)}; "
                                f"got {self.hidden_encoding!r}")
        for name in ("hidden_size", "head_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ManifestError(f"{where}.{name}' must be a positive integer; got {value!r}")
        file = self.head_file
        if not isinstance(file, str) or not file or "/" in file or file.startswith("."):
            raise ManifestError(f"{where}.head_file' must be a plain file name; got {file!r}")
        if not isinstance(self.head_sha256, str) or len(self.head_sha256) != 64:
            raise ManifestError(f"{where}.head_sha256' must be 64 hex digits; got {self.head_sha256!r}")
        if self.head_dtype not in HEAD_DTYPES:
            raise ManifestError(f"{where}.head_dtype' must be one of {list(HEAD_DTYPES)}; got {self.head_dtype!r}")


def bytes_per_item(codec: HiddenCodec) -> int:
    """Uncompressed bytes one item's hidden state takes (codes and scale)."""
    return codec.hidden_size * codec.code_dtype.itemsize + (4 if codec.has_scale else 0)


__all__ = [
    "HEAD_DTYPES",
    "HIDDEN_BF16",
    "HIDDEN_ENCODINGS",
    "HIDDEN_INT8",
    "INT8_LEVELS",
    "ExactInfo",
    "HiddenArrays",
    "HiddenCodec",
    "bf16_bits",
    "bf16_to_float32",
    "bytes_per_item",
    "hidden_column",
    "hidden_scale_column",
    "with_exact_columns",
]
