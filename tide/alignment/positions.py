"""Pipeline B: position-to-position alignment over a shared vocabulary (docs/design.md#pipeline-b-shared-vocabulary).

Student and teacher tokenize the same message contents with the same vocabulary but different chat
templates, so content tokens usually coincide while the template tokens around them differ. Inside each
message content, a student token and a teacher token are paired when their character spans relative to
the content start are identical and their ids agree. Equal spans with different ids are dropped and
counted. Several tokens can share one character span (pieces of one multi-byte character); those are
paired in order.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

from tide.alignment.spans import TokenizedText, paired_content_spans, sequence_limit, tokens_in_span

DROP_ID_MISMATCH = "pair_id_mismatch"
DROP_TRUNCATED = "pair_truncated"


@dataclass(frozen=True)
class PositionAlignment:
    """Aligned pairs, ascending in student position. ``student_pos``/``teacher_pos`` int32 (P,);
    ``span_index`` int32 (P,) the message each pair belongs to; ``drops`` counts dropped pairs."""

    student_pos: np.ndarray
    teacher_pos: np.ndarray
    span_index: np.ndarray
    drops: Counter = field(default_factory=Counter)

    def __len__(self) -> int:
        return int(self.student_pos.shape[0])


def align_positions(
    student: TokenizedText,
    teacher: TokenizedText,
    *,
    student_limit: int | None = None,
    teacher_limit: int | None = None,
) -> PositionAlignment:
    """Pair content tokens of two tokenizations of the same messages.

    Only tokens wholly inside a content span take part. ``student_limit``/``teacher_limit`` are the
    truncated sequence lengths: a pair with a position at or past either is dropped and counted
    (``pair_truncated``).
    """
    s_lim, t_lim = sequence_limit(student, student_limit), sequence_limit(teacher, teacher_limit)
    pairs: list[tuple[int, int, int]] = []
    drops: Counter = Counter()
    for span_index, s_a, s_b, t_a, t_b in paired_content_spans(student, teacher):
        by_span: dict[tuple[int, int], list[int]] = defaultdict(list)
        for k in tokens_in_span(teacher.offsets, t_a, t_b):
            start, end = teacher.offsets[k]
            by_span[(int(start) - t_a, int(end) - t_a)].append(int(k))
        used: Counter = Counter()
        for k in tokens_in_span(student.offsets, s_a, s_b):
            start, end = student.offsets[k]
            key = (int(start) - s_a, int(end) - s_a)
            candidates = by_span.get(key)
            if not candidates or used[key] >= len(candidates):
                continue
            t_k = candidates[used[key]]
            used[key] += 1
            if student.ids[k] != teacher.ids[t_k]:
                drops[DROP_ID_MISMATCH] += 1
                continue
            if k >= s_lim or t_k >= t_lim:
                drops[DROP_TRUNCATED] += 1
                continue
            pairs.append((int(k), t_k, span_index))
    table = np.asarray(pairs, dtype=np.int32).reshape(-1, 3)
    return PositionAlignment(
        student_pos=table[:, 0].copy(),
        teacher_pos=table[:, 1].copy(),
        span_index=table[:, 2].copy(),
        drops=drops,
    )
