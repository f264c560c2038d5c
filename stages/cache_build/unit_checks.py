"""What the build refuses around each teacher forward: token ids outside a vocabulary, non-finite outputs.

Both are mistakes of the inputs, not of one row — a teacher tokenizer with more tokens than the teacher's
embedding, a student vocabulary set smaller than its tokenizer, teacher weights (or a dtype) that give NaN
logits — so the build stops with a message naming the sample, the shard and what to check, instead of
``IndexError: index out of range in self`` deep in the teacher, or NaN targets in the cache.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np


class TokenIdError(ValueError):
    """A prepared sample holds a token id outside the vocabulary it will be looked up in."""


class TeacherOutputError(RuntimeError):
    """The teacher returned NaN or +inf where a (log-)probability belongs."""


# Result arrays that may legitimately hold NaN: the gold log-prob of an id outside the shared vocabulary
# slice (vocabulary targets only).
_NAN_ALLOWED_WITH_VOCABULARY = frozenset({"gold_logprob"})


def check_token_ids(units: list[tuple[Any, int]], *, student_vocab: int, teacher_vocab: int, shard: str) -> None:
    """Every student id must lie in [0, student_vocab) and every teacher id in [0, teacher_vocab)."""
    seen: set[str] = set()
    for sample, _ in units:
        if sample.sample_id in seen:
            continue
        seen.add(sample.sample_id)
        for side, ids, size, fix in (
            ("student", sample.input_ids, student_vocab, "--student-vocab-size must cover the student tokenizer"),
            ("teacher", sample.teacher_input_ids, teacher_vocab,
             "--teacher-tokenizer must be the teacher's own (its ids must fit the teacher's embedding)"),
        ):
            ids = np.asarray(ids)
            bad = np.flatnonzero((ids < 0) | (ids >= size))
            if bad.size:
                raise TokenIdError(
                    f"{shard}: sample {sample.sample_id}: {side} token id {int(ids[bad[0]])} at position {int(bad[0])} "
                    f"is outside the {side} vocabulary [0, {size}) ({bad.size} such ids); {fix}")


_DTYPE_HINT = "non-finite logits come from the weights or the dtype: check the checkpoint, or try --dtype float32"


@contextmanager
def naming_the_batch(batch: list[Any], units: list[tuple[Any, int]], *, teacher: str, shard: str) -> Iterator[None]:
    """A ``ValueError`` raised by the teacher forward of ``batch`` (e.g. the targets' refusal of non-finite
    logits) becomes a :class:`TeacherOutputError` naming the shard and the batch's first sample."""
    try:
        yield
    except ValueError as exc:
        sample, replica = units[batch[0].unit]
        raise TeacherOutputError(
            f"{shard}: the forward of teacher {teacher} over sample {sample.sample_id} replica {replica} "
            f"({len(batch)} forwards in the batch) failed: {exc}; {_DTYPE_HINT}") from exc


def check_teacher_outputs(batch: list[Any], units: list[tuple[Any, int]], *, vocabulary_targets: bool,
                          teacher: str, shard: str) -> None:
    """Refuse NaN or +inf in the results of ``batch`` (requests of ``units``), naming the first sample."""
    for request in batch:
        for name, values in request.results.items():
            array = np.asarray(values)
            if not np.issubdtype(array.dtype, np.floating):
                continue
            bad = array == np.inf
            if not (vocabulary_targets and name in _NAN_ALLOWED_WITH_VOCABULARY):
                bad |= np.isnan(array)
            if bad.any():
                sample, replica = units[request.unit]
                raise TeacherOutputError(
                    f"{shard}: teacher {teacher} returned non-finite {name} (NaN or +inf at {int(bad.sum())} of "
                    f"{array.size} values) for sample {sample.sample_id} replica {replica}, forward {request.kind!r}; "
                    f"{_DTYPE_HINT}")
