"""Which student tokens are trained: the maskable positions of a chat-templated sequence.

The BD3LM objective masks and scores only *maskable* tokens (docs/design.md#block-diffusion). For a
conversation, those are the tokens of the assistant turns' contents plus the end-of-turn token that closes
each turn, so the student learns to stop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tide.alignment.spans import TokenizedText


def special_token_ids(tokenizer: Any) -> frozenset[int]:
    """Ids the tokenizer treats as special or added tokens (end-of-turn markers are among them)."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids.update(int(i) for i in getattr(tokenizer, "added_tokens_decoder", {}) or {})
    return frozenset(ids)


def student_maskable(tokenized: TokenizedText, roles: Sequence[str], special_ids: frozenset[int]) -> np.ndarray:
    """bool (N,): tokens overlapping an assistant content, plus the end-of-turn token after each one
    (the first special token starting at or after the content end and before the next message's
    content; if there is none, the first token after the content)."""
    offsets = tokenized.offsets
    starts, ends = offsets[:, 0], offsets[:, 1]
    mask = np.zeros(len(tokenized.ids), dtype=bool)
    spans = tokenized.content_spans
    for m, role in enumerate(roles):
        if role != "assistant":
            continue
        a, b = int(spans[m, 0]), int(spans[m, 1])
        mask |= (starts < b) & (ends > a) & (ends > starts)
        limit = int(spans[m + 1, 0]) if m + 1 < len(spans) else len(tokenized.text) + 1
        after = np.flatnonzero((starts >= b) & (starts < limit))
        special = [k for k in after if int(tokenized.ids[k]) in special_ids]
        if special:
            mask[special[0]] = True
        elif after.size:
            mask[after[0]] = True
    return mask
