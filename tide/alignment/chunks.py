"""Pipeline A: byte-exact chunk alignment between two different tokenizations (docs/design.md#pipeline-a-cross-tokenizer).

Inside each message content, both token sequences are walked by cumulative byte offset; a chunk closes
wherever both sides have a token boundary at the same byte offset, which gives the minimal
common-boundary segments. A chunk is kept only if its tokens decode to identical bytes on both sides (and
those are the content's bytes); otherwise it is dropped and counted. Tokens straddling a content edge are
left out of the walk, and a chunk cannot bridge a left-out token.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tide.alignment.spans import TokenizedText, paired_content_spans, sequence_limit, token_byte_intervals

# Drop-counter names.
DROP_BYTE_MISMATCH = "chunk_byte_mismatch"
DROP_UNCLOSED = "chunk_unclosed"
DROP_TRUNCATED = "chunk_truncated"


@dataclass(frozen=True)
class ChunkTable:
    """Aligned chunks, in order. All arrays have shape (C,).

    ``student_start``/``student_end`` and ``teacher_start``/``teacher_end`` are int32 token positions
    (end exclusive) in the student and teacher sequences; ``span_index`` int32 is the message each chunk
    belongs to; ``drops`` counts dropped chunks by reason.
    """

    student_start: np.ndarray
    student_end: np.ndarray
    teacher_start: np.ndarray
    teacher_end: np.ndarray
    span_index: np.ndarray
    drops: Counter = field(default_factory=Counter)

    def __len__(self) -> int:
        return int(self.student_start.shape[0])


def walk_chunks(
    student: Sequence[tuple[int, int, int]],
    teacher: Sequence[tuple[int, int, int]],
    student_bytes: Sequence[bytes],
    teacher_bytes: Sequence[bytes],
    content: bytes | None = None,
) -> tuple[list[tuple[int, int, int, int]], Counter]:
    """Minimal common-boundary chunks of two placed token sequences.

    ``student``/``teacher``: ``(token_index, byte_start, byte_end)`` in byte order (see
    :func:`tide.alignment.spans.token_byte_intervals`); ``student_bytes[k]``/``teacher_bytes[k]`` are the
    bytes of the k-th entry. ``content``, if given, is the span's bytes and each kept chunk must equal its
    slice too. A chunk only extends over consecutive token indices. Returns chunks as ``(student_first, student_stop, teacher_first, teacher_stop)`` *entry*
    indices into the two lists (stop exclusive) and a drop counter.
    """
    chunks: list[tuple[int, int, int, int]] = []
    drops: Counter = Counter()
    i = j = 0
    n_s, n_t = len(student), len(teacher)
    while i < n_s and j < n_t:
        if student[i][1] < teacher[j][1]:
            i += 1
            continue
        if teacher[j][1] < student[i][1]:
            j += 1
            continue
        i0, j0 = i, j
        s_end, t_end = student[i][2], teacher[j][2]
        i += 1
        j += 1
        closed = True
        while s_end != t_end:
            if s_end < t_end:
                if i < n_s and student[i][1] == s_end and student[i][0] == student[i - 1][0] + 1:
                    s_end = student[i][2]
                    i += 1
                else:
                    closed = False
                    break
            else:
                if j < n_t and teacher[j][1] == t_end and teacher[j][0] == teacher[j - 1][0] + 1:
                    t_end = teacher[j][2]
                    j += 1
                else:
                    closed = False
                    break
        if not closed:
            drops[DROP_UNCLOSED] += 1
            continue
        s_chunk = b"".join(student_bytes[i0:i])
        t_chunk = b"".join(teacher_bytes[j0:j])
        start = student[i0][1]
        if s_chunk != t_chunk or (content is not None and content[start:s_end] != s_chunk):
            drops[DROP_BYTE_MISMATCH] += 1
            continue
        chunks.append((i0, i, j0, j))
    return chunks, drops


def align_chunks(
    student: TokenizedText,
    teacher: TokenizedText,
    student_table: Sequence[bytes],
    teacher_table: Sequence[bytes],
    *,
    student_limit: int | None = None,
    teacher_limit: int | None = None,
) -> ChunkTable:
    """Chunk table over all message contents of one sample.

    ``student_table``/``teacher_table`` are the per-id byte tables (:func:`token_bytes_table`).
    ``student_limit``/``teacher_limit`` are the truncated sequence lengths: a chunk reaching past either is
    dropped and counted (``chunk_truncated``). Both sides must have the same number of content spans.
    """
    s_lim, t_lim = sequence_limit(student, student_limit), sequence_limit(teacher, teacher_limit)
    rows: list[tuple[int, int, int, int, int]] = []
    drops: Counter = Counter()
    for span_index, s_a, s_b, t_a, t_b in paired_content_spans(student, teacher):
        content = student.text[s_a:s_b]
        s_iv = token_byte_intervals(student.text, student.offsets, student.ids, student_table, s_a, s_b)
        t_iv = token_byte_intervals(teacher.text, teacher.offsets, teacher.ids, teacher_table, t_a, t_b)
        s_bytes = [student_table[int(student.ids[k])] for k, _, _ in s_iv]
        t_bytes = [teacher_table[int(teacher.ids[k])] for k, _, _ in t_iv]
        found, span_drops = walk_chunks(s_iv, t_iv, s_bytes, t_bytes, content.encode("utf-8"))
        drops.update(span_drops)
        for i0, i1, j0, j1 in found:
            s_start, s_end = s_iv[i0][0], s_iv[i1 - 1][0] + 1
            t_start, t_end = t_iv[j0][0], t_iv[j1 - 1][0] + 1
            if s_end > s_lim or t_end > t_lim:
                drops[DROP_TRUNCATED] += 1
                continue
            rows.append((s_start, s_end, t_start, t_end, span_index))
    table = np.asarray(rows, dtype=np.int32).reshape(-1, 5)
    return ChunkTable(
        student_start=table[:, 0].copy(),
        student_end=table[:, 1].copy(),
        teacher_start=table[:, 2].copy(),
        teacher_end=table[:, 3].copy(),
        span_index=table[:, 4].copy(),
        drops=drops,
    )
