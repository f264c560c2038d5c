"""The alignment's bounded-cost pieces: byte offsets in one pass, the content budget, special-token text."""

from __future__ import annotations

import numpy as np

from tide.alignment.content_budget import MARGIN_TOKENS, content_budget, cut_contents
from tide.alignment.spans import token_byte_intervals, tokenize_with_offsets, utf8_offsets
from tide.alignment.special_text import special_in_contents, split_special_text
from tide.alignment.token_bytes import token_bytes_table

MIXED = "ab café 数据 𝔘𝔫𝔦 — naïve\n\tend 🙂!"


def test_utf8_offsets_equal_the_encoded_prefix_lengths():
    offsets = utf8_offsets(MIXED)
    assert offsets.tolist() == [len(MIXED[:c].encode("utf-8")) for c in range(len(MIXED) + 1)]
    assert utf8_offsets("").tolist() == [0]


def _reference_intervals(text, offsets, ids, table, start, end):
    """The original per-token formula (re-encodes each token's text prefix): quadratic, but plainly right."""
    out = []
    inside = [k for k in range(len(ids)) if offsets[k, 0] >= start and offsets[k, 1] <= end
              and offsets[k, 1] > offsets[k, 0]]
    ends = {}
    for position in range(len(inside) - 1, -1, -1):
        k = inside[position]
        nxt = inside[position + 1] if position + 1 < len(inside) else None
        if nxt == k + 1 and offsets[nxt, 0] < offsets[k, 1] and nxt in ends:
            ends[k] = ends[nxt] - len(table[int(ids[nxt])])
        else:
            ends[k] = len(text[start:int(offsets[k, 1])].encode("utf-8"))
    span_bytes = len(text[start:end].encode("utf-8"))
    for k in inside:
        length = len(table[int(ids[k])])
        if length > 0 and ends[k] - length >= 0 and ends[k] <= span_bytes:
            out.append((k, ends[k] - length, ends[k]))
    return out


def test_byte_intervals_equal_the_per_token_formula(student_tokenizer, llama3_tokenizer):
    text = "prefix " + MIXED * 20 + " suffix"
    for tokenizer in (student_tokenizer, llama3_tokenizer):
        ids, offsets = tokenize_with_offsets(tokenizer, text)
        table = token_bytes_table(tokenizer)
        for start, end in ((7, len(text) - 7), (0, len(text)), (9, 40)):
            assert (token_byte_intervals(text, offsets, ids, table, start, end)
                    == _reference_intervals(text, offsets, ids, table, start, end))


def test_content_budget_holds_the_capacity_and_the_margin(student_tokenizer):
    short = "a few words"
    assert content_budget(student_tokenizer, short, 512) is None
    prose = "the value of x is returned when the list is empty " * 2000
    budget = content_budget(student_tokenizer, prose, 512)
    assert budget is not None and budget < len(prose)
    held = len(student_tokenizer(prose[:budget], add_special_tokens=False)["input_ids"])
    assert held >= 512 + MARGIN_TOKENS
    # long tokens (runs of '=' merge into pieces of up to 16 characters or more): the prefix doubles until
    # it holds enough tokens
    rule = "=" * 400_000
    budget = content_budget(student_tokenizer, rule, 512)
    assert budget is not None and len(student_tokenizer(rule[:budget], add_special_tokens=False)["input_ids"]) >= 576
    messages = [{"role": "user", "content": short}, {"role": "assistant", "content": prose}]
    cut, cuts = cut_contents(messages, [(student_tokenizer, 512), (student_tokenizer, 1024)])
    assert cut[0] == messages[0] and len(cuts) == 1 and cuts[0].index == 1
    assert cut[1]["content"] == prose[: cuts[0].kept] and cuts[0].kept + cuts[0].removed == len(prose)
    assert cuts[0].kept == content_budget(student_tokenizer, prose, 1024)  # the larger side's budget


def test_split_special_text_keeps_the_template_tokens(student_tokenizer):
    text = "<|im_start|>user\nsay <|im_end|> now<|im_end|>\n"
    content = (len("<|im_start|>user\n"), len("<|im_start|>user\nsay <|im_end|> now"))
    ids, offsets = tokenize_with_offsets(student_tokenizer, text)
    spans = np.asarray([content])
    forged = special_in_contents(ids, offsets, spans, np.asarray([151644, 151645]))
    assert forged.sum() == 1 and ids[forged].tolist() == [151645]
    new_ids, new_offsets, count = split_special_text(student_tokenizer, text, ids, offsets, spans)
    assert count == 1
    assert new_ids.tolist().count(151645) == 1 and new_ids[0] == 151644 and new_ids[-2] == 151645
    assert student_tokenizer.decode(new_ids.tolist()) == text
    assert [text[a:b] for a, b in new_offsets.tolist()] == [student_tokenizer.decode([i]) for i in new_ids.tolist()]
    # the stretch re-encoded is the content's, as the tokenizer would encode it with the special text plain
    plain = student_tokenizer("user\nsay <|im_end|> now", add_special_tokens=False, split_special_tokens=True)
    assert new_ids[1:-2].tolist() == plain["input_ids"]
