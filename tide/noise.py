"""Counter-based noise: every random number is a pure function of integers (docs/design.md#noise).

A uniform draw is ``uniform(seed, sample_key, replica, stream, index)``. It does not depend on batch size,
process count, device, library version or the order in which samples are processed, so stage two (and anyone
else) can re-derive exactly the noise stage one used. The generator is named ``"splitmix64-v1"`` in cache
manifests; ``docs/cache-format.md`` (section "Noise generator") specifies it bit for bit.

Construction (all arithmetic modulo 2**64):

* ``mix64(z)`` is the splitmix64 output function (two xor-shift-multiply rounds and a final xor-shift).
* The four key fields are absorbed in order: ``h = 0``; for ``x`` in (seed, sample_key, replica, stream):
  ``h = mix64((h + GAMMA) ^ x)``.
* Draw ``index`` is ``mix64(h + (index + 1) * GAMMA)``: the ``index``-th output (0-based) of a splitmix64
  generator whose state starts at ``h``.
* The top 53 bits give the float: ``(bits >> 11) * 2**-53``, in [0, 1).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

GENERATOR_NAME = "splitmix64-v1"

STREAM_TIMESTEP = 0
STREAM_MASK = 1
STREAM_SPLIT = 2

GAMMA = 0x9E3779B97F4A7C15
MIX_MULT_1 = 0xBF58476D1CE4E5B9
MIX_MULT_2 = 0x94D049BB133111EB

_U64_LIMIT = 1 << 64
_KEY_BITS = 63

_GAMMA_U64 = np.uint64(GAMMA)
_M1_U64 = np.uint64(MIX_MULT_1)
_M2_U64 = np.uint64(MIX_MULT_2)
_SHIFT_30 = np.uint64(30)
_SHIFT_27 = np.uint64(27)
_SHIFT_31 = np.uint64(31)
_SHIFT_11 = np.uint64(11)
_TWO_POW_MINUS_53 = 2.0**-53


def mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64 output function on a uint64 array (wrapping arithmetic), same shape out."""
    z = np.asarray(z)
    if z.dtype != np.uint64:
        raise ValueError(f"mix64 expects a uint64 array, got dtype {z.dtype}")
    with np.errstate(over="ignore"):
        z = (z ^ (z >> _SHIFT_30)) * _M1_U64
        z = (z ^ (z >> _SHIFT_27)) * _M2_U64
        return z ^ (z >> _SHIFT_31)


def _check_u64(name: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if value < 0:
        raise ValueError(f"{name} must be non-negative, got {value}")
    if value >= _U64_LIMIT:
        raise ValueError(f"{name} must be below 2**64, got {value}")
    return value


def _stream_state(seed: int, sample_key: int, replica: int, stream: int) -> np.uint64:
    """Absorb the four key fields into the 64-bit starting state of one splitmix64 sequence."""
    fields = (
        _check_u64("seed", seed),
        _check_u64("sample_key", sample_key),
        _check_u64("replica", replica),
        _check_u64("stream", stream),
    )
    state = np.zeros(1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for field in fields:
            state = mix64((state + _GAMMA_U64) ^ np.uint64(field))
    return state[0]


def _index_array(index: Any) -> np.ndarray:
    arr = np.asarray(index)
    if arr.size == 0:
        return arr.astype(np.uint64).reshape(arr.shape)
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iu":
        raise ValueError(f"index must be an integer or an integer array, got dtype {arr.dtype}")
    if arr.dtype.kind == "i" and int(arr.min()) < 0:
        raise ValueError(f"index must be non-negative, got minimum {int(arr.min())}")
    return arr.astype(np.uint64)


def _bits_to_unit(bits: np.ndarray) -> np.ndarray:
    return (bits >> _SHIFT_11).astype(np.float64) * _TWO_POW_MINUS_53


def uniform(seed: int, sample_key: int, replica: int, stream: int, index: int | Sequence[int] | np.ndarray):
    """Uniform float64 in [0, 1) as a pure function of five non-negative integers.

    ``index`` may be an int (returns a Python float) or an integer array of any shape (returns a float64
    array of that shape). Every element depends only on its own index, never on the others.
    """
    state = _stream_state(seed, sample_key, replica, stream)
    scalar = isinstance(index, (int, np.integer)) and not isinstance(index, (bool, np.bool_))
    if scalar:
        idx = np.array([_check_u64("index", index)], dtype=np.uint64)
    else:
        idx = _index_array(index)
    with np.errstate(over="ignore"):
        counters = state + (idx + np.uint64(1)) * _GAMMA_U64
    out = _bits_to_unit(mix64(counters))
    return float(out[0]) if scalar else out


def _canonical_messages(messages: Any) -> list[dict[str, Any]]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ValueError(
            f"messages must be a list of {{'role', 'content'}} mappings, got {type(messages).__name__}"
        )
    canonical = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(f"messages[{i}] must be a mapping, got {type(message).__name__}")
        if "role" not in message or "content" not in message:
            raise ValueError(f"messages[{i}] needs both 'role' and 'content', has {sorted(message)}")
        if not isinstance(message["role"], str):
            raise ValueError(f"messages[{i}]['role'] must be a string, got {type(message['role']).__name__}")
        canonical.append({"role": message["role"], "content": message["content"]})
    return canonical


def sample_key(messages: Sequence[Mapping[str, Any]]) -> int:
    """Stable 63-bit content hash of a conversation, used as the noise key of a sample.

    Only each message's ``role`` and ``content`` count (other fields are ignored). They are serialised as
    canonical JSON (sorted keys, no whitespace, UTF-8, non-ASCII kept), hashed with blake2b (8-byte digest),
    read big-endian and masked to 63 bits, so the key fits an int64 column. Dict key order does not matter.
    """
    canonical = _canonical_messages(messages)
    try:
        text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"message contents must be JSON-serialisable: {exc}") from exc
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") & ((1 << _KEY_BITS) - 1)


def draw_timestep(seed: int, key: int, replica: int, *, eps: float = 1e-3) -> float:
    """Timestep of one (sample, replica): t = eps + (1 - eps)·u, linear schedule, so t ∈ [eps, 1)."""
    if not 0.0 < float(eps) < 1.0:
        raise ValueError(f"eps must lie in (0, 1), got {eps}")
    u = uniform(seed, key, replica, STREAM_TIMESTEP, 0)
    return float(eps) + (1.0 - float(eps)) * u


def _check_t(t: float) -> float:
    t = float(t)
    if not 0.0 < t <= 1.0:
        raise ValueError(f"t must lie in (0, 1], got {t}")
    return t


def _bool_vector(name: str, values: Any) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size and arr.dtype != np.bool_:
        raise ValueError(f"{name} must be boolean, got dtype {arr.dtype}")
    return arr.astype(np.bool_)


def draw_mask(seed: int, key: int, replica: int, maskable: Any, t: float) -> np.ndarray:
    """Token mask, bool (L,): position i is masked iff ``maskable[i]`` and u_i < t (stream STREAM_MASK).

    ``u_i`` is drawn at index i for every position, maskable or not, so the mask of a position never
    depends on the others.
    """
    maskable = _bool_vector("maskable", maskable)
    t = _check_t(t)
    u = uniform(seed, key, replica, STREAM_MASK, np.arange(maskable.shape[0], dtype=np.uint64))
    return maskable & (u < t)


def _int_vector(name: str, values: Any) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size and (arr.dtype == np.bool_ or arr.dtype.kind not in "iu"):
        raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def chunk_consistent_mask(mask: Any, chunk_starts: Any, chunk_ends: Any) -> tuple[np.ndarray, np.ndarray]:
    """Expand a token mask so that no chunk is partly masked.

    Args:
        mask: bool (L,) token mask.
        chunk_starts, chunk_ends: int (C,) chunk bounds, end exclusive, non-empty, inside [0, L),
            non-overlapping (any order).

    Returns:
        (expanded bool (L,), chunk_masked bool (C,)): a chunk is masked iff any of its tokens is masked in
        ``mask``; every token of a masked chunk is masked. Tokens outside all chunks keep their value.
    """
    mask = _bool_vector("mask", mask)
    starts = _int_vector("chunk_starts", chunk_starts)
    ends = _int_vector("chunk_ends", chunk_ends)
    length = mask.shape[0]
    if starts.shape != ends.shape:
        raise ValueError(f"chunk_starts and chunk_ends differ in length: {starts.shape[0]} vs {ends.shape[0]}")
    if starts.size == 0:
        return mask.copy(), np.zeros(0, dtype=np.bool_)
    if starts.min() < 0 or ends.max() > length:
        raise ValueError(
            f"chunk bounds must lie inside the sequence [0, {length}], got starts ≥ {starts.min()}, "
            f"ends ≤ {ends.max()}"
        )
    if np.any(ends <= starts):
        bad = int(np.flatnonzero(ends <= starts)[0])
        raise ValueError(f"chunk {bad} is empty or reversed: [{starts[bad]}, {ends[bad]})")
    order = np.argsort(starts, kind="stable")
    if np.any(starts[order][1:] < ends[order][:-1]):
        bad = int(np.flatnonzero(starts[order][1:] < ends[order][:-1])[0])
        raise ValueError(
            f"chunks overlap: [{starts[order][bad]}, {ends[order][bad]}) and "
            f"[{starts[order][bad + 1]}, {ends[order][bad + 1]})"
        )
    cumulative = np.concatenate([[0], np.cumsum(mask, dtype=np.int64)])
    chunk_masked = (cumulative[ends] - cumulative[starts]) > 0
    coverage = np.zeros(length + 1, dtype=np.int64)
    np.add.at(coverage, starts[chunk_masked], 1)
    np.add.at(coverage, ends[chunk_masked], -1)
    expanded = mask | (np.cumsum(coverage[:length]) > 0)
    return expanded, chunk_masked


def draw_compdemo_split(
    seed: int, key: int, replica: int, indices: Any, demo_ratio: float = 0.5
) -> np.ndarray:
    """CompDemo split, bool per index: True = group A (u < demo_ratio on stream STREAM_SPLIT).

    ``indices`` are student positions (pipeline B) or chunk indices (pipeline A).
    """
    demo_ratio = float(demo_ratio)
    if not 0.0 <= demo_ratio <= 1.0:
        raise ValueError(f"demo_ratio must lie in [0, 1], got {demo_ratio}")
    idx = _int_vector("indices", indices)
    if idx.size and idx.min() < 0:
        raise ValueError(f"indices must be non-negative, got minimum {idx.min()}")
    u = uniform(seed, key, replica, STREAM_SPLIT, idx.astype(np.uint64))
    return u < demo_ratio
