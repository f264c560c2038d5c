"""The build's data survey: the teacher and student sections it records for the manifest."""

from __future__ import annotations

import json

from stages.cache_build.config import BuildConfig
from stages.cache_build.survey import teacher_info
from tide.models.teacher import load_teacher
from tide.testing.tiny_models import build_tiny_model


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
