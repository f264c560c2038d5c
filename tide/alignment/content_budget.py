"""Bounded cost per input: each message content is cut to what the sequences can hold before it is tokenised.

A prepared sample keeps the first ``max_length`` student tokens and ``teacher_max_length`` teacher tokens,
so no content contributes more than that many tokens to either sequence; tokenising and aligning the rest
only costs time (tokenising one 8 MiB line took about 40 s per side here). :func:`content_budget` finds how
many leading characters of a content are enough for a side: it tokenises growing prefixes — the first of
:data:`FIRST_CHARS_PER_TOKEN` characters per token needed, then doubling — until one holds the side's
capacity plus :data:`MARGIN_TOKENS` tokens. A content is cut to the larger of the two sides' budgets, so
both tokenizers see the same text, and its cost is bounded by its budget instead of its length.

The margin keeps the kept tokens those of the whole content: a tokenizer's output for a prefix differs from
its output for the whole text only around the cut (the last pre-tokenized word), which lies past the
margin. A cut is a data change and is reported (:func:`cut_contents` returns what it removed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Tokens kept past a side's capacity, so that the tokens around the cut (which may tokenise differently
# than in the whole text) fall outside the sequence.
MARGIN_TOKENS = 64
# Characters per needed token of the first prefix tried (ordinary text has about 4); the prefix doubles
# until it holds enough tokens, so a text of long tokens costs a few more tokenizer calls, never more than
# twice its final prefix.
FIRST_CHARS_PER_TOKEN = 8
# A token holds at least one UTF-8 byte and a character at most 4 bytes: a content of n characters has at
# most 4n tokens (+1 for a SentencePiece word marker, well inside the margin).
MAX_TOKENS_PER_CHAR = 4


def count_tokens(tokenizer: Any, text: str, *, split_special: bool = True) -> int:
    """Tokens of ``text`` alone (no added special tokens; special-token text as plain text if ``split_special``)."""
    return len(tokenizer(text, add_special_tokens=False, split_special_tokens=split_special)["input_ids"])


def content_budget(tokenizer: Any, content: str, capacity: int, *, split_special: bool = True) -> int | None:
    """Leading characters of ``content`` that hold at least ``capacity + MARGIN_TOKENS`` of its tokens, or
    None when the whole content may be needed (it holds fewer)."""
    if capacity < 0:
        raise ValueError(f"capacity={capacity}: must be non-negative")
    needed = capacity + MARGIN_TOKENS
    if len(content) * MAX_TOKENS_PER_CHAR <= needed:
        return None
    size = needed * FIRST_CHARS_PER_TOKEN
    while size < len(content):
        if count_tokens(tokenizer, content[:size], split_special=split_special) >= needed:
            return size
        size *= 2
    return None


@dataclass(frozen=True)
class ContentCut:
    """One cut content: message ``index`` keeps its first ``kept`` characters and loses ``removed``."""

    index: int
    kept: int
    removed: int


def cut_contents(messages: Sequence[dict[str, str]], sides: Sequence[tuple[Any, int]], *,
                 split_special: bool = True) -> tuple[list[dict[str, str]], list[ContentCut]]:
    """``messages`` with every content cut to the largest budget of ``sides`` = [(tokenizer, capacity in
    tokens), ...], and the cuts made (empty: the messages are returned as they were)."""
    out: list[dict[str, str]] = []
    cuts: list[ContentCut] = []
    for index, message in enumerate(messages):
        content = message["content"]
        kept: int | None = 0
        for tokenizer, capacity in sides:  # a side that may need the whole content ends the search
            budget = content_budget(tokenizer, content, capacity, split_special=split_special)
            kept = None if budget is None else max(kept, budget)
            if kept is None:
                break
        if not sides or kept is None:
            out.append(message)
            continue
        out.append({**message, "content": content[:kept]})
        cuts.append(ContentCut(index=index, kept=kept, removed=len(content) - kept))
    return out, cuts
