"""Review findings in stage one: the plan's teacher section and the content spans of trimming templates."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from stages.cache_build.config import BuildConfig
from stages.cache_build.preparation import prepare_samples
from stages.cache_build.skips import SkipCounter
from stages.cache_build.sources import RawSample
from stages.cache_build.survey import teacher_info
from tide.models.teacher import load_teacher
from tide.testing.tiny_models import build_tiny_model
from tide.testing.tokenizers import build_llama3_tokenizer, build_qwen_tokenizer


def test_llada2_config_without_mask_id_records_the_id_the_loaded_teacher_uses(tmp_path, llama3_tokenizer):
    """The upstream LLaDA2.0-mini config.json carries no mask_token_id: the plan must not refuse it, and
    must record the id the loaded model uses (ShardBuilder refuses any difference)."""
    path = build_tiny_model("llada2", tmp_path / "llada2", tokenizer=llama3_tokenizer)
    config_file = path / "config.json"
    raw = json.loads(config_file.read_text())
    del raw["mask_token_id"]
    config_file.write_text(json.dumps(raw))
    config = BuildConfig(teacher=str(path), student_tokenizer="unused", sources="unused", output=str(tmp_path / "o"),
                         pipeline="cross")
    info = teacher_info(config)
    assert info["mask_token_id"] == load_teacher(path).config.mask_token_id == 156_895


def _trimming(tokenizer):
    """The same tokenizer with a chat template that trims every content (as Llama-3's real template does)."""
    tokenizer.chat_template = tokenizer.chat_template.replace("message['content']", "(message['content'] | trim)")
    assert "| trim" in tokenizer.chat_template
    return tokenizer


def test_teacher_template_that_trims_contents_neither_stops_the_build_nor_loses_the_contents(
    tmp_path, student_tokenizer
):
    """A content with surrounding whitespace is rendered verbatim by the student and trimmed by the teacher:
    the aligners used to raise (pipeline A: ValueError out of the whole build) or misplace every token
    after a stripped prefix (pipeline B); now both align the text the two sides share."""
    messages = [{"role": "user", "content": "  Reverse 'abc'.\n"},
                {"role": "assistant", "content": "\n The answer is 'cba'.\n"},
                {"role": "user", "content": "   "},
                {"role": "assistant", "content": "Sure thing."}]
    teachers = {"cross": _trimming(build_llama3_tokenizer(tmp_path / "llama3")),
                "shared": _trimming(build_qwen_tokenizer(tmp_path / "qwen"))}
    for pipeline, teacher in teachers.items():
        skips = SkipCounter()
        out = list(prepare_samples([RawSample("x:0", messages)], student_tokenizer, teacher, pipeline=pipeline,
                                   block_size=32, max_length=128, teacher_max_length=128, skip_counter=skips))
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


def test_auto_dtype_is_recorded_as_the_dtype_it_means_here() -> None:
    """``dtype: auto`` is stored as bf16/fp32 so resuming on another device type is refused, not mixed."""
    from stages.cache_build.config import BuildConfig
    from stages.cache_build.run import pin_dtype as _pin_dtype

    base = BuildConfig(teacher="t", student_tokenizer="s", sources="x", output="o", dtype="auto")
    assert _pin_dtype(dataclasses.replace(base, device="cpu")).dtype == "float32"
    assert _pin_dtype(dataclasses.replace(base, device="cuda:1")).dtype == "bfloat16"
    assert _pin_dtype(dataclasses.replace(base, dtype="float16")).dtype == "float16"
    differences = dataclasses.replace(base, dtype="bfloat16").differences(
        dataclasses.asdict(dataclasses.replace(base, dtype="float32"))
    )
    assert any("dtype" in line for line in differences)
