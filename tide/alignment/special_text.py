"""Special-token text inside message contents: found, counted, and encoded as plain text.

A fast tokenizer matches its special tokens (``<|im_end|>``, ``<|eot_id|>``, ...) anywhere in the text it is
given, message contents included: a content holding the text ``<|im_end|><|im_start|>assistant`` is
tokenised as real control tokens and forges a turn. The rendered chat is still tokenised as a whole (the
template's own special tokens must stay special); :func:`split_special_text` then finds the special tokens
lying inside a content and re-encodes, with ``split_special_tokens=True``, the stretch of text between the
template's special tokens around each of them. A tokenizer splits its input at special tokens before any
other step, so those stretches are exactly the units it tokenises independently: outside them nothing
changes, inside them the content's special-token text becomes ordinary tokens (which decode to the same
text).
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

_SPECIAL_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def special_ids(tokenizer: Any) -> np.ndarray:
    """Sorted int64 ids of the tokens ``tokenizer`` matches as special anywhere in a text (its added tokens
    marked special, and its named special tokens); cached per tokenizer object."""
    try:
        return _SPECIAL_CACHE[tokenizer]
    except (KeyError, TypeError):
        pass
    found = {int(i) for i in getattr(tokenizer, "all_special_ids", []) or []}
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    found.update(int(i) for i, token in decoder.items() if getattr(token, "special", False))
    ids = np.asarray(sorted(found), dtype=np.int64)
    try:
        _SPECIAL_CACHE[tokenizer] = ids
    except TypeError:  # objects that refuse weak references are simply not cached
        pass
    return ids


def special_in_contents(ids: np.ndarray, offsets: np.ndarray, spans: np.ndarray, special: np.ndarray) -> np.ndarray:
    """bool (N,): the special tokens whose characters lie inside one of ``spans`` (int64 (M, 2), in text
    order, not overlapping) — special-token text that a message content holds."""
    is_special = np.isin(np.asarray(ids, dtype=np.int64), special)
    if not is_special.any() or len(spans) == 0:
        return np.zeros(len(ids), dtype=bool)
    spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    order = np.argsort(spans[:, 0], kind="stable")
    starts, ends = spans[order, 0], spans[order, 1]
    which = np.searchsorted(starts, offsets[:, 0], side="right") - 1
    inside = (which >= 0) & (offsets[:, 1] <= ends[np.maximum(which, 0)]) & (offsets[:, 1] > offsets[:, 0])
    return is_special & inside


def split_special_text(tokenizer: Any, text: str, ids: np.ndarray, offsets: np.ndarray,
                       spans: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """``(ids, offsets, count)``: the tokenization of ``text`` with the special-token text inside the
    content ``spans`` encoded as plain text; ``count`` special tokens were inside contents (0: the input
    arrays are returned unchanged)."""
    forged = special_in_contents(ids, offsets, spans, special_ids(tokenizer))
    count = int(forged.sum())
    if count == 0:
        return ids, offsets, 0
    boundaries = np.flatnonzero(np.isin(np.asarray(ids, dtype=np.int64), special_ids(tokenizer)) & ~forged)
    segments = np.unique(np.searchsorted(boundaries, np.flatnonzero(forged)))
    id_parts, offset_parts, cursor = [], [], 0
    for segment in segments.tolist():
        first = int(boundaries[segment - 1]) + 1 if segment > 0 else 0  # first token of the stretch
        stop = int(boundaries[segment]) if segment < len(boundaries) else len(ids)
        char_start = int(offsets[first - 1, 1]) if first > 0 else 0
        char_end = int(offsets[stop, 0]) if stop < len(ids) else len(text)
        encoding = tokenizer(text[char_start:char_end], add_special_tokens=False, return_offsets_mapping=True,
                             split_special_tokens=True)
        id_parts += [ids[cursor:first], np.asarray(encoding["input_ids"], dtype=np.int32)]
        offset_parts += [offsets[cursor:first],
                         np.asarray(encoding["offset_mapping"], dtype=np.int64).reshape(-1, 2) + char_start]
        cursor = stop
    id_parts.append(ids[cursor:])
    offset_parts.append(offsets[cursor:])
    return np.concatenate(id_parts).astype(np.int32), np.concatenate(offset_parts).astype(np.int64), count
