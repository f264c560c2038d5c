"""How a teacher is queried: the input layout and 4-D attention mask of each (family, regime), and the
teacher forward over a layout (docs/design.md#teacher-attention-regimes).

Layouts (x_t = noised sequence, x0 = clean sequence, b = block size):

* LLaDA2 ``paper``: x_t alone, full bidirectional attention, padded keys masked out.
* LLaDA2 ``native``: x_t ⊕ x0 with the BD3LM mask (:mod:`tide.bd3lm`), position ids duplicated.
* WeDLM ``paper``: x0 ⊕ x_t with the BD3LM mask, x0 first, position ids duplicated; outputs from x_t.
* WeDLM ``native`` (WeDLM's own training format): x0 ⊕ x_t where x0 is token-causal, each x_t block sees
  the clean blocks before it, and inside a block attention is causal over the *observed-then-masked*
  order (observed tokens first, then masked ones, each group in position order) while RoPE uses the
  logical positions. Two equivalent forms: ``reordered`` physically permutes each block and uses a
  plain in-block causal mask; ``logical`` keeps positions in place and expresses the same order as a 4-D
  mask (key k visible to query q of the same block iff rank(k) ≤ rank(q)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tide.bd3lm import attention_mask_for, bd3lm_bool_mask, with_key_padding
from tide.models.model_types import TEACHER_FAMILIES

REGIMES = ("paper", "native")
FAMILIES = tuple(dict.fromkeys(TEACHER_FAMILIES.values()))
WEDLM_NATIVE_FORMS = ("logical", "reordered")


@dataclass
class TeacherLayout:
    """One teacher forward: ``input_ids`` / ``position_ids`` (B, S), boolean ``allowed`` (B, S, S) with
    padding folded in, and ``index`` (B, T) — the sequence index holding logical x_t position p."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    allowed: torch.Tensor
    index: torch.Tensor


# --- masks ------------------------------------------------------------------------------------------------


def _ranks(noised_ids: torch.Tensor, valid: torch.Tensor, mask_token_id: int, block_size: int) -> torch.Tensor:
    """Sort key (B, T) for the observed-then-masked order: block, then group (observed < masked <
    padding), then position. Sorting by it lists each block observed-first, blocks in order."""
    _, seq_len = noised_ids.shape
    pos = torch.arange(seq_len, device=noised_ids.device).expand_as(noised_ids)
    group = torch.where(noised_ids == mask_token_id, 1, 0)
    group = torch.where(valid, group, 2)
    return (pos // block_size) * (3 * seq_len) + group * seq_len + pos


def wedlm_native_logical_mask(
    noised_ids: torch.Tensor, valid: torch.Tensor, *, mask_token_id: int, block_size: int
) -> torch.Tensor:
    """WeDLM native mask in logical order over x0 ⊕ x_t, shape (B, 2T, 2T), bool, before padding.

    x0 → x0: k ≤ q. x_t → x0: blk(k) < blk(q). x_t → x_t: same block and rank(k) ≤ rank(q) in the
    observed-then-masked order. x0 → x_t: never.
    """
    batch, seq_len = noised_ids.shape
    device = noised_ids.device
    pos = torch.arange(seq_len, device=device)
    blk = pos // block_size
    causal = pos[None, :] <= pos[:, None]
    earlier_block = blk[None, :] < blk[:, None]
    rank = _ranks(noised_ids, valid, mask_token_id, block_size)
    same_block = blk[None, :] == blk[:, None]
    in_block = same_block & (rank[:, None, :] <= rank[:, :, None])
    top = torch.cat([causal, torch.zeros_like(causal)], dim=1).expand(batch, -1, -1)
    bottom = torch.cat([earlier_block.expand(batch, -1, -1), in_block], dim=2)
    return torch.cat([top, bottom], dim=1)


def wedlm_native_reordered_mask(seq_len: int, block_size: int, *, device=None) -> torch.Tensor:
    """WeDLM native mask over x0 ⊕ (x_t with every block reordered), shape (2T, 2T), bool.

    In reordered coordinates the rule needs no token information: x0 token-causal, x_t causal inside its
    block, x_t sees the clean blocks strictly before its own."""
    pos = torch.arange(seq_len, device=device)
    blk = pos // block_size
    causal = pos[None, :] <= pos[:, None]
    earlier_block = blk[None, :] < blk[:, None]
    in_block_causal = causal & (blk[None, :] == blk[:, None])
    top = torch.cat([causal, torch.zeros_like(causal)], dim=1)
    bottom = torch.cat([earlier_block, in_block_causal], dim=1)
    return torch.cat([top, bottom], dim=0)


# --- layouts ----------------------------------------------------------------------------------------------


def _arange_like(ids: torch.Tensor) -> torch.Tensor:
    return torch.arange(ids.shape[1], device=ids.device).expand_as(ids)


def build_layout(
    family: str,
    regime: str,
    noised_ids: torch.Tensor,
    clean_ids: torch.Tensor | None,
    valid: torch.Tensor,
    *,
    block_size: int,
    mask_token_id: int,
    wedlm_native_form: str = "logical",
) -> TeacherLayout:
    """The teacher input for one regime; ``valid`` (B, T) bool marks real tokens. T must be a multiple of
    ``block_size`` for the concatenated layouts (:class:`TeacherRunner` pads it)."""
    seq_len = noised_ids.shape[1]
    positions = _arange_like(noised_ids)
    if family == "llada2" and regime == "paper":
        full = torch.ones(seq_len, seq_len, dtype=torch.bool, device=noised_ids.device)
        return TeacherLayout(noised_ids, positions, with_key_padding(full, valid), positions)
    if clean_ids is None:
        raise ValueError(f"regime {regime!r} of the {family} teacher concatenates x0: pass clean_ids")
    key_valid = torch.cat([valid, valid], dim=1)
    both_positions = torch.cat([positions, positions], dim=1)
    if family == "llada2" and regime == "native":
        allowed = bd3lm_bool_mask(seq_len, block_size, x0_first=False, device=noised_ids.device)
        return TeacherLayout(
            torch.cat([noised_ids, clean_ids], dim=1), both_positions,
            with_key_padding(allowed, key_valid), positions,
        )
    if family == "wedlm" and regime == "paper":
        allowed = bd3lm_bool_mask(seq_len, block_size, x0_first=True, device=noised_ids.device)
        return TeacherLayout(
            torch.cat([clean_ids, noised_ids], dim=1), both_positions,
            with_key_padding(allowed, key_valid), positions + seq_len,
        )
    if family == "wedlm" and regime == "native":
        if wedlm_native_form == "logical":
            allowed = wedlm_native_logical_mask(
                noised_ids, valid, mask_token_id=mask_token_id, block_size=block_size
            )
            return TeacherLayout(
                torch.cat([clean_ids, noised_ids], dim=1), both_positions,
                with_key_padding(allowed, key_valid), positions + seq_len,
            )
        if wedlm_native_form == "reordered":
            # perm[:, j] = logical position stored at slot j of the x_t half; inverse maps back.
            perm = torch.argsort(_ranks(noised_ids, valid, mask_token_id, block_size), dim=1)
            inverse = torch.argsort(perm, dim=1)
            allowed = wedlm_native_reordered_mask(seq_len, block_size, device=noised_ids.device)
            reordered_valid = torch.cat([valid, valid.gather(1, perm)], dim=1)
            return TeacherLayout(
                torch.cat([clean_ids, noised_ids.gather(1, perm)], dim=1),
                torch.cat([positions, perm], dim=1),
                with_key_padding(allowed, reordered_valid),
                inverse + seq_len,
            )
        raise ValueError(f"wedlm_native_form must be one of {WEDLM_NATIVE_FORMS}, got {wedlm_native_form!r}")
    raise ValueError(f"unknown teacher family/regime {family!r}/{regime!r}: families {FAMILIES}, regimes {REGIMES}")


def layout_hidden_states(
    model: nn.Module,
    layout: TeacherLayout,
    row_index: torch.Tensor | None = None,
    position: torch.Tensor | None = None,
) -> torch.Tensor:
    """Final hidden states (after the last norm) at logical x_t positions of ``layout``.

    With ``row_index`` / ``position`` (N,) only those positions, (N, H); without, every logical position,
    (B, T, H). Differentiable: the runner calls it under ``inference_mode``, teacher pre-training with
    gradients. ``layout.index`` maps each logical position to its slot in the teacher's sequence."""
    impl = getattr(model.config, "_attn_implementation", None) or "eager"
    mask = attention_mask_for(layout.allowed, impl, dtype=model.dtype)
    hidden = model.base_model(input_ids=layout.input_ids, attention_mask=mask, position_ids=layout.position_ids,
                              use_cache=False).last_hidden_state
    if row_index is None:
        return hidden.gather(1, layout.index[..., None].expand(-1, -1, hidden.shape[-1]))
    rows = row_index.to(hidden.device)
    return hidden[rows, layout.index[rows, position.to(hidden.device)]]


def infer_family(config: Any) -> str:
    """``llada2`` for ``llada2_moe`` configs, ``wedlm`` for WeDLM loaded as Qwen3 (see ``load_wedlm``)."""
    model_type = getattr(config, "teacher_model_type", None) or getattr(config, "model_type", None)
    if model_type in TEACHER_FAMILIES:
        return TEACHER_FAMILIES[model_type]
    raise ValueError(f"cannot tell the teacher family of model_type={model_type!r}; pass family=")
