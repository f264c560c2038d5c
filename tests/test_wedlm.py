"""WeDLM checkpoints load as stock Qwen3ForCausalLM from a translated config."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import Qwen3ForCausalLM

from tide.models.wedlm import (
    DEFAULT_WEDLM_MASK_TOKEN_ID,
    DEFAULT_WEDLM_SHARED_VOCAB_SIZE,
    load_wedlm,
    qwen3_config_from_wedlm,
)
from tide.testing.tiny_models import QWEN3_VOCAB_ROWS, build_tiny_model


@pytest.fixture(scope="module")
def wedlm_dir(tmp_path_factory, wedlm_tokenizer):
    return build_tiny_model("wedlm", tmp_path_factory.mktemp("wedlm"), tokenizer=wedlm_tokenizer, seed=3)


def test_saved_config_is_a_wedlm_config(wedlm_dir):
    raw = json.loads((wedlm_dir / "config.json").read_text())
    assert raw["model_type"] == "wedlm"
    assert raw["architectures"] == ["WeDLMForCausalLM"]
    assert raw["vocab_size"] == QWEN3_VOCAB_ROWS
    assert "rope_parameters" not in raw and raw["rope_theta"] == 1_000_000.0


def test_load_wedlm_gives_qwen3_with_ids_and_the_saved_weights(wedlm_dir):
    model = load_wedlm(wedlm_dir, dtype=torch.float32)
    assert type(model) is Qwen3ForCausalLM
    assert model.config.mask_token_id == 151_665 and model.config.shared_vocab_size == 151_646
    assert model.config.rope_parameters["rope_theta"] == 1_000_000.0
    assert model.config.tie_word_embeddings is False
    saved = load_file(str(wedlm_dir / "model.safetensors"))
    state = model.state_dict()
    assert set(saved) == set(state)
    for name, tensor in saved.items():
        assert torch.equal(state[name], tensor), name
    # Stock Qwen3 is causal: a later token does not change an earlier position's logits.
    ids = torch.randint(0, 1000, (1, 6))
    changed = ids.clone()
    changed[0, -1] += 1
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits[0, :5], model(changed).logits[0, :5])


def test_explicit_ids_override_config_and_defaults_fill_gaps(wedlm_dir, tmp_path):
    model = load_wedlm(wedlm_dir, mask_token_id=151_666, shared_vocab_size=151_643)
    assert model.config.mask_token_id == 151_666 and model.config.shared_vocab_size == 151_643
    # A config without the two keys falls back to the docs/design.md values.
    bare = tmp_path / "bare"
    bare.mkdir()
    raw = json.loads((wedlm_dir / "config.json").read_text())
    for key in ("mask_token_id", "shared_vocab_size"):
        raw.pop(key)
    (bare / "config.json").write_text(json.dumps(raw))
    (bare / "model.safetensors").symlink_to(wedlm_dir / "model.safetensors")
    model = load_wedlm(bare)
    assert model.config.mask_token_id == DEFAULT_WEDLM_MASK_TOKEN_ID
    assert model.config.shared_vocab_size == DEFAULT_WEDLM_SHARED_VOCAB_SIZE


def test_translation_rejects_bad_configs(wedlm_dir):
    raw = json.loads((wedlm_dir / "config.json").read_text())
    with pytest.raises(ValueError, match="model_type='qwen3'"):
        qwen3_config_from_wedlm({**raw, "model_type": "qwen3"})
    with pytest.raises(ValueError, match="qk_norm"):
        qwen3_config_from_wedlm({**raw, "qk_norm": False})
    config = qwen3_config_from_wedlm({**raw, "wedlm_window_size": 16})
    assert config.model_type == "qwen3" and not hasattr(config, "wedlm_window_size")
    with pytest.raises(ValueError, match="mask_token_id=200000"):
        load_wedlm(wedlm_dir, mask_token_id=200_000)
    with pytest.raises(ValueError, match="do not pass `config`"):
        load_wedlm(wedlm_dir, config=config)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_wedlm(wedlm_dir / "nowhere")
