"""Tiny factories: save → load through the real path gives the in-memory model's logits, for all three types."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoTokenizer, Qwen3ForCausalLM

from tide.models.a2d_qwen3 import A2DQwen3LMHeadModel
from tide.models.factories import (
    QWEN3_VOCAB_ROWS,
    build_tiny_llada2,
    build_tiny_student,
    build_tiny_wedlm,
    default_dtype,
    load_student,
    load_teacher,
    round_up,
)
from tide.models.llada2_moe import LLaDA2MoeForCausalLM
from tide.models.wedlm import qwen3_config_from_wedlm

SEED = 11


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def _in_memory(cls, config, seed: int = SEED) -> torch.nn.Module:
    torch.manual_seed(seed)
    return cls(config).eval()


def test_student_round_trip(tmp_path, student_tokenizer):
    path = build_tiny_student(tmp_path / "student", tokenizer=student_tokenizer, seed=SEED)
    raw = json.loads((path / "config.json").read_text())
    assert raw["model_type"] == "a2d-qwen3" and raw["vocab_size"] == QWEN3_VOCAB_ROWS
    assert raw["architectures"] == ["A2DQwen3LMHeadModel"] and "auto_map" in raw  # remote code listed, unused
    model = load_student(path)
    assert type(model) is A2DQwen3LMHeadModel and model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    reference = _in_memory(A2DQwen3LMHeadModel, AutoConfig.from_pretrained(path))
    ids = torch.randint(0, 151_000, (2, 10))
    torch.testing.assert_close(_logits(model, ids), _logits(reference, ids), atol=0, rtol=0)
    other_seed = _in_memory(A2DQwen3LMHeadModel, AutoConfig.from_pretrained(path), seed=SEED + 1)
    assert (_logits(model, ids) - _logits(other_seed, ids)).abs().max() > 1e-3  # the seed matters
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer.mask_token_id == student_tokenizer.mask_token_id == 151_669


def test_wedlm_round_trip(tmp_path, wedlm_tokenizer):
    path = build_tiny_wedlm(tmp_path / "wedlm", tokenizer=wedlm_tokenizer, seed=SEED)
    raw = json.loads((path / "config.json").read_text())
    assert raw["model_type"] == "wedlm" and raw["vocab_size"] == QWEN3_VOCAB_ROWS
    assert raw["mask_token_id"] == 151_665 and raw["shared_vocab_size"] == 151_646
    model = load_teacher(path)
    assert type(model) is Qwen3ForCausalLM and not model.training
    reference = _in_memory(Qwen3ForCausalLM, qwen3_config_from_wedlm(raw))
    ids = torch.randint(0, 151_000, (2, 10))
    torch.testing.assert_close(_logits(model, ids), _logits(reference, ids), atol=0, rtol=0)
    saved_template = json.loads((path / "tokenizer_config.json").read_text()).get("chat_template")
    if saved_template is None:
        saved_template = (path / "chat_template.jinja").read_text()
    assert saved_template == wedlm_tokenizer.chat_template
    with pytest.raises(ValueError, match="not a student type"):
        load_student(path)


def test_llada2_round_trip(tmp_path, llama3_tokenizer):
    path = build_tiny_llada2(tmp_path / "llada2", tokenizer=llama3_tokenizer, seed=SEED)
    raw = json.loads((path / "config.json").read_text())
    assert raw["model_type"] == "llada2_moe"
    assert len(llama3_tokenizer) == 128_257 and raw["vocab_size"] == 128_320
    assert raw["mask_token_id"] == llama3_tokenizer.mask_token_id == 128_256
    model = load_teacher(path)
    assert type(model) is LLaDA2MoeForCausalLM
    reference = _in_memory(LLaDA2MoeForCausalLM, AutoConfig.from_pretrained(path))
    ids = torch.randint(0, 128_000, (2, 10))
    # Same weights; loaded tensors may take another kernel path through the expert matmuls (rounding only).
    torch.testing.assert_close(_logits(model, ids), _logits(reference, ids), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="not a student type"):
        load_student(path)


def test_helpers_and_dispatch_errors(tmp_path):
    assert round_up(128_257) == 128_320 and round_up(128) == 128 and round_up(1, 64) == 64
    with pytest.raises(ValueError, match="positive"):
        round_up(0)
    assert default_dtype("cpu") == torch.float32 and default_dtype(None) == torch.float32
    assert default_dtype("cuda") == torch.bfloat16
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="not a supported teacher"):
        load_teacher(other)
