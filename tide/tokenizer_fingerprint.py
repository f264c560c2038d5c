"""A stable fingerprint of a tokenizer: a cache records its student's, and training checks it against the
student it is given, so a cache is never used with a tokenizer that would assign other ids."""

from __future__ import annotations

import hashlib
import json

from transformers import PreTrainedTokenizerBase


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 over what decides token ids: the vocabulary with added tokens, the special tokens, and the
    chat template. Two tokenizers with equal fingerprints tokenize and template identically."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    payload = {
        "vocab": vocab,
        "special_tokens": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "chat_template": tokenizer.chat_template or "",
        "class": type(tokenizer).__name__,
    }
    blob = json.dumps(payload, ensure_ascii=False, sort_keys=True).encode("utf-8")
    return "sha256:" + hashlib.sha256(blob).hexdigest()
