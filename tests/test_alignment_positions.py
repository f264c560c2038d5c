"""Pipeline B position alignment: Qwen student (ChatML) vs WeDLM-style template (default system turn)."""

from __future__ import annotations

import numpy as np

from tide.alignment.positions import DROP_ID_MISMATCH, align_positions
from tide.alignment.spans import TokenizedText, locate_content_spans, tokenize_chat, tokens_in_span

MESSAGES = [
    {"role": "user", "content": "Write a function that returns caf\u00e9 \U0001f642 twice."},
    {"role": "assistant", "content": "def twice():\n    return 'caf\u00e9 \U0001f642' * 2\n"},
    {"role": "user", "content": "Thanks!"},
    {"role": "assistant", "content": "You're welcome."},
]
SYSTEM_TURN = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"


def test_content_spans_hold_the_contents(student_tokenizer, wedlm_tokenizer):
    for tokenizer in (student_tokenizer, wedlm_tokenizer):
        text, spans = locate_content_spans(tokenizer, MESSAGES)
        assert [text[a:b] for a, b in spans] == [m["content"] for m in MESSAGES]
    text, spans = locate_content_spans(wedlm_tokenizer, MESSAGES)
    assert text.startswith(SYSTEM_TURN) and spans[0, 0] == len(SYSTEM_TURN) + len("<|im_start|>user\n")


def test_short_contents_found_at_their_turn(student_tokenizer):
    # "a" and "user" also occur inside the template text; the spans must still be the contents.
    messages = [{"role": "user", "content": "user"}, {"role": "assistant", "content": "a"}]
    text, spans = locate_content_spans(student_tokenizer, messages)
    assert text == "<|im_start|>user\nuser<|im_end|>\n<|im_start|>assistant\na<|im_end|>\n"
    first = len("<|im_start|>user\n")
    second = len("<|im_start|>user\nuser<|im_end|>\n<|im_start|>assistant\n")
    assert spans.tolist() == [[first, first + 4], [second, second + 1]] == [[17, 21], [54, 55]]


def test_identical_content_tokens_pair_one_to_one(student_tokenizer, wedlm_tokenizer):
    student = tokenize_chat(student_tokenizer, MESSAGES)
    teacher = tokenize_chat(wedlm_tokenizer, MESSAGES)
    pairs = align_positions(student, teacher)
    assert not pairs.drops
    content_tokens = sum(len(tokens_in_span(student.offsets, a, b)) for a, b in student.content_spans)
    assert len(pairs) == content_tokens
    # The teacher sequence is the student's with the system turn in front: a constant shift.
    shift = len(wedlm_tokenizer(SYSTEM_TURN, add_special_tokens=False)["input_ids"])
    assert (pairs.teacher_pos - pairs.student_pos == shift).all()
    assert (student.ids[pairs.student_pos] == teacher.ids[pairs.teacher_pos]).all()
    assert pairs.teacher_pos.min() >= shift  # nothing in the system turn is paired
    assert (np.diff(pairs.student_pos) > 0).all()


def test_id_mismatch_and_truncation_are_dropped(student_tokenizer, wedlm_tokenizer):
    student = tokenize_chat(student_tokenizer, MESSAGES)
    teacher = tokenize_chat(wedlm_tokenizer, MESSAGES)
    full = align_positions(student, teacher)
    changed_ids = teacher.ids.copy()
    changed_ids[full.teacher_pos[:3]] += 1
    altered = TokenizedText(teacher.text, changed_ids, teacher.offsets, teacher.content_spans)
    pairs = align_positions(student, altered)
    assert pairs.drops == {DROP_ID_MISMATCH: 3}
    assert len(pairs) == len(full) - 3
    limited = align_positions(student, teacher, student_limit=20, teacher_limit=40)
    assert (limited.student_pos < 20).all() and (limited.teacher_pos < 40).all()
    expected = int(((full.student_pos < 20) & (full.teacher_pos < 40)).sum())
    assert len(limited) == expected and limited.drops["pair_truncated"] == len(full) - expected
