"""The one tiny-model builder: save → load through the real loaders gives the in-memory model's logits, for
all three kinds; a seed fixes the weights; options of one kind are refused for the others."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoTokenizer, Qwen3ForCausalLM

from tide.models.a2d_qwen3 import A2DQwen3LMHeadModel
from tide.models.llada2_moe import LLaDA2MoeForCausalLM
from tide.models.student import load_student
from tide.models.teacher import load_teacher
from tide.models.wedlm import qwen3_config_from_wedlm
from tide.testing.tiny_models import QWEN3_VOCAB_ROWS, build_tiny_model, round_up

SEED = 11


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def _in_memory(cls, config, seed: int = SEED) -> torch.nn.Module:
    torch.manual_seed(seed)
    return cls(config).eval()


def test_student_round_trip(tmp_path, student_tokenizer):
    path = build_tiny_model("student", tmp_path / "student", tokenizer=student_tokenizer, seed=SEED)
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
    path = build_tiny_model("wedlm", tmp_path / "wedlm", tokenizer=wedlm_tokenizer, seed=SEED)
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
    path = build_tiny_model("llada2", tmp_path / "llada2", tokenizer=llama3_tokenizer, seed=SEED)
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


def test_round_up():
    assert round_up(128_257) == 128_320 and round_up(128) == 128 and round_up(1, 64) == 64
    with pytest.raises(ValueError, match="positive"):
        round_up(0)


def test_shape_options_reach_the_saved_config(tmp_path, student_tokenizer, llama3_tokenizer):
    """The replication's shapes: own row count, heads, MLP ratio, RoPE base, init range, MoE width."""
    path = build_tiny_model("student", tmp_path / "s", tokenizer=student_tokenizer, hidden_size=48, num_layers=1,
                            num_heads=6, mlp_ratio=3, vocab_rows=151_680, max_position_embeddings=1024,
                            rope_theta=10_000.0, init_range=0.02)
    config = AutoConfig.from_pretrained(path)
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers) == (151_680, 48, 1)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (6, 3, 8)
    assert config.intermediate_size == 144 and config.max_position_embeddings == 1024
    assert config.rope_parameters["rope_theta"] == 10_000.0 and config.initializer_range == 0.02
    weights = load_student(path).model.embed_tokens.weight
    assert 0.015 < float(weights.detach().std()) < 0.025  # drawn with std 0.02, not the tiny default 0.2
    path = build_tiny_model("llada2", tmp_path / "l", tokenizer=llama3_tokenizer, num_experts=4,
                            moe_intermediate_size=32, rope_theta=10_000.0)
    raw = json.loads((path / "config.json").read_text())
    assert raw["num_experts"] == 4 and raw["moe_intermediate_size"] == 32
    assert load_teacher(path).config.rope_parameters["rope_theta"] == 10_000.0


def test_wedlm_ids_are_written_to_its_config(tmp_path, wedlm_tokenizer):
    path = build_tiny_model("wedlm", tmp_path / "w", tokenizer=wedlm_tokenizer, mask_token_id=151_669,
                            shared_vocab_size=151_600)
    model = load_teacher(path)
    assert model.config.mask_token_id == 151_669 and model.config.shared_vocab_size == 151_600


def test_bad_options_are_refused(tmp_path, student_tokenizer):
    with pytest.raises(ValueError, match="kind='bert'"):
        build_tiny_model("bert", tmp_path / "x")
    with pytest.raises(ValueError, match="num_experts applies to kind='llada2' only"):
        build_tiny_model("student", tmp_path / "x", tokenizer=student_tokenizer, num_experts=4)
    with pytest.raises(ValueError, match="mask_token_id applies to kind='wedlm' only"):
        build_tiny_model("llada2", tmp_path / "x", mask_token_id=3)
    with pytest.raises(ValueError, match="multiple of num_heads"):
        build_tiny_model("student", tmp_path / "x", tokenizer=student_tokenizer, hidden_size=30)
    with pytest.raises(ValueError, match="num_experts=3"):
        build_tiny_model("llada2", tmp_path / "x", num_experts=3)
    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        build_tiny_model("student", tmp_path / "x", tokenizer=student_tokenizer, vocab_rows=1000)
