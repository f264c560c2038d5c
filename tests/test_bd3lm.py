"""Block-diffusion masks: boolean/additive forms, padding, the flex-attention BlockMask, and how a 4-D mask
reaches stock Qwen3 attention in transformers 5.x."""

from __future__ import annotations

import pytest
import torch
from transformers import AttentionInterface, Qwen3Config, Qwen3ForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from tide.bd3lm import (
    attention_mask_for,
    bd3lm_attention_mask,
    bd3lm_block_mask,
    bd3lm_bool_mask,
    bd3lm_mask_mod,
    bd3lm_position_ids,
    block_causal_bool_mask,
    bool_to_additive,
    flex_attention_available,
    with_key_padding,
)

# L = 4, b = 2, x_t ⊕ x0, written out by hand from docs/design.md#block-diffusion (rows = queries, columns = keys).
#            x_t: 0 1 2 3   x0: 0 1 2 3
HAND_XT_FIRST = [
    [1, 1, 0, 0, 0, 0, 0, 0],  # x_t 0 (block 0): its own noisy block only
    [1, 1, 0, 0, 0, 0, 0, 0],
    [0, 0, 1, 1, 1, 1, 0, 0],  # x_t 2 (block 1): its noisy block + clean block 0
    [0, 0, 1, 1, 1, 1, 0, 0],
    [0, 0, 0, 0, 1, 1, 0, 0],  # x0 0 (block 0): clean block 0
    [0, 0, 0, 0, 1, 1, 0, 0],
    [0, 0, 0, 0, 1, 1, 1, 1],  # x0 2 (block 1): clean blocks 0, 1
    [0, 0, 0, 0, 1, 1, 1, 1],
]


def _dense_from_mask_mod(mask_mod, batch: int, length: int) -> torch.Tensor:
    q = torch.arange(length)[:, None]
    k = torch.arange(length)[None, :]
    return torch.stack([mask_mod(torch.tensor(b), torch.tensor(0), q, k) for b in range(batch)])


def test_bool_mask_matches_hand_written_rule():
    expected = torch.tensor(HAND_XT_FIRST, dtype=torch.bool)
    assert torch.equal(bd3lm_bool_mask(4, 2), expected)
    # x0 ⊕ x_t is the same pattern with the halves swapped.
    perm = torch.tensor([4, 5, 6, 7, 0, 1, 2, 3])
    assert torch.equal(bd3lm_bool_mask(4, 2, x0_first=True), expected[perm][:, perm])


@pytest.mark.parametrize("x0_first", [False, True])
def test_mask_mod_equals_bool_mask(x0_first):
    mask_mod = bd3lm_mask_mod(8, 4, x0_first=x0_first)
    dense = _dense_from_mask_mod(mask_mod, 1, 16)[0]
    assert torch.equal(dense, bd3lm_bool_mask(8, 4, x0_first=x0_first))


def test_key_padding_combines_with_block_rule():
    valid = torch.tensor([[True, True, True, False], [True, True, True, True]])
    key_valid = torch.cat([valid, valid], dim=1)
    allowed = with_key_padding(bd3lm_bool_mask(4, 2), key_valid)
    assert allowed.shape == (2, 8, 8)
    base = torch.tensor(HAND_XT_FIRST, dtype=torch.bool)
    assert torch.equal(allowed[1], base)  # nothing padded
    for q in range(8):
        for k in range(8):
            expected = bool(base[q, k]) and bool(key_valid[0, k]) or q == k
            assert bool(allowed[0, q, k]) == expected, (q, k)
    # Padded keys (x_t 3 and x0 3) are invisible to every other query.
    assert not allowed[0, :, 3].clone().index_fill_(0, torch.tensor([3]), False).any()
    assert not allowed[0, :, 7].clone().index_fill_(0, torch.tensor([7]), False).any()


def test_padded_mask_mod_equals_with_key_padding():
    valid = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    key_valid = torch.cat([valid, valid], dim=1)
    dense = _dense_from_mask_mod(bd3lm_mask_mod(8, 4, key_valid=key_valid), 2, 16)
    assert torch.equal(dense, with_key_padding(bd3lm_bool_mask(8, 4), key_valid))


def test_attention_mask_for_each_implementation():
    valid = torch.tensor([[True, True, True, False]])
    sdpa = bd3lm_attention_mask(4, 2, valid=valid, attn_implementation="sdpa")
    eager = bd3lm_attention_mask(4, 2, valid=valid, attn_implementation="eager", dtype=torch.bfloat16)
    assert sdpa.shape == (1, 1, 8, 8) and sdpa.dtype == torch.bool
    assert eager.shape == (1, 1, 8, 8) and eager.dtype == torch.bfloat16
    assert torch.equal(eager == 0, sdpa)
    assert torch.all(eager[~sdpa] == torch.finfo(torch.bfloat16).min)
    assert torch.equal(bool_to_additive(sdpa[0, 0]) == 0, sdpa[0, 0])
    with pytest.raises(ValueError, match="flash_attention_2"):
        attention_mask_for(sdpa[:, 0], "flash_attention_2")
    with pytest.raises(ValueError, match="multiple of block_size"):
        bd3lm_attention_mask(5, 2)


def test_position_ids_duplicate_the_half():
    assert bd3lm_position_ids(3, 2).tolist() == [[0, 1, 2, 0, 1, 2]] * 2


@pytest.mark.skipif(not flex_attention_available(), reason="torch has no flex attention")
@pytest.mark.parametrize("x0_first", [False, True])
def test_block_mask_dense_form_equals_bool_mask(x0_first):
    from torch.nn.attention.flex_attention import create_mask

    seq_len, block = 16, 4
    valid = torch.ones(2, seq_len, dtype=torch.bool)
    valid[1, 11:] = False
    key_valid = torch.cat([valid, valid], dim=1)
    try:
        block_mask = bd3lm_block_mask(seq_len, block, x0_first=x0_first, key_valid=key_valid, sparse_block_size=8)
    except Exception as exc:  # pragma: no cover - depends on the torch build
        pytest.skip(f"create_block_mask does not run on CPU here: {exc}")
    expected = with_key_padding(bd3lm_bool_mask(seq_len, block, x0_first=x0_first), key_valid)
    dense = create_mask(block_mask.mask_mod, 2, 1, 2 * seq_len, 2 * seq_len, device="cpu")[:, 0]
    assert torch.equal(dense, expected)
    # Block-level sparsity: a tile is present iff any of its 8 x 8 entries is allowed.
    tiles = expected.reshape(2, 4, 8, 4, 8).any(dim=(2, 4)).int()
    assert torch.equal(block_mask.to_dense()[:, 0], tiles)


def _tiny_qwen3(impl: str) -> Qwen3ForCausalLM:
    config = Qwen3Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, initializer_range=0.2,
    )
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config).eval()
    model.set_attn_implementation(impl)
    return model


def test_custom_4d_mask_reaches_qwen3_attention_unchanged():
    seen: list[torch.Tensor] = []

    def capture(module, query, key, value, attention_mask, **kwargs):
        seen.append(attention_mask)
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("tide_capture_test", capture)
    model = _tiny_qwen3("sdpa")
    model.config._attn_implementation = "tide_capture_test"
    mask = bd3lm_attention_mask(8, 4, valid=torch.tensor([[True] * 6 + [False] * 2]))
    ids = torch.randint(0, 64, (1, 16))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, position_ids=bd3lm_position_ids(8))
    assert len(seen) == 2 and all(m is mask for m in seen)


def test_bool_mask_is_wrong_for_eager_and_additive_is_right():
    """Eager adds the mask to the scores: a boolean would be cast to 0/1 and mask nothing."""
    sdpa_model, eager_model = _tiny_qwen3("sdpa"), _tiny_qwen3("eager")
    ids = torch.randint(0, 64, (1, 16))
    pos = bd3lm_position_ids(8)
    boolean = bd3lm_attention_mask(8, 4, attn_implementation="sdpa")
    additive = bd3lm_attention_mask(8, 4, attn_implementation="eager")
    with torch.no_grad():
        ref = sdpa_model(input_ids=ids, attention_mask=boolean, position_ids=pos).logits
        good = eager_model(input_ids=ids, attention_mask=additive, position_ids=pos).logits
        bad = eager_model(input_ids=ids, attention_mask=boolean.float(), position_ids=pos).logits
    torch.testing.assert_close(good, ref, atol=1e-5, rtol=1e-5)
    assert (bad - ref).abs().max() > 1e-2


def test_block_causal_mask_allows_a_shorter_last_block():
    """Length 5 with blocks of 2: blocks {0,1}, {2,3}, {4}; a token sees its own block and earlier ones."""
    expected = torch.tensor([
        [1, 1, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1],
    ], dtype=torch.bool)
    assert torch.equal(block_causal_bool_mask(5, 2), expected)
    with pytest.raises(ValueError, match="block_size"):
        block_causal_bool_mask(4, 0)
