"""Deterministic epoch order over cache rows: hashing, shuffling, replica choice, rank split, cursor.

Everything here is a pure function of integers, so the order of an epoch can be recomputed from a small
JSON cursor on resume, on any machine and with any number of processes:

* the order key of an epoch is ``mix(seed, epoch)``, a 64-bit hash (splitmix64 finaliser) rather than
  ``seed + epoch``, so epoch 1 of seed 0 and epoch 0 of seed 1 are unrelated orders;
* a permutation of ``n`` items sorts the items by ``hash(key, salt, index)``, which does not depend on
  any library's random stream;
* by default (``window=0``) the order is a full permutation of the epoch's rows, as the original's
  random sampler drew one (every batch mixes the whole cache); with ``window >= 1`` row groups are
  shuffled first, then rows inside windows of ``window`` consecutive row groups (reads stay local to a
  few row groups at a time, at the price of batches drawn from a few thousand neighbouring rows);
* an epoch keeps the rows of one replica (``epoch mod R``, or a configured cycle);
* a global batch of ``batch_size * world_size`` consecutive rows is dealt round-robin to the ranks, so
  ranks are disjoint and together cover the epoch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
SALT_GROUPS = 0x67726F7570  # "group"
SALT_ROWS = 0x726F7773  # "rows"
SALT_ALL_ROWS = 0x616C6C726F7773  # "allrows"
FULL_PERMUTATION = 0  # the ``window`` that means a full permutation of the epoch's rows
CURSOR_VERSION = 1


def _splitmix64_scalar(x: int) -> int:
    x = (x + _GOLDEN) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _splitmix64_array(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64) + np.uint64(_GOLDEN)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def mix(*values: int) -> int:
    """Chain-hash non-negative integers into one 64-bit key: ``mix(a, b) != mix(b, a)`` in general."""
    h = 0
    for value in values:
        if value < 0:
            raise ValueError(f"mix() takes non-negative integers, got {value}")
        h = _splitmix64_scalar(h ^ (value & _MASK64))
    return h


def permutation(n: int, key: int) -> np.ndarray:
    """A permutation of ``range(n)`` (int64, shape (n,)) determined by the 64-bit ``key`` alone."""
    if n < 0:
        raise ValueError(f"permutation size must be >= 0, got {n}")
    with np.errstate(over="ignore"):
        hashes = _splitmix64_array(np.arange(n, dtype=np.uint64) ^ np.uint64(key & _MASK64))
    return np.argsort(hashes, kind="stable").astype(np.int64)


def replica_for_epoch(epoch: int, num_replicas: int, cycle: Sequence[int] | None = None) -> int:
    """The replica an epoch trains on: ``cycle[epoch % len(cycle)]`` if configured, else ``epoch % R``."""
    if num_replicas < 1:
        raise ValueError(f"the cache must hold at least one replica, manifest says {num_replicas}")
    if cycle:
        replica = int(cycle[epoch % len(cycle)])
        if not 0 <= replica < num_replicas:
            raise ValueError(f"replica cycle entry {replica} is outside the cache's replicas 0..{num_replicas - 1}")
        return replica
    return epoch % num_replicas


def epoch_order(
    replicas_per_group: Sequence[np.ndarray],
    *,
    seed: int,
    epoch: int,
    replica: int,
    window: int = FULL_PERMUTATION,
    shuffle: bool = True,
) -> np.ndarray:
    """The rows an epoch visits, in order, as an int64 array (N, 2) of (row group, row within group).

    ``replicas_per_group[g]`` is the ``replica`` column of row group ``g``; only rows equal to ``replica``
    are kept. ``window=0``: a full permutation of those rows; ``window >= 1``: row groups permuted, then
    rows permuted inside windows of ``window`` row groups. With ``shuffle=False`` the order is the storage
    order.
    """
    if window < 0:
        raise ValueError(f"shuffle window must be 0 (full permutation) or >= 1 row group, got {window}")
    num_groups = len(replicas_per_group)
    key = mix(seed, epoch)
    if window == FULL_PERMUTATION:
        rows = _replica_rows(replicas_per_group, range(num_groups), replica)
        return rows[permutation(len(rows), mix(key, SALT_ALL_ROWS))] if shuffle else rows
    groups = permutation(num_groups, mix(key, SALT_GROUPS)) if shuffle else np.arange(num_groups)
    pieces: list[np.ndarray] = []
    for w, start in enumerate(range(0, num_groups, window)):
        block = _replica_rows(replicas_per_group, groups[start : start + window], replica)
        if shuffle and len(block):
            block = block[permutation(len(block), mix(key, SALT_ROWS, w))]
        pieces.append(block)
    if not pieces:
        return np.zeros((0, 2), dtype=np.int64)
    return np.concatenate(pieces, axis=0).astype(np.int64)


def _replica_rows(replicas_per_group: Sequence[np.ndarray], groups: Sequence[int], replica: int) -> np.ndarray:
    """(row group, row) int64 (N, 2) of every row of ``replica`` in ``groups``, in the given group order."""
    members = []
    for g in groups:
        rows = np.flatnonzero(np.asarray(replicas_per_group[g]) == replica)
        members.append(np.stack([np.full_like(rows, g), rows], axis=1))
    return np.concatenate(members, axis=0).astype(np.int64) if members else np.zeros((0, 2), dtype=np.int64)


def first_replayed_epoch(num_replicas: int, cycle: Sequence[int] | None = None) -> int:
    """The first epoch that trains on a replica an earlier epoch already used (the same noise again)."""
    schedule = [int(r) for r in cycle] if cycle else list(range(num_replicas))
    seen: set[int] = set()
    for epoch, replica in enumerate(schedule):
        if replica in seen:
            return epoch
        seen.add(replica)
    return len(schedule)


def steps_in_epoch(num_rows: int, batch_size: int, world_size: int) -> int:
    """Global batches in an epoch of ``num_rows`` rows; a last partial batch is kept when every rank
    still gets at least one row (it is trimmed to a multiple of ``world_size``)."""
    global_batch = batch_size * world_size
    full, rest = divmod(num_rows, global_batch)
    return full + (1 if rest >= world_size else 0)


def rank_slice(order: np.ndarray, position: int, batch_size: int, rank: int, world_size: int) -> np.ndarray:
    """Rows of ``rank`` for the global batch that starts at ``position`` of the epoch order, shape (b, 2).

    The global batch is ``order[position : position + batch_size * world_size]`` trimmed to a multiple of
    ``world_size``; rank r takes every ``world_size``-th row starting at r."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    chunk = order[position : position + batch_size * world_size]
    chunk = chunk[: len(chunk) - len(chunk) % world_size]
    return chunk[rank::world_size]


def global_batch_rows(order: np.ndarray, position: int, batch_size: int, world_size: int) -> int:
    """How many rows the global batch at ``position`` consumes (what the cursor advances by)."""
    n = min(batch_size * world_size, max(len(order) - position, 0))
    return n - n % world_size


@dataclass(frozen=True)
class DataCursor:
    """Where training stands in the data: epoch and rows of that epoch already consumed (all ranks).

    Saved as JSON with each checkpoint; the epoch order is recomputed from (seed, epoch, replica) and
    training resumes at ``position``. ``seed`` and ``replica`` are checked on resume."""

    epoch: int = 0
    position: int = 0
    seed: int = 0
    replica: int = 0
    version: int = CURSOR_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DataCursor:
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"data cursor is not valid JSON: {exc}") from exc
        if not isinstance(payload, dict) or payload.get("version") != CURSOR_VERSION:
            raise ValueError(
                f"data cursor has version {payload.get('version') if isinstance(payload, dict) else None!r}, "
                f"this trainer reads version {CURSOR_VERSION}"
            )
        fields = {"epoch", "position", "seed", "replica", "version"}
        unknown = set(payload) - fields
        if unknown:
            raise ValueError(f"data cursor has unknown fields {sorted(unknown)}")
        return cls(**{k: int(v) for k, v in payload.items()})
