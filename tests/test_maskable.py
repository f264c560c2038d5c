"""Which student tokens are trained: the final turn after its prompt (the default, the original's rule), or
every assistant content plus each turn's end-of-turn token."""

from __future__ import annotations

import numpy as np
import pytest

from tide.alignment.spans import tokenize_chat
from tide.maskable import (
    last_turn_maskable,
    last_turn_prompt,
    last_turn_prompt_length,
    special_token_ids,
    student_maskable,
)


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


THREE_TURNS = [
    {"role": "user", "content": "Add 2 and 3."},
    {"role": "assistant", "content": "2 + 3 = 5"},
    {"role": "user", "content": "And 4 and 4?"},
    {"role": "assistant", "content": "8"},
]


def _trained_text(tokenizer, messages):
    tokenized = tokenize_chat(tokenizer, messages)
    mask = last_turn_maskable(len(tokenized.ids), last_turn_prompt_length(tokenizer, messages))
    return "".join(tokenizer.decode([int(i)]) for i in tokenized.ids[mask])


def test_last_turn_rule_trains_only_the_final_answer_its_end_of_turn_and_newline(student_tokenizer):
    # ChatML: "...<|im_start|>assistant\n8<|im_end|>\n" — the earlier answer "2 + 3 = 5" is context
    assert _trained_text(student_tokenizer, THREE_TURNS) == "8<|im_end|>\n"
    prompt = "<|im_start|>user\nAdd 2 and 3.<|im_end|>\n<|im_start|>assistant\n2 + 3 = 5<|im_end|>\n" \
             "<|im_start|>user\nAnd 4 and 4?<|im_end|>\n<|im_start|>assistant\n"
    assert last_turn_prompt(student_tokenizer, THREE_TURNS) == prompt
    assert last_turn_prompt_length(student_tokenizer, THREE_TURNS) == len(student_tokenizer(prompt)["input_ids"])


def test_last_turn_rule_with_a_thinking_template_leaves_the_empty_think_block_untrained(qwen3_style_tokenizer):
    """The prompt is rendered with enable_thinking=False, so it ends with the empty think block the template
    also writes into the final assistant turn: the block is prompt, the answer is trained."""
    prompt = last_turn_prompt(qwen3_style_tokenizer, THREE_TURNS)
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert qwen3_style_tokenizer.apply_chat_template(THREE_TURNS, tokenize=False).startswith(prompt)
    assert _trained_text(qwen3_style_tokenizer, THREE_TURNS) == "8<|im_end|>\n"


def test_last_turn_mask_bounds():
    np.testing.assert_array_equal(last_turn_maskable(5, 3), [False, False, False, True, True])
    assert not last_turn_maskable(4, 9).any()
    with pytest.raises(ValueError, match="non-negative"):
        last_turn_maskable(4, -1)
