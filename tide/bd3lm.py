"""Block-diffusion (BD3LM) layout: the x_t ⊕ x0 input, its position ids and attention masks.

With sequence length L and block size b, the training input concatenates the noised sequence x_t and the
clean sequence x0 (or x0 first, as WeDLM's paper regime does). For a query q and key k in [0, 2L), with
``is_x0(i)`` true on the clean half and ``blk(i)`` the block index inside its half:

* noisy → noisy: same block (bidirectional within a block);
* noisy → clean: strictly earlier blocks (the clean prefix the block is conditioned on);
* clean → clean: same or earlier blocks (block-causal);
* clean → noisy: never.

``bd3lm_bool_mask`` is what SDPA takes; eager attention needs ``bd3lm_additive_mask`` (0 / -inf style),
since an eager path adds the mask to the scores and a boolean would be silently cast to 0/1.
"""

from __future__ import annotations

import torch


def _halves(seq_len: int, block_size: int, x0_first: bool, device: torch.device | None):
    if seq_len % block_size != 0:
        raise ValueError(f"seq_len={seq_len} is not a multiple of block_size={block_size}")
    idx = torch.arange(2 * seq_len, device=device)
    second_half = idx >= seq_len
    is_x0 = ~second_half if x0_first else second_half
    block = (idx - seq_len * second_half.long()) // block_size
    return is_x0, block


def bd3lm_bool_mask(
    seq_len: int, block_size: int, *, x0_first: bool = False, device: torch.device | None = None
) -> torch.Tensor:
    """Boolean block-diffusion mask over the 2L-long concatenation, shape (2L, 2L); True = attend.

    ``x0_first=False`` is the student's x_t ⊕ x0 order; ``True`` is x0 ⊕ x_t.
    """
    is_x0, block = _halves(seq_len, block_size, x0_first, device)
    q_x0, k_x0 = is_x0[:, None], is_x0[None, :]
    q_blk, k_blk = block[:, None], block[None, :]
    noisy_same_block = (q_blk == k_blk) & ~q_x0 & ~k_x0
    noisy_to_clean_prefix = (q_blk > k_blk) & ~q_x0 & k_x0
    clean_block_causal = (q_blk >= k_blk) & q_x0 & k_x0
    return noisy_same_block | noisy_to_clean_prefix | clean_block_causal


def bd3lm_additive_mask(
    seq_len: int,
    block_size: int,
    *,
    x0_first: bool = False,
    dtype: torch.dtype = torch.float32,
    device: torch.device | None = None,
) -> torch.Tensor:
    """The same mask as an additive float tensor (0 where attended, dtype-min elsewhere), shape (2L, 2L)."""
    allowed = bd3lm_bool_mask(seq_len, block_size, x0_first=x0_first, device=device)
    return bool_to_additive(allowed, dtype)


def block_causal_bool_mask(
    seq_len: int, block_size: int, *, device: torch.device | None = None
) -> torch.Tensor:
    """Block-causal mask over one clean sequence, shape (L, L): a token sees its own and earlier blocks.

    This is the clean half of the BD3LM mask alone, used to fill the KV cache of finished blocks."""
    if seq_len % block_size != 0:
        raise ValueError(f"seq_len={seq_len} is not a multiple of block_size={block_size}")
    block = torch.arange(seq_len, device=device) // block_size
    return block[:, None] >= block[None, :]


def bool_to_additive(allowed: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Turn a boolean attend-mask into an additive one for eager attention."""
    additive = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return additive.masked_fill(~allowed, torch.finfo(dtype).min)


def bd3lm_position_ids(
    seq_len: int, batch_size: int = 1, *, device: torch.device | None = None
) -> torch.Tensor:
    """Position ids [0..L-1, 0..L-1] for the concatenated input, shape (batch_size, 2L)."""
    half = torch.arange(seq_len, device=device)
    return torch.cat([half, half]).unsqueeze(0).expand(batch_size, -1)


def noise_input_ids(
    input_ids: torch.Tensor, masked: torch.Tensor, mask_token_id: int
) -> torch.Tensor:
    """x_t: ``input_ids`` (B, L) with every position where ``masked`` (B, L) is True set to the mask id."""
    return torch.where(masked, torch.full_like(input_ids, mask_token_id), input_ids)
