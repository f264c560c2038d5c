"""BD3LM student forward: x_t ⊕ x0 against block-by-block inference, padding, attention implementations."""

from __future__ import annotations

import pytest
import torch

from tide.bd3lm import block_causal_bool_mask
from tide.models.a2d_qwen3 import A2DQwen3Config, A2DQwen3LMHeadModel, mask_token_id_from_tokenizer
from tide.models.student import bd3lm_forward, bd3lm_hidden_states, build_bd3lm_inputs

VOCAB, MASK_ID, BLOCK = 96, 95, 4


def _student(impl: str = "sdpa") -> A2DQwen3LMHeadModel:
    config = A2DQwen3Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, initializer_range=0.2, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = A2DQwen3LMHeadModel(config).eval()
    model.set_attn_implementation(impl)
    return model


def _batch(batch: int = 2, seq_len: int = 12, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, VOCAB - 1, (batch, seq_len), generator=gen)
    masked = torch.rand(batch, seq_len, generator=gen) < 0.5
    noised = torch.where(masked, torch.full_like(clean, MASK_ID), clean)
    return noised, clean


def test_noisy_blocks_equal_block_by_block_inference():
    """Block j of x_t sees exactly [clean blocks < j, noisy block j]: one forward per block with a plain
    block-causal mask over that prefix gives the same logits."""
    model = _student()
    noised, clean = _batch()
    with torch.no_grad():
        logits = bd3lm_forward(model, noised, clean, block_size=BLOCK)
        assert logits.shape == (2, 12, VOCAB)
        for j in range(3):
            prefix = torch.cat([clean[:, : j * BLOCK], noised[:, j * BLOCK : (j + 1) * BLOCK]], dim=1)
            plain = block_causal_bool_mask(prefix.shape[1], BLOCK)[None, None]
            ref = model(input_ids=prefix, attention_mask=plain).logits[:, j * BLOCK :]
            torch.testing.assert_close(logits[:, j * BLOCK : (j + 1) * BLOCK], ref, atol=1e-5, rtol=1e-5)


def test_sdpa_and_eager_give_the_same_logits():
    noised, clean = _batch()
    padding = torch.ones_like(noised)
    padding[1, 9:] = 0
    with torch.no_grad():
        sdpa = bd3lm_forward(_student("sdpa"), noised, clean, block_size=BLOCK, attention_mask=padding)
        eager = bd3lm_forward(_student("eager"), noised, clean, block_size=BLOCK, attention_mask=padding)
    assert not torch.isnan(sdpa).any()
    torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=1e-5)


def test_right_padding_is_invisible_to_real_tokens():
    model = _student()
    noised, clean = _batch()
    padding = torch.ones_like(noised)
    padding[1, 9:] = 0
    other_noised, other_clean = noised.clone(), clean.clone()
    other_noised[1, 9:] = 7
    other_clean[1, 9:] = 11
    with torch.no_grad():
        batched = bd3lm_forward(model, noised, clean, block_size=BLOCK, attention_mask=padding)
        swapped = bd3lm_forward(model, other_noised, other_clean, block_size=BLOCK, attention_mask=padding)
        alone = bd3lm_forward(model, noised[1:], clean[1:], block_size=BLOCK, attention_mask=padding[1:])
        unmasked = bd3lm_forward(model, other_noised, other_clean, block_size=BLOCK)
    torch.testing.assert_close(batched[1, :9], swapped[1, :9], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched[1, :9], alone[0, :9], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched[0], swapped[0], atol=1e-5, rtol=1e-5)
    # Without the padding mask the changed pads do leak into block 2 (the test can fail).
    assert (unmasked[1, 8] - batched[1, 8]).abs().max() > 1e-3


def test_hidden_state_variant_matches_logits():
    model = _student()
    noised, clean = _batch()
    with torch.no_grad():
        hidden = bd3lm_hidden_states(model, noised, clean, block_size=BLOCK)
        logits = bd3lm_forward(model, noised, clean, block_size=BLOCK)
        picked = model.lm_head(hidden[0, [1, 5]])
    assert hidden.shape == (2, 12, 32)
    torch.testing.assert_close(picked, logits[0, [1, 5]])


def test_inputs_layout_and_errors():
    noised, clean = _batch()
    inputs = build_bd3lm_inputs(noised, clean, block_size=BLOCK)
    assert torch.equal(inputs.input_ids, torch.cat([noised, clean], dim=1))
    assert inputs.position_ids[0].tolist() == list(range(12)) * 2
    assert inputs.attention_mask.shape == (1, 1, 24, 24)
    with pytest.raises(ValueError, match="multiple of block_size"):
        build_bd3lm_inputs(noised[:, :10], clean[:, :10], block_size=BLOCK)
    with pytest.raises(ValueError, match="clean_ids shape"):
        build_bd3lm_inputs(noised, clean[:, :8], block_size=BLOCK)
    with pytest.raises(ValueError, match="attention_mask"):
        build_bd3lm_inputs(noised, clean, block_size=BLOCK, attention_mask=torch.ones(2, 8))


def test_default_attention_is_bidirectional():
    """Without a mask the a2d student attends both ways (the released model's behaviour)."""
    model = _student()
    ids = torch.randint(0, VOCAB, (1, 8))
    changed = ids.clone()
    changed[0, -1] = (changed[0, -1] + 1) % VOCAB
    with torch.no_grad():
        delta = (model(input_ids=ids).logits[0, 0] - model(input_ids=changed).logits[0, 0]).abs().max()
    assert delta > 1e-4


def test_mask_id_comes_from_tokenizer(student_tokenizer):
    assert mask_token_id_from_tokenizer(student_tokenizer) == student_tokenizer.convert_tokens_to_ids("<|mask|>")

    class NoMask:
        mask_token_id = None
        name_or_path = "no-mask"

    with pytest.raises(ValueError, match="no mask token"):
        mask_token_id_from_tokenizer(NoMask())


@pytest.mark.slow
def test_flex_attention_matches_sdpa():
    """Flex attention with the BD3LM BlockMask (compiles on first use: slow on CPU)."""
    noised, clean = _batch()
    padding = torch.ones_like(noised)
    padding[1, 9:] = 0
    with torch.no_grad():
        sdpa = bd3lm_forward(_student("sdpa"), noised, clean, block_size=BLOCK, attention_mask=padding)
        flex = bd3lm_forward(_student("flex_attention"), noised, clean, block_size=BLOCK, attention_mask=padding)
    torch.testing.assert_close(flex[0], sdpa[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(flex[1, :9], sdpa[1, :9], atol=1e-4, rtol=1e-4)
