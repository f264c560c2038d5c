"""Stage-one preparation of samples: padding, truncation and trained positions, skipped rows counted by
reason, and alignment bounds on HumanEval."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stages.cache_build.preparation import PreparationSettings, PrepStats, prepare_sample, prepare_samples
from stages.cache_build.skips import SkipCounter
from stages.cache_build.sources import RawSample, iter_sources
from tide.alignment.token_bytes import token_bytes_table
from tide.noise import sample_key
from tide.testing.chat_data import humaneval_chat, write_chat_jsonl
from tide.testing.tokenizers import build_llama3_tokenizer, build_qwen_tokenizer

QA = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "2 + 3 = 5."}]


def _write_jsonl(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _prep(raw, student, teacher, **kw):
    args = {"pipeline": "shared", "block_size": 32, "max_length": 256, "teacher_max_length": 256}
    args.update(kw)
    return prepare_sample(raw, student, teacher, PreparationSettings(**args))


def test_padding_and_maskable(student_tokenizer, wedlm_tokenizer):
    sample = _prep(RawSample("t:0", QA), student_tokenizer, wedlm_tokenizer)
    rendered = student_tokenizer.apply_chat_template(QA, tokenize=False)
    raw_ids = student_tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert sample.length == 32 and sample.num_padding == 32 - len(raw_ids)
    assert sample.input_ids.dtype == np.int32 and sample.maskable.dtype == np.bool_
    assert sample.input_ids[: len(raw_ids)].tolist() == raw_ids
    eos = student_tokenizer.eos_token_id
    assert (sample.input_ids[len(raw_ids) :] == eos).all() and sample.maskable[len(raw_ids) :].all()
    trained = sample.input_ids[: len(raw_ids)][sample.maskable[: len(raw_ids)]]
    # the final turn after its prompt: the content, <|im_end|> and ChatML's newline (the original's labels)
    assert student_tokenizer.decode(trained.tolist()) == "2 + 3 = 5.<|im_end|>\n"
    assert sample.num_response_tokens == len(trained)
    assert sample.sample_key == sample_key(QA)
    assert sample.sample_id == "t:0"


def test_truncation_and_prompt_too_long(student_tokenizer, wedlm_tokenizer):
    long_answer = [QA[0], {"role": "assistant", "content": " ".join(f"word{i}" for i in range(200))}]
    sample = _prep(RawSample("t:1", long_answer), student_tokenizer, wedlm_tokenizer,
                   max_length=64, teacher_max_length=50, teacher_context="full")
    assert sample.length == 64 and sample.num_padding == 0 and sample.teacher_input_ids.shape == (50,)
    assert sample.student_pos.max() < 64 and sample.teacher_pos.max() < 50
    assert sample.drops["pair_truncated"] > 0
    long_prompt = [{"role": "user", "content": "word " * 100}, QA[1]]
    skips = SkipCounter()
    out = list(prepare_samples([RawSample("t:2", long_prompt), RawSample("t:3", QA)], student_tokenizer,
                               wedlm_tokenizer, PreparationSettings("shared", 32, 64, 64), skip_counter=skips))
    assert [s.sample_id for s in out] == ["t:3"]
    assert skips.as_dict() == {"prompt_too_long": 1}


def test_bad_lengths_are_errors(student_tokenizer, wedlm_tokenizer):
    with pytest.raises(ValueError, match="max_length=100"):
        _prep(RawSample("t:0", QA), student_tokenizer, wedlm_tokenizer, max_length=100)
    with pytest.raises(ValueError, match="pipeline='other'"):
        _prep(RawSample("t:0", QA), student_tokenizer, wedlm_tokenizer, pipeline="other")


def test_malformed_rows_are_counted(tmp_path, student_tokenizer, wedlm_tokenizer):
    good = json.dumps({"messages": QA})
    lines = [
        good,
        "{not json",
        json.dumps({"text": "no messages here"}),
        json.dumps({"messages": "not a list"}),
        json.dumps({"messages": []}),
        json.dumps({"messages": [{"role": "user"}]}),
        json.dumps({"messages": [{"role": "narrator", "content": "x"}, QA[1]]}),
        json.dumps({"messages": [QA[0], {"role": "assistant", "content": "   "}]}),
        json.dumps({"messages": [QA[0], {"role": "assistant", "content": 5}]}),
        '{"messages": [{"role": "user", "content": "bad \\ud800"}, {"role": "assistant", "content": "ok"}]}',
        json.dumps({"messages": [QA[0]]}),
        json.dumps([1, 2]),
        json.dumps({"instruction": "Say hi.", "output": "hi"}),
    ]
    path = tmp_path / "rows.jsonl"
    _write_jsonl(path, lines)
    skips = SkipCounter()
    out = list(prepare_samples(iter_sources(str(path), skips), student_tokenizer, wedlm_tokenizer,
                               PreparationSettings("shared", 32, 128, 128),
                               skip_counter=skips))
    assert [s.sample_id for s in out] == [f"{path}:0", f"{path}:12"]
    assert skips.as_dict() == {
        "bad_content_type": 1,
        "bad_message_type": 1,
        "bad_messages_type": 1,
        "bad_row_type": 1,
        "empty_assistant": 1,
        "invalid_json": 1,
        "no_assistant_turn": 1,
        "no_messages": 2,
        "undecodable_text": 1,
        "unknown_role": 1,
    }
    assert skips.total == 11


def test_alignment_never_points_outside(tmp_path, student_tokenizer, wedlm_tokenizer, llama3_tokenizer):
    rows = list(iter_sources(str(write_chat_jsonl(tmp_path / "chat.jsonl", humaneval_chat(25, 10)))))
    s_table, t_table = token_bytes_table(student_tokenizer), token_bytes_table(llama3_tokenizer)
    for pipeline, teacher in (("shared", wedlm_tokenizer), ("cross", llama3_tokenizer)):
        stats, skips = PrepStats(), SkipCounter()
        samples = list(prepare_samples(rows, student_tokenizer, teacher, PreparationSettings(pipeline, 32, 160, 150), stats=stats, skip_counter=skips))
        # long HumanEval docstrings fill 160 student tokens: the only acceptable reason to skip here
        assert set(skips.as_dict()) <= {"prompt_too_long"}
        assert len(samples) + skips.total == len(rows) and stats.samples == len(samples) >= 25
        for s in samples:
            # the paper teacher context: pipeline B pads the cut teacher to whole blocks (as the original did)
            assert s.length % 32 == 0 and s.length <= 160 and s.teacher_input_ids.shape[0] <= 160
            if pipeline == "shared":
                assert (s.student_pos < s.length).all() and (s.teacher_pos < len(s.teacher_input_ids)).all()
                assert (s.input_ids[s.student_pos] == s.teacher_input_ids[s.teacher_pos]).all()
                assert s.chunks is None
            else:
                c = s.chunks
                assert len(c) == len(s.chunk_in_prompt) > 0
                assert (c.student_start < c.student_end).all() and (c.teacher_start < c.teacher_end).all()
                assert (c.student_end <= s.length).all() and (c.teacher_end <= len(s.teacher_input_ids)).all()
                for k in range(len(c)):
                    sb = b"".join(s_table[i] for i in s.input_ids[c.student_start[k]:c.student_end[k]])
                    tb = b"".join(t_table[i] for i in s.teacher_input_ids[c.teacher_start[k]:c.teacher_end[k]])
                    assert sb == tb
                    # response chunks are trained positions, prompt chunks are not
                    span = s.maskable[c.student_start[k]:c.student_end[k]]
                    assert (~span).all() if s.chunk_in_prompt[k] else span.all()
        covered = 0
        for s in samples:
            hit = np.zeros(s.length, dtype=bool)
            if pipeline == "shared":
                hit[s.student_pos] = True
            else:
                for k in np.flatnonzero(~s.chunk_in_prompt):
                    hit[s.chunks.student_start[k]:s.chunks.student_end[k]] = True
            covered += int((hit & s.maskable).sum())
        assert stats.covered_tokens == covered > 0
        assert stats.alignment_yield == pytest.approx(covered / stats.response_tokens)
        assert stats.as_dict()["response_tokens"] == sum(s.num_response_tokens for s in samples)


def _trimming(tokenizer):
    """The same tokenizer with a chat template that trims every content (as Llama-3's real template does)."""
    tokenizer.chat_template = tokenizer.chat_template.replace("message['content']", "(message['content'] | trim)")
    assert "| trim" in tokenizer.chat_template
    return tokenizer


def test_teacher_template_that_trims_contents_neither_stops_the_build_nor_loses_the_contents(
    tmp_path, student_tokenizer
):
    """A content with surrounding whitespace is rendered verbatim by the student and trimmed by the teacher:
    both aligners align the text the two sides share, with no skipped sample and no misplaced token."""
    messages = [{"role": "user", "content": "  Reverse 'abc'.\n"},
                {"role": "assistant", "content": "\n The answer is 'cba'.\n"},
                {"role": "user", "content": "   "},
                {"role": "assistant", "content": "Sure thing."}]
    teachers = {"cross": _trimming(build_llama3_tokenizer(tmp_path / "llama3")),
                "shared": _trimming(build_qwen_tokenizer(tmp_path / "qwen"))}
    for pipeline, teacher in teachers.items():
        skips = SkipCounter()
        settings = PreparationSettings(pipeline, 32, 128, 128, train_turns="all")  # both answers trained
        out = list(prepare_samples([RawSample("x:0", messages)], student_tokenizer, teacher, settings,
                                   skip_counter=skips))
        assert skips.total == 0 and len(out) == 1, (pipeline, skips)
        sample = out[0]
        if pipeline == "cross":
            starts, ends = sample.chunks.student_start, sample.chunks.student_end
            teacher_starts, teacher_ends = sample.chunks.teacher_start, sample.chunks.teacher_end
            student_text = "".join(student_tokenizer.decode(sample.input_ids[s:e].tolist())
                                   for s, e in zip(starts, ends, strict=True))
            teacher_text = "".join(teacher.decode(sample.teacher_input_ids[s:e].tolist())
                                   for s, e in zip(teacher_starts, teacher_ends, strict=True))
            assert student_text == teacher_text
            assert "answer is" in student_text and "Sure thing" in student_text
        else:
            np.testing.assert_array_equal(sample.input_ids[sample.student_pos],
                                          sample.teacher_input_ids[sample.teacher_pos])
            decoded = student_tokenizer.decode(sample.input_ids[sample.student_pos].tolist())
            assert "answer is" in decoded and "Sure thing" in decoded
        assert sample.num_covered_tokens >= 6


# ------------------------------------------------------------------ which turns are trained, the skip rule

MULTI = [
    {"role": "user", "content": "Add 2 and 3."},
    {"role": "assistant", "content": "2 + 3 = 5"},
    {"role": "user", "content": "And 4 and 4?"},
    {"role": "assistant", "content": "8"},
]


def _chatml_prompt(messages):
    """The last-turn prompt written by hand (ChatML), independent of apply_chat_template."""
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages[:-1])
    return turns + "<|im_start|>assistant\n"


def _user_of_prompt_length(tokenizer, length):
    """A user question whose last-turn prompt is exactly ``length`` tokens (" a" is one Qwen token)."""
    base = len(tokenizer(_chatml_prompt([{"role": "user", "content": "a"}, QA[1]]))["input_ids"])
    content = "a" + " a" * (length - base)
    messages = [{"role": "user", "content": content}, QA[1]]
    assert len(tokenizer(_chatml_prompt(messages))["input_ids"]) == length
    return messages


def test_last_turn_default_on_a_multi_turn_chat(student_tokenizer, wedlm_tokenizer):
    last = _prep(RawSample("m:0", MULTI), student_tokenizer, wedlm_tokenizer)
    every = _prep(RawSample("m:0", MULTI), student_tokenizer, wedlm_tokenizer, train_turns="all")
    real = len(student_tokenizer(_chatml_prompt(MULTI) + "8<|im_end|>\n")["input_ids"])
    prompt = len(student_tokenizer(_chatml_prompt(MULTI))["input_ids"])
    np.testing.assert_array_equal(np.flatnonzero(last.maskable[:real]), np.arange(prompt, real))
    assert student_tokenizer.decode(last.input_ids[prompt:real].tolist()) == "8<|im_end|>\n"
    assert student_tokenizer.decode(every.input_ids[:real][every.maskable[:real]].tolist()) == \
        "2 + 3 = 5<|im_end|>8<|im_end|>"
    # pipeline B: targets only where the mask can fall, so the earlier answer's pairs never become targets
    assert last.num_response_tokens == real - prompt < every.num_response_tokens


def test_skip_rule_is_the_last_turn_prompt_against_max_length(student_tokenizer, wedlm_tokenizer):
    skips = SkipCounter()
    rows = [RawSample("p:64", _user_of_prompt_length(student_tokenizer, 64)),
            RawSample("p:63", _user_of_prompt_length(student_tokenizer, 63))]
    out = list(prepare_samples(rows, student_tokenizer, wedlm_tokenizer, PreparationSettings("shared", 32, 64, 96),
                               skip_counter=skips))
    assert [s.sample_id for s in out] == ["p:63"] and skips.as_dict() == {"prompt_too_long": 1}
    kept = out[0]
    assert kept.length == 64 and np.flatnonzero(kept.maskable).tolist() == [63]  # one response token fits
    assert kept.num_response_tokens == 1
    # a long earlier exchange: the first answer fits, the last turn's prompt does not
    long_history = [QA[0], QA[1], {"role": "user", "content": "word " * 80}, {"role": "assistant", "content": "ok"}]
    for turns, expected in (("last", {"prompt_too_long": 1}), ("all", {})):
        skips = SkipCounter()
        list(prepare_samples([RawSample("h:0", long_history)], student_tokenizer, wedlm_tokenizer,
                             PreparationSettings("shared", 32, 64, 96, train_turns=turns), skip_counter=skips))
        assert skips.as_dict() == expected, turns


def test_a_conversation_ending_with_a_user_turn_is_skipped_under_the_last_turn_rule(student_tokenizer,
                                                                                   wedlm_tokenizer):
    skips = SkipCounter()
    rows = [RawSample("u:0", [*QA, {"role": "user", "content": "thanks"}])]
    assert list(prepare_samples(rows, student_tokenizer, wedlm_tokenizer, PreparationSettings("shared", 32, 64, 96),
                                skip_counter=skips)) == []
    assert skips.as_dict() == {"last_turn_not_assistant": 1}


def test_pipeline_a_chunks_of_earlier_answers_are_prompt_chunks(student_tokenizer, llama3_tokenizer):
    for turns in ("last", "all"):
        sample = _prep(RawSample("m:0", MULTI), student_tokenizer, llama3_tokenizer, pipeline="cross",
                       train_turns=turns)
        c = sample.chunks
        text = {k: student_tokenizer.decode(sample.input_ids[c.student_start[k]:c.student_end[k]].tolist())
                for k in range(len(c))}
        active = "".join(text[k] for k in np.flatnonzero(~sample.chunk_in_prompt))
        assert active == ("8" if turns == "last" else "2 + 3 = 58"), turns


# ------------------------------------------------------------------ the teacher context

LONG = [QA[0], {"role": "assistant", "content": " ".join(f"word{i}" for i in range(120))}]


def test_pipeline_a_teacher_ends_at_the_last_chunk_inside_the_student_sequence(student_tokenizer,
                                                                               llama3_tokenizer):
    """The student rendering (~250 tokens) is truncated to 64: the paper teacher context ends right after
    the last chunk that fits, as the original's collator cut it; ``full`` keeps the capped sequence."""
    common = dict(pipeline="cross", max_length=64, teacher_max_length=512)
    full = _prep(RawSample("l:0", LONG), student_tokenizer, llama3_tokenizer, teacher_context="full", **common)
    paper = _prep(RawSample("l:0", LONG), student_tokenizer, llama3_tokenizer, **common)
    teacher_all = llama3_tokenizer(llama3_tokenizer.apply_chat_template(LONG, tokenize=False),
                                   add_special_tokens=False)["input_ids"]
    assert full.teacher_input_ids.tolist() == teacher_all  # under the cap: nothing cut
    fitting = full.chunks.student_end <= 64
    assert fitting.all()  # no chunk reaches past the truncated student
    end = int(full.chunks.teacher_end[fitting].max())
    assert 0 < end < len(teacher_all)
    assert paper.teacher_input_ids.tolist() == teacher_all[:end]
    last_text = student_tokenizer.decode(paper.input_ids[paper.chunks.student_start[-1]:64].tolist())
    assert llama3_tokenizer.decode(paper.teacher_input_ids.tolist()).endswith(last_text.rstrip())
    np.testing.assert_array_equal(paper.chunks.teacher_end, full.chunks.teacher_end)


def test_pipeline_b_teacher_ends_after_the_last_pair_and_is_eos_padded_to_blocks(student_tokenizer,
                                                                                 wedlm_tokenizer):
    common = dict(pipeline="shared", max_length=64, teacher_max_length=512)
    full = _prep(RawSample("l:0", LONG), student_tokenizer, wedlm_tokenizer, teacher_context="full", **common)
    paper = _prep(RawSample("l:0", LONG), student_tokenizer, wedlm_tokenizer, **common)
    end = int(full.teacher_pos.max()) + 1
    assert end < len(full.teacher_input_ids)
    padded = -(-end // 32) * 32
    assert len(paper.teacher_input_ids) == padded
    assert paper.teacher_input_ids[:end].tolist() == full.teacher_input_ids[:end].tolist()
    assert (paper.teacher_input_ids[end:] == wedlm_tokenizer.eos_token_id).all()
