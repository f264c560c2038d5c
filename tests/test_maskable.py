"""Which student tokens are trained: assistant contents plus each turn's end-of-turn token."""

from __future__ import annotations

import numpy as np

from tide.alignment.spans import tokenize_chat
from tide.maskable import special_token_ids, student_maskable


def test_assistant_contents_and_their_end_of_turn_tokens_are_maskable(student_tokenizer):
    messages = [
        {"role": "user", "content": "Add 2 and 3."},
        {"role": "assistant", "content": "2 + 3 = 5"},
        {"role": "user", "content": "And 4 and 4?"},
        {"role": "assistant", "content": "8"},
    ]
    tokenized = tokenize_chat(student_tokenizer, messages)
    mask = student_maskable(tokenized, [m["role"] for m in messages], special_token_ids(student_tokenizer))
    pieces = [student_tokenizer.decode([int(i)]) for i in tokenized.ids[mask]]
    # ChatML: "<|im_start|>assistant\n2 + 3 = 5<|im_end|>\n..." — the content, then the closing <|im_end|>.
    assert "".join(pieces) == "2 + 3 = 5<|im_end|>8<|im_end|>"
    im_end = student_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in special_token_ids(student_tokenizer)
    assert int(np.count_nonzero(tokenized.ids[mask] == im_end)) == 2
