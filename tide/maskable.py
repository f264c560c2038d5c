"""Which student tokens are trained: the maskable positions of a chat-templated sequence.

The BD3LM objective masks and scores only *maskable* tokens (docs/design.md#block-diffusion). Two rules
(``TRAIN_TURNS``):

* ``last`` (the original's rule, the default): only the final turn is trained. Its prompt is the chat
  template of every message but the last, with the generation prompt and ``enable_thinking=False`` (the
  original's student tokenizer passes it to every template call); everything after the prompt's token
  count is maskable — the final content, its end-of-turn token and whatever the template writes after it
  (ChatML's trailing newline). Earlier assistant turns are context only.
* ``all``: the tokens of every assistant turn's content plus the end-of-turn token that closes each turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tide.alignment.spans import TokenizedText

TRAIN_TURNS = ("last", "all")


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


def last_turn_prompt(tokenizer: Any, messages: Sequence[dict[str, str]]) -> str:
    """The prompt of the final turn: the template of ``messages[:-1]`` with the generation prompt and
    ``enable_thinking=False`` (a template without thinking logic ignores the flag)."""
    rendered = tokenizer.apply_chat_template(list(messages[:-1]), tokenize=False, add_generation_prompt=True,
                                             enable_thinking=False)
    if not isinstance(rendered, str):
        raise ValueError(f"chat template returned {type(rendered).__name__}, expected str")
    return rendered


def last_turn_prompt_length(tokenizer: Any, messages: Sequence[dict[str, str]]) -> int:
    """Tokens of :func:`last_turn_prompt` (no special tokens added: the template carries them)."""
    return len(tokenizer(last_turn_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"])


def last_turn_maskable(num_tokens: int, prompt_length: int) -> np.ndarray:
    """bool (num_tokens,): every position at or after ``prompt_length`` (the original's label rule)."""
    if num_tokens < 0 or prompt_length < 0:
        raise ValueError(f"num_tokens={num_tokens} and prompt_length={prompt_length} must be non-negative")
    mask = np.zeros(num_tokens, dtype=bool)
    mask[min(prompt_length, num_tokens):] = True
    return mask
