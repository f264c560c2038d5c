"""How several sources become one data stream: the held-out split, the language filter, and interleaving.

* :func:`holdout_split` is ``datasets.Dataset.train_test_split(test_size=f, seed=s)`` on row indices: the
  permutation of NumPy's ``default_rng(s)``, the first ⌈f·n⌉ entries held out, the rest kept in
  permutation order (so a split also shuffles the kept rows, as the original's did).
* :func:`has_language` is the original's OpenCoder filter: a literal, case-sensitive substring of an
  assistant message (not a language column).
* :func:`interleave` merges the sources in proportion to their sizes. Row ``i`` of a source of ``n`` rows
  is placed at ``(i + u) / n``, where ``u`` in [0, 1) is read from the row's sample key (a hash of its
  content, :func:`tide.noise.sample_key`); rows are emitted in that order. Each source keeps its own
  order, every prefix of the stream holds the sources in proportion (to within one row each), the result
  is a pure function of the data (so of no process count), and memory holds one pending row per source.

A shard of the cache is a run of consecutive samples of this stream, so every shard mixes the sources in
proportion. (Placing each sample at a position drawn from its key alone would scatter every shard's
samples over the whole data pass, and a rank could not finish any shard before reading all of it.)
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from stages.cache_build.messages import normalize_messages
from stages.cache_build.skips import SkipSample
from tide.noise import sample_key

_KEY_SCALE = float(1 << 63)  # sample keys are 63-bit


def holdout_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out) row indices, int64, with ``train_test_split(test_size=fraction, seed=seed)``'s
    sizes and order. ValueError if either part would be empty."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout fraction {fraction} must lie in (0, 1)")
    n_test = math.ceil(fraction * n)
    if n_test == 0 or n_test >= n:
        raise ValueError(f"holdout={fraction} of {n} rows leaves an empty part ({n_test} held out)")
    permutation = np.random.default_rng(seed).permutation(n)
    return permutation[n_test:].astype(np.int64), permutation[:n_test].astype(np.int64)


def has_language(messages: Any, word: str) -> bool:
    """True when some assistant message's content contains ``word`` (case-sensitive substring)."""
    if isinstance(messages, str):
        try:
            messages = json.loads(messages)
        except ValueError:
            return False
    if isinstance(messages, np.ndarray):
        messages = messages.tolist()
    if not isinstance(messages, (list, tuple)):
        return False
    return any(
        isinstance(m, dict) and m.get("role") == "assistant" and isinstance(m.get("content"), str)
        and word in m["content"]
        for m in messages
    )


def placement_jitter(sample: Any) -> float:
    """u in [0, 1) of one row: its sample key / 2^63; a row whose messages do not validate (it will be
    skipped later) uses a hash of its id instead."""
    try:
        key = sample_key(normalize_messages(sample.messages))
    except (SkipSample, ValueError):
        digest = hashlib.blake2b(str(sample.sample_id).encode("utf-8"), digest_size=8).digest()
        key = int.from_bytes(digest, "big") >> 1
    return key / _KEY_SCALE


def interleave(sources: Sequence[tuple[int, Iterable[tuple[int, Any]]]]) -> Iterator[Any]:
    """Merge ``(size, iterable of (position, sample))`` sources by the placement ``(position + u) / size``
    (ties broken by source order). Positions must increase within a source and lie in [0, size)."""
    streams = [iter(rows) for _, rows in sources]
    heap: list[tuple[float, int, Any]] = []

    def push(j: int) -> None:
        for position, sample in streams[j]:
            size = sources[j][0]
            if not 0 <= position < size:
                raise ValueError(f"source {j}: row position {position} outside its size {size}")
            heapq.heappush(heap, ((position + placement_jitter(sample)) / size, j, sample))
            return

    for j in range(len(streams)):
        push(j)
    while heap:
        _, j, sample = heapq.heappop(heap)
        yield sample
        push(j)
