"""Message content spans in a chat-templated text, and which tokens lie inside them.

Both pipelines align tokens only inside message contents (docs/design.md#pipelines). Each side renders the same
messages with its own chat template; :func:`locate_content_spans` finds every message's content as a
character range of the rendered text; :func:`tokenize_with_offsets` tokenizes it with character offsets;
:func:`tokens_in_span` and :func:`token_byte_intervals` say which tokens lie wholly inside a span and where
their bytes start and end relative to the span start.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Private-use characters around the placeholder contents used to find where a template puts each content.
_SENTINEL_OPEN = "\ue000"
_SENTINEL_CLOSE = "\ue001"


class ContentSpanError(ValueError):
    """A message's content could not be located in the rendered chat text."""


@dataclass(frozen=True)
class TokenizedText:
    """One side's view of a sample.

    ``text`` is the rendered chat text; ``ids`` int32 (N,) the token ids; ``offsets`` int64 (N, 2) the
    character ``[start, end)`` of each token in ``text``; ``content_spans`` int64 (M, 2) the character
    ``[start, end)`` of each message's content in ``text``.
    """

    text: str
    ids: np.ndarray
    offsets: np.ndarray
    content_spans: np.ndarray


def _sentinel(index: int) -> str:
    return f"{_SENTINEL_OPEN}TIDE{index}{_SENTINEL_CLOSE}"


def render_chat(tokenizer: Any, messages: Sequence[dict[str, str]]) -> str:
    """The tokenizer's chat template applied to ``messages`` as text (no generation prompt)."""
    rendered = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=False)
    if not isinstance(rendered, str):
        raise ContentSpanError(f"chat template returned {type(rendered).__name__}, expected str")
    return rendered


def locate_content_spans(
    tokenizer: Any, messages: Sequence[dict[str, str]], rendered: str | None = None
) -> tuple[str, np.ndarray]:
    """Render ``messages`` with ``tokenizer``'s chat template and find each content's character span.

    The template is first rendered with unique placeholder contents; the text between placeholders is the
    template's own text. If the real rendering equals the template pieces interleaved with the contents,
    the spans are exact. Otherwise (a template that edits contents, e.g. strips them) each content is
    searched in order right after its template piece, then anywhere after the previous span, verbatim and
    then stripped of surrounding whitespace. Returns ``(rendered_text, spans)`` with spans int64 (M, 2).
    Raises :class:`ContentSpanError` when a content cannot be found.
    """
    if rendered is None:
        rendered = render_chat(tokenizer, messages)
    placeholders = [{**m, "content": _sentinel(i)} for i, m in enumerate(messages)]
    skeleton = render_chat(tokenizer, placeholders)
    pieces: list[str] = []
    cursor = 0
    for i in range(len(messages)):
        at = skeleton.find(_sentinel(i), cursor)
        if at < 0:
            pieces = []
            break
        pieces.append(skeleton[cursor:at])
        cursor = at + len(_sentinel(i))
    spans = np.zeros((len(messages), 2), dtype=np.int64)
    if pieces:
        pieces.append(skeleton[cursor:])
        rebuilt = []
        position = 0
        for i, message in enumerate(messages):
            rebuilt.append(pieces[i])
            position += len(pieces[i])
            spans[i] = (position, position + len(message["content"]))
            rebuilt.append(message["content"])
            position += len(message["content"])
        rebuilt.append(pieces[-1])
        if "".join(rebuilt) == rendered:
            return rendered, spans
    cursor = 0
    for i, message in enumerate(messages):
        content = message["content"]
        start = -1
        if pieces:
            anchor = rendered.find(pieces[i], cursor) if pieces[i] else cursor
            if anchor >= 0:
                after = anchor + len(pieces[i])
                for candidate in (content, content.strip()):
                    if candidate and rendered.startswith(candidate, after):
                        start, content = after, candidate
                        break
        if start < 0:
            for candidate in (content, content.strip()):
                if not candidate:
                    continue
                found = rendered.find(candidate, cursor)
                if found >= 0:
                    start, content = found, candidate
                    break
        if start < 0:
            if not message["content"].strip():
                spans[i] = (cursor, cursor)
                continue
            raise ContentSpanError(
                f"content of message {i} (role {message.get('role')!r}) not found in the rendered chat text"
            )
        spans[i] = (start, start + len(content))
        cursor = start + len(content)
    return rendered, spans


def tokenize_with_offsets(tokenizer: Any, text: str) -> tuple[np.ndarray, np.ndarray]:
    """Token ids int32 (N,) and character offsets int64 (N, 2) of ``text``, no added special tokens
    (chat templates already carry them). Needs a fast tokenizer."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} is not a fast tokenizer: character offsets need one"
        )
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(encoding["input_ids"], dtype=np.int32)
    offsets = np.asarray(encoding["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    return ids, offsets


def tokenize_chat(tokenizer: Any, messages: Sequence[dict[str, str]]) -> TokenizedText:
    """Render, locate content spans and tokenize one conversation for one side."""
    text, spans = locate_content_spans(tokenizer, messages)
    ids, offsets = tokenize_with_offsets(tokenizer, text)
    return TokenizedText(text=text, ids=ids, offsets=offsets, content_spans=spans)


def common_content_span(
    student_text: str, student_span: Sequence[int], teacher_text: str, teacher_span: Sequence[int]
) -> tuple[int, int, int, int]:
    """Narrow one message's student and teacher content spans to the text both sides hold.

    A chat template may edit a content (e.g. ``| trim``), so one side's located content can be the other's
    with surrounding characters removed (:func:`locate_content_spans`). Then the longer span is narrowed to
    the first occurrence of the shorter text; tokens straddling the narrowed edge drop out of the
    alignment like any token straddling a content edge. Returns ``(s_a, s_b, t_a, t_b)``; raises
    :class:`ContentSpanError` when neither content contains the other.
    """
    s_a, s_b = (int(v) for v in student_span)
    t_a, t_b = (int(v) for v in teacher_span)
    s_content, t_content = student_text[s_a:s_b], teacher_text[t_a:t_b]
    if s_content == t_content:
        return s_a, s_b, t_a, t_b
    if not s_content or not t_content:
        return s_a, s_a, t_a, t_a  # a content one template dropped (e.g. whitespace only): nothing to align
    if t_content in s_content:
        s_a += s_content.find(t_content)
        return s_a, s_a + len(t_content), t_a, t_b
    if s_content in t_content:
        t_a += t_content.find(s_content)
        return s_a, s_b, t_a, t_a + len(s_content)
    raise ContentSpanError("student and teacher content spans hold different text")


def paired_content_spans(
    student: TokenizedText, teacher: TokenizedText
) -> Iterator[tuple[int, int, int, int, int]]:
    """``(message, s_a, s_b, t_a, t_b)`` per message: both sides' content spans narrowed to the text they
    share (:func:`common_content_span`). Both sides must render the same messages."""
    if student.content_spans.shape != teacher.content_spans.shape:
        raise ValueError(
            f"student has {len(student.content_spans)} content spans, teacher {len(teacher.content_spans)}"
        )
    for index, (s_span, t_span) in enumerate(
        zip(student.content_spans.tolist(), teacher.content_spans.tolist(), strict=True)
    ):
        try:
            yield (index, *common_content_span(student.text, s_span, teacher.text, t_span))
        except ContentSpanError as exc:
            raise ContentSpanError(f"message {index}: {exc}") from exc


def sequence_limit(tokenized: TokenizedText, limit: int | None) -> int:
    """Tokens of ``tokenized`` kept by a truncation to ``limit`` (None: all)."""
    return len(tokenized.ids) if limit is None else min(limit, len(tokenized.ids))


def tokens_in_span(offsets: np.ndarray, start: int, end: int, limit: int | None = None) -> np.ndarray:
    """Indices (ascending, int64) of the non-empty tokens whose character range lies inside
    ``[start, end)``; tokens straddling an edge are excluded. ``limit`` keeps only indices ``< limit``
    (a truncated sequence)."""
    offsets = np.asarray(offsets).reshape(-1, 2)
    if limit is not None:
        offsets = offsets[:limit]
    inside = (offsets[:, 0] >= start) & (offsets[:, 1] <= end) & (offsets[:, 1] > offsets[:, 0])
    return np.flatnonzero(inside)


def token_byte_intervals(
    text: str,
    offsets: np.ndarray,
    ids: np.ndarray,
    table: Sequence[bytes],
    start: int,
    end: int,
    limit: int | None = None,
) -> list[tuple[int, int, int]]:
    """Byte placement of the tokens inside the content span ``text[start:end]``.

    Returns ``(token_index, byte_start, byte_end)`` triples, byte offsets relative to the span start, for
    the tokens wholly inside the span whose bytes also fit inside it. A token's end is the byte offset of
    its character end; tokens that hold only part of a multi-byte character share their character range
    with the following token(s), so their ends are computed backwards from the last token of that run by
    the table's byte lengths. A token's start is its end minus its byte length, so a token carrying bytes
    that are not in the content (e.g. a SentencePiece ``▁`` prepended to the first word) reaches before
    the span start and is excluded.
    """
    index = tokens_in_span(offsets, start, end, limit)
    if index.size == 0:
        return []
    span_bytes = len(text[start:end].encode("utf-8"))
    char_ends = offsets[index, 1]
    lengths = [len(table[int(ids[i])]) for i in index]
    byte_ends = [0] * len(index)
    next_end: int | None = None
    for k in range(len(index) - 1, -1, -1):
        shares_char = k + 1 < len(index) and index[k + 1] == index[k] + 1 and (
            offsets[index[k + 1], 0] < char_ends[k]
        )
        if shares_char and next_end is not None:
            byte_ends[k] = next_end - lengths[k + 1]
        else:
            byte_ends[k] = len(text[start : int(char_ends[k])].encode("utf-8"))
        next_end = byte_ends[k]
    intervals: list[tuple[int, int, int]] = []
    for k, token_index in enumerate(index):
        byte_start = byte_ends[k] - lengths[k]
        if lengths[k] > 0 and byte_start >= 0 and byte_ends[k] <= span_bytes:
            intervals.append((int(token_index), byte_start, byte_ends[k]))
    return intervals
