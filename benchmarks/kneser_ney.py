"""Interpolated Kneser-Ney n-gram models over a token stream, with full-vocabulary distributions, in numpy.

Used by the fidelity benchmark as a teacher trained on real text (order 5) and a student trained on the same
text (order 2). Counting is vectorised: an n-gram is identified by a 64-bit hash chain of its ids
(``h ← mix64((h + γ) ⊕ id)``, :func:`tide.noise.mix64`), so the context of order n at position i and the
n-gram ending at i − 1 share one hash.

The model (Chen & Goodman's interpolated Kneser-Ney with one discount per order): at the highest order,

    p_n(w | c) = max(count(c, w) − D_n, 0) / count(c, ·) + D_n · N1+(c, ·) / count(c, ·) · p_{n−1}(w | c')

with c' the context without its first id; lower orders use continuation counts N1+(·, c, w) in place of
counts, the unigram level interpolates with the uniform 1/V, and an unseen context passes its mass to the
next order whole. D_n = n1 / (n1 + 2·n2) from the order's count-of-counts. Every id keeps some mass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tide.noise import mix64

_GAMMA = np.uint64(0x9E3779B97F4A7C15)


def context_hashes(tokens: np.ndarray, order: int) -> np.ndarray:
    """(L,) uint64: the hash of the ``order`` − 1 ids before each position (0 where fewer exist; the hash of
    the empty context is 0 too, so use it for orders ≥ 2 only where the position is ≥ order − 1)."""
    length = tokens.shape[0]
    h = np.zeros(length, dtype=np.uint64)
    ids = tokens.astype(np.uint64)
    for back in range(order - 1, 0, -1):
        shifted = np.zeros(length, dtype=np.uint64)
        shifted[back:] = ids[:-back]
        with np.errstate(over="ignore"):
            h = mix64((h + _GAMMA) ^ shifted)
    return h


@dataclass
class _Level:
    """One order: contexts (sorted unique hashes), each context's followers (ids, counts), totals, N1+."""

    contexts: np.ndarray  # (C,) uint64 sorted
    starts: np.ndarray  # (C + 1,) int64 into followers
    followers: np.ndarray  # (F,) int64 ids
    counts: np.ndarray  # (F,) float64
    totals: np.ndarray  # (C,) float64
    discount: float

    def lookup(self, context: int) -> tuple[np.ndarray, np.ndarray, float, float] | None:
        index = int(np.searchsorted(self.contexts, np.uint64(context)))
        if index >= self.contexts.shape[0] or self.contexts[index] != np.uint64(context):
            return None
        a, b = int(self.starts[index]), int(self.starts[index + 1])
        return self.followers[a:b], self.counts[a:b], float(self.totals[index]), float(b - a)


def _discount(counts: np.ndarray) -> float:
    n1 = float((counts == 1).sum())
    n2 = float((counts == 2).sum())
    return n1 / (n1 + 2.0 * n2) if n1 + n2 > 0 else 0.5


def _level(context: np.ndarray, follower: np.ndarray, weight: np.ndarray) -> _Level:
    order = np.lexsort((follower, context))
    context, follower, weight = context[order], follower[order], weight[order]
    contexts, starts = np.unique(context, return_index=True)
    starts = np.append(starts, context.shape[0]).astype(np.int64)
    totals = np.add.reduceat(weight, starts[:-1]) if contexts.shape[0] else np.zeros(0)
    return _Level(contexts, starts, follower.astype(np.int64), weight.astype(np.float64), totals,
                  _discount(weight))


class KneserNey:
    """An interpolated Kneser-Ney model of ``order`` over ids in [0, ``vocab_size``), trained on ``tokens``."""

    def __init__(self, tokens: np.ndarray, order: int, vocab_size: int) -> None:
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
            raise ValueError(f"token ids must lie in [0, {vocab_size})")
        self.order = order
        self.vocab_size = vocab_size
        length = tokens.shape[0]
        # gram[n][i]: hash of the n-gram ending at position i (valid for i >= n - 1)
        grams = {n: mix64((context_hashes(tokens, n) + _GAMMA) ^ tokens.astype(np.uint64)) for n in range(1, order + 1)}
        contexts = {n: context_hashes(tokens, n) for n in range(1, order + 1)}
        self.levels: dict[int, _Level] = {}
        for n in range(2, order + 1):
            valid = np.arange(length) >= n - 1
            if n == order:  # raw counts of the n-grams
                keys, first, counts = np.unique(grams[n][valid], return_index=True, return_counts=True)
                where = np.flatnonzero(valid)[first]
                weight = counts.astype(np.float64)
            else:  # continuation counts: distinct (n+1)-grams ending in the n-gram
                longer = np.arange(length) >= n
                _, first = np.unique(grams[n + 1][longer], return_index=True)
                ends = np.flatnonzero(longer)[first]
                keys, first_of_key, weight = np.unique(grams[n][ends], return_index=True, return_counts=True)
                where = ends[first_of_key]
                weight = weight.astype(np.float64)
            self.levels[n] = _level(contexts[n][where], tokens[where], weight)
        if order == 1:
            unigram = np.bincount(tokens, minlength=vocab_size).astype(np.float64)
        else:
            _, first = np.unique(grams[2][np.arange(length) >= 1], return_index=True)
            ends = np.flatnonzero(np.arange(length) >= 1)[first]
            unigram = np.bincount(tokens[ends], minlength=vocab_size).astype(np.float64)
        discount = _discount(unigram[unigram > 0])
        seen = float((unigram > 0).sum())
        total = unigram.sum()
        self.unigram = np.maximum(unigram - discount, 0.0) / total + discount * seen / total / vocab_size

    def distribution(self, history: np.ndarray) -> np.ndarray:
        """p(· | history) over the vocabulary, float64 (V,); ``history`` holds the preceding ids (any length,
        the last order − 1 count)."""
        probs = self.unigram.copy()
        history = np.asarray(history, dtype=np.int64)
        for n in range(2, self.order + 1):
            if history.shape[0] < n - 1:
                break
            context = int(context_hashes(np.append(history[-(n - 1):], 0), n)[-1])
            found = self.levels[n].lookup(context)
            if found is None:
                continue  # unseen context: the lower order keeps all its mass
            followers, counts, total, distinct = found
            level = self.levels[n]
            probs *= level.discount * distinct / total
            probs[followers] += np.maximum(counts - level.discount, 0.0) / total
        return probs
