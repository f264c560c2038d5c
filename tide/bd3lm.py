"""Block-diffusion (BD3LM) layout: the x_t ⊕ x0 input, its position ids and attention masks.

With sequence length L and block size b, the training input concatenates the noised sequence x_t and the
clean sequence x0 (or x0 first, as WeDLM's paper regime does). For a query q and key k in [0, 2L), with
``is_x0(i)`` true on the clean half and ``blk(i)`` the block index inside its half:

* noisy → noisy: same block (bidirectional within a block);
* noisy → clean: strictly earlier blocks (the clean prefix the block is conditioned on);
* clean → clean: same or earlier blocks (block-causal);
* clean → noisy: never.

``bd3lm_bool_mask`` is what SDPA takes; eager attention needs ``bd3lm_additive_mask`` (0 / -inf style),
since an eager path adds the mask to the scores and a boolean would be silently cast to 0/1. Flex attention
takes a ``BlockMask`` (``bd3lm_block_mask``) built from a ``mask_mod`` that states the same rule.

How a mask reaches stock transformers 5.x attention (``masking_utils._preprocess_mask_arguments``): a 4-D
tensor or a ``BlockMask`` is returned as is, never rebuilt, so the attention layers receive exactly the mask
built here — SDPA passes a boolean mask straight to ``scaled_dot_product_attention``, eager adds it to the
scores, flex attention uses a ``BlockMask`` as its block mask. ``attention_mask_for`` turns one boolean
rule (with batch padding folded in by ``with_key_padding``) into the form each implementation needs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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

    This is the clean half of the BD3LM mask alone (the sampler fills its KV cache of finished blocks with
    it). ``seq_len`` need not be a multiple of ``block_size``: a last, shorter block is a block too."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
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


# --- batch padding and per-implementation mask forms ----------------------------------------------------

SDPA_LIKE = ("sdpa",)
EAGER_LIKE = ("eager",)
FLEX_LIKE = ("flex_attention",)


def with_key_padding(allowed: torch.Tensor, key_valid: torch.Tensor | None) -> torch.Tensor:
    """Fold batch padding into a boolean attend-mask.

    ``allowed`` (Q, K) or (B, Q, K) bool, ``key_valid`` (B, K) bool (False = padding key) → (B, Q, K):
    a key that is padding is never attended. Every query keeps its own position (q == k) so that a padded
    query row is never empty — a fully masked row turns SDPA outputs into NaN; the outputs of padded
    queries are meaningless but finite, and no real query can see a padded key.
    """
    if allowed.dtype != torch.bool:
        raise TypeError(f"allowed must be a bool tensor, got {allowed.dtype}")
    if allowed.dim() == 2:
        allowed = allowed.unsqueeze(0)
    if allowed.dim() != 3:
        raise ValueError(f"allowed must have shape (Q, K) or (B, Q, K), got {tuple(allowed.shape)}")
    q_len, k_len = allowed.shape[-2:]
    if key_valid is None:
        return allowed
    if key_valid.dim() != 2 or key_valid.shape[1] != k_len:
        raise ValueError(f"key_valid must have shape (B, {k_len}), got {tuple(key_valid.shape)}")
    if allowed.shape[0] not in (1, key_valid.shape[0]):
        raise ValueError(
            f"allowed has batch {allowed.shape[0]} but key_valid has batch {key_valid.shape[0]}"
        )
    key_valid = key_valid.to(device=allowed.device, dtype=torch.bool)
    diagonal = torch.eye(q_len, k_len, dtype=torch.bool, device=allowed.device)
    return (allowed & key_valid[:, None, :]) | diagonal


def flex_attention_available() -> bool:
    """True when ``torch.nn.attention.flex_attention.create_block_mask`` can be imported."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask  # noqa: F401
    except ImportError:
        return False
    return True


def _dense_mask_mod(allowed: torch.Tensor) -> Callable[..., torch.Tensor]:
    """A flex ``mask_mod`` reading a dense (B, Q, K) boolean mask (batch 1 broadcasts)."""
    batched = allowed.shape[0] > 1

    def mask_mod(b, h, q_idx, kv_idx):
        return allowed[b if batched else 0, q_idx, kv_idx]

    return mask_mod


def attention_mask_for(
    allowed: torch.Tensor,
    attn_implementation: str,
    *,
    dtype: torch.dtype = torch.float32,
) -> Any:
    """Turn a boolean attend-mask (B, Q, K) into what ``attn_implementation`` needs.

    * ``sdpa``: bool (B, 1, Q, K), True = attend;
    * ``eager``: additive (B, 1, Q, K) of ``dtype``, 0 where attended and ``finfo(dtype).min`` elsewhere;
    * ``flex_attention``: a ``BlockMask`` whose ``mask_mod`` reads ``allowed``.

    Flash-attention kernels take no arbitrary 4-D mask and are rejected with a clear error.
    """
    if allowed.dim() != 3 or allowed.dtype != torch.bool:
        raise ValueError(f"allowed must be a (B, Q, K) bool tensor, got {tuple(allowed.shape)} {allowed.dtype}")
    if attn_implementation in SDPA_LIKE:
        return allowed.unsqueeze(1)
    if attn_implementation in EAGER_LIKE:
        return bool_to_additive(allowed, dtype).unsqueeze(1)
    if attn_implementation in FLEX_LIKE:
        from torch.nn.attention.flex_attention import create_block_mask

        batch, q_len, k_len = allowed.shape
        return create_block_mask(
            _dense_mask_mod(allowed), B=batch if batch > 1 else None, H=None, Q_LEN=q_len, KV_LEN=k_len,
            device=allowed.device,
        )
    raise ValueError(
        f"attn_implementation={attn_implementation!r} cannot take a custom block-diffusion mask; "
        "use 'sdpa', 'eager' or 'flex_attention'"
    )


def bd3lm_mask_mod(
    seq_len: int,
    block_size: int,
    *,
    x0_first: bool = False,
    key_valid: torch.Tensor | None = None,
) -> Callable[..., torch.Tensor]:
    """A flex-attention ``mask_mod(b, h, q_idx, kv_idx)`` for the BD3LM rule over the 2L concatenation.

    It computes the same predicate as :func:`bd3lm_bool_mask` from the indices alone (no dense tensor);
    with ``key_valid`` (B, 2L) bool, padded keys are dropped and the diagonal kept, as in
    :func:`with_key_padding`.
    """
    if seq_len % block_size != 0:
        raise ValueError(f"seq_len={seq_len} is not a multiple of block_size={block_size}")

    def rule(q_idx, kv_idx):
        q_second, k_second = q_idx >= seq_len, kv_idx >= seq_len
        q_x0 = ~q_second if x0_first else q_second
        k_x0 = ~k_second if x0_first else k_second
        q_blk = (q_idx - seq_len * q_second.to(q_idx.dtype)) // block_size
        k_blk = (kv_idx - seq_len * k_second.to(kv_idx.dtype)) // block_size
        noisy_same_block = (q_blk == k_blk) & ~q_x0 & ~k_x0
        noisy_to_clean_prefix = (q_blk > k_blk) & ~q_x0 & k_x0
        clean_block_causal = (q_blk >= k_blk) & q_x0 & k_x0
        return noisy_same_block | noisy_to_clean_prefix | clean_block_causal

    if key_valid is None:

        def mask_mod(b, h, q_idx, kv_idx):
            return rule(q_idx, kv_idx)

        return mask_mod

    key_valid = key_valid.to(torch.bool)

    def padded_mask_mod(b, h, q_idx, kv_idx):
        return (rule(q_idx, kv_idx) & key_valid[b, kv_idx]) | (q_idx == kv_idx)

    return padded_mask_mod


def bd3lm_block_mask(
    seq_len: int,
    block_size: int,
    *,
    x0_first: bool = False,
    key_valid: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    sparse_block_size: int = 128,
):
    """Flex-attention ``BlockMask`` of the BD3LM rule (optionally with padding), shape (B or 1, 1, 2L, 2L).

    ``sparse_block_size`` is flex attention's tile size (128 by default), unrelated to ``block_size``.
    Building it is cheap and works on CPU; running flex attention efficiently needs ``torch.compile`` on
    GPU, so the CPU training path uses SDPA with :func:`bd3lm_bool_mask`.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    batch = None if key_valid is None else int(key_valid.shape[0])
    if key_valid is not None and key_valid.shape != (batch, 2 * seq_len):
        raise ValueError(f"key_valid must have shape (B, {2 * seq_len}), got {tuple(key_valid.shape)}")
    if key_valid is not None and device is None:
        device = key_valid.device
    mask_mod = bd3lm_mask_mod(seq_len, block_size, x0_first=x0_first, key_valid=key_valid)
    return create_block_mask(
        mask_mod, B=batch, H=None, Q_LEN=2 * seq_len, KV_LEN=2 * seq_len,
        device=device if device is not None else "cpu", BLOCK_SIZE=sparse_block_size,
    )


def bd3lm_attention_mask(
    seq_len: int,
    block_size: int,
    *,
    x0_first: bool = False,
    valid: torch.Tensor | None = None,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    device: torch.device | None = None,
) -> Any:
    """The BD3LM mask over the 2L concatenation in the form ``attn_implementation`` needs.

    ``valid`` (B, L) bool marks real (non-padding) tokens of one half; both halves share it. Returns a
    (B or 1, 1, 2L, 2L) bool (sdpa) or additive (eager) tensor, or a ``BlockMask`` (flex_attention).
    """
    key_valid = None
    if valid is not None:
        if valid.dim() != 2 or valid.shape[1] != seq_len:
            raise ValueError(f"valid must have shape (B, {seq_len}), got {tuple(valid.shape)}")
        key_valid = torch.cat([valid, valid], dim=1).to(torch.bool)
        device = valid.device if device is None else device
    if attn_implementation in FLEX_LIKE:
        return bd3lm_block_mask(seq_len, block_size, x0_first=x0_first, key_valid=key_valid, device=device)
    allowed = bd3lm_bool_mask(seq_len, block_size, x0_first=x0_first, device=device)
    return attention_mask_for(with_key_padding(allowed, key_valid), attn_implementation, dtype=dtype)
