"""LLaDA2-MoE (inclusionAI/LLaDA2.0-mini) for transformers 5.x, registered as ``model_type="llada2_moe"``.

The upstream checkpoint ships remote code that does not run on transformers 5.x; this module is the
project's own implementation of the same architecture, written so the checkpoint's weight names load as-is
through ``AutoModelForCausalLM.from_pretrained(dir)`` without ``trust_remote_code``.

Architecture (docs/design.md#llada2-moe-as-implemented):

* pre-norm decoder layers (RMSNorm); attention with a fused ``query_key_value`` projection laid out as
  [query heads | key heads | value heads], grouped-query attention, RMS QK-norm over ``head_dim``
  (``query_layernorm`` / ``key_layernorm``), partial rotary embedding on the first
  ``partial_rotary_factor * head_dim`` dims of each head, output projection ``dense``;
* layers with index < ``first_k_dense_replace`` use a dense SwiGLU MLP, the others a mixture of experts:
  sigmoid router, group-limited top-k expert choice on ``scores + expert_bias``, weights from the raw
  scores (normalised, times ``routed_scaling_factor``), plus one always-on shared expert; the routed
  experts are stacked weights run through transformers' experts interface (:class:`LLaDA2MoeExperts`:
  one grouped matmul per projection by default, the per-expert loop as ``experts_implementation="eager"``),
  and the checkpoint's per-expert weight names are converted on load and restored on save;
* untied ``lm_head``; logits at position i predict token i (no shift).

Attention is entirely decided by the 4-D mask the caller passes (boolean, True = attend, or additive
float); ``attention_mask=None`` means full bidirectional attention. There is no implicit causal mask and
no KV cache: the model is used as a teacher that scores whole noised sequences.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Union

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import Concatenate, MergeModulelist, WeightConverter
from transformers.integrations.moe import use_experts_implementation
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import CausalLMOutput, MoeModelOutputWithPast
from transformers.modeling_rope_utils import RopeParameters

from tide.models.model_types import LLADA2_MODEL_TYPE

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask

logger = logging.getLogger(__name__)

# A dense 4-D tensor (bool or additive float) for sdpa / eager, a BlockMask for flex_attention, or None.
AttentionMask = Union[torch.Tensor, "BlockMask", None]

MODEL_TYPE = LLADA2_MODEL_TYPE
SUPPORTED_ATTENTION = ("sdpa", "eager", "flex_attention")

# LLaDA2.0-mini values used when a config omits them (docs/design.md#llada2-moe-as-implemented).
DEFAULT_ROPE_THETA = 600_000.0
DEFAULT_PARTIAL_ROTARY_FACTOR = 0.5


# --------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------


@strict
class LLaDA2MoeConfig(PreTrainedConfig):
    """Configuration of a LLaDA2-MoE model; defaults are those of LLaDA2.0-mini.

    Key names follow the checkpoint's ``config.json``. ``rope_theta`` and ``partial_rotary_factor`` given
    at the top level (as the checkpoint does) are folded into ``rope_parameters`` like every stock
    transformers 5.x config; read them back with :func:`rope_settings`.
    """

    model_type = MODEL_TYPE

    vocab_size: int = 157184
    hidden_size: int = 2048
    intermediate_size: int = 5120
    moe_intermediate_size: int = 512
    num_hidden_layers: int = 20
    num_attention_heads: int = 16
    num_key_value_heads: int | None = 4
    head_dim: int | None = 128
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_qkv_bias: bool = False
    use_bias: bool = False
    use_qk_norm: bool = True
    attention_dropout: float | int = 0.0
    num_experts: int = 256
    num_shared_experts: int = 1
    num_experts_per_tok: int = 8
    n_group: int = 8
    topk_group: int = 4
    routed_scaling_factor: float | int = 2.5
    norm_topk_prob: bool = True
    score_function: str = "sigmoid"
    first_k_dense_replace: int = 1
    output_router_logits: bool = False
    use_cache: bool = False
    tie_word_embeddings: bool = False
    rope_parameters: RopeParameters | dict | None = None
    pad_token_id: int | None = 156892
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = 156892
    mask_token_id: int | None = 156895

    def __post_init__(self, **kwargs: Any) -> None:
        if self.num_key_value_heads is None or self.num_key_value_heads <= 0:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        kwargs.setdefault("rope_theta", DEFAULT_ROPE_THETA)
        kwargs.setdefault("partial_rotary_factor", DEFAULT_PARTIAL_ROTARY_FACTOR)
        super().__post_init__(**kwargs)

    def validate_llada2_attention(self) -> None:
        """Head counts and the rotary width must fit together."""
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        theta, rotary_dim = rope_settings(self)
        if rotary_dim % 2 != 0 or not 0 < rotary_dim <= self.head_dim:
            raise ValueError(
                f"partial_rotary_factor gives rotary_dim={rotary_dim} for head_dim={self.head_dim}; "
                "it must be even and in (0, head_dim]"
            )
        if theta <= 0:
            raise ValueError(f"rope_theta must be positive, got {theta}")

    def validate_llada2_moe(self) -> None:
        """Expert groups and top-k sizes must be consistent."""
        if self.score_function != "sigmoid":
            raise ValueError(f"score_function={self.score_function!r} is not supported (only 'sigmoid')")
        if self.num_experts <= 0 or self.n_group <= 0 or self.num_experts % self.n_group != 0:
            raise ValueError(
                f"num_experts={self.num_experts} must be a positive multiple of n_group={self.n_group}"
            )
        if not 0 < self.topk_group <= self.n_group:
            raise ValueError(f"topk_group={self.topk_group} must be in [1, n_group={self.n_group}]")
        kept = self.topk_group * (self.num_experts // self.n_group)
        if not 0 < self.num_experts_per_tok <= kept:
            raise ValueError(
                f"num_experts_per_tok={self.num_experts_per_tok} must be in [1, {kept}] "
                f"(topk_group x experts per group)"
            )
        if self.num_shared_experts < 0:
            raise ValueError(f"num_shared_experts must be >= 0, got {self.num_shared_experts}")
        if not 0 <= self.first_k_dense_replace <= self.num_hidden_layers:
            raise ValueError(
                f"first_k_dense_replace={self.first_k_dense_replace} must be in [0, num_hidden_layers="
                f"{self.num_hidden_layers}]"
            )


def rope_settings(config: PreTrainedConfig) -> tuple[float, int]:
    """``(rope_theta, rotary_dim)`` of a LLaDA2 config; rotary_dim = int(head_dim * partial_rotary_factor)."""
    params = config.rope_parameters or {}
    rope_type = params.get("rope_type", "default")
    if rope_type != "default":
        raise ValueError(f"rope_parameters.rope_type={rope_type!r} is not supported (only 'default')")
    theta = float(params.get("rope_theta", DEFAULT_ROPE_THETA))
    factor = float(params.get("partial_rotary_factor", DEFAULT_PARTIAL_ROTARY_FACTOR))
    return theta, int(config.head_dim * factor)


# --------------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------------


class LLaDA2MoeRMSNorm(nn.Module):
    """RMS normalisation over the last dimension, computed in fp32, scaled by a learnt weight."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(dtype)


def rotary_cos_sin(
    position_ids: torch.Tensor, rotary_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine and sine tables for rotate-half RoPE, each (B, S, rotary_dim), from integer positions (B, S).

    Frequency j (j < rotary_dim / 2) is ``theta ** (-2j / rotary_dim)``; the table repeats the rotary_dim / 2
    angles twice so that dim i and dim i + rotary_dim / 2 share an angle.
    """
    exponents = torch.arange(0, rotary_dim, 2, device=position_ids.device, dtype=torch.float32) / rotary_dim
    inv_freq = 1.0 / (theta**exponents)
    angles = position_ids.to(torch.float32)[..., None] * inv_freq
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_partial_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``rotary_dim`` dims of every head, leave the rest untouched.

    x: (B, H, S, D); cos, sin: (B, S, rotary_dim) with rotary_dim <= D. Pairs are (i, i + rotary_dim / 2).
    """
    rotary_dim = cos.shape[-1]
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    half = rotary_dim // 2
    rotated_half = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
    cos, sin = cos[:, None], sin[:, None]
    return torch.cat((rot * cos + rotated_half * sin, rest), dim=-1)


def _expand_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, KV, S, D) -> (B, KV * groups, S, D), each key/value head repeated for its query group."""
    if groups == 1:
        return x
    return x.repeat_interleave(groups, dim=1)


def prepare_attention_mask(
    attention_mask: AttentionMask,
    *,
    batch_size: int,
    q_len: int,
    k_len: int,
    dtype: torch.dtype,
    implementation: str,
) -> AttentionMask:
    """Validate a 4-D attention mask and put it in the form the attention implementation needs.

    Accepts (B, 1, Q, K) or (1, 1, Q, K), boolean (True = attend) or additive float (0 = attend, very
    negative = blocked). SDPA gets booleans unchanged; eager gets an additive mask in ``dtype``. Float masks
    are clamped to ``dtype``'s finite range. ``None`` stays ``None`` (full bidirectional attention).
    ``flex_attention`` takes a ``BlockMask`` (e.g. from ``tide.bd3lm.attention_mask_for``) or ``None``.
    """
    if attention_mask is None:
        return None
    if implementation == "flex_attention":
        if isinstance(attention_mask, torch.Tensor):
            raise ValueError(
                "attn_implementation='flex_attention' needs a BlockMask, not a dense tensor; build one with "
                "tide.bd3lm.attention_mask_for(allowed, 'flex_attention')"
            )
        return attention_mask
    if not isinstance(attention_mask, torch.Tensor):
        raise ValueError(
            f"attention_mask must be a tensor for attn_implementation={implementation!r}, "
            f"got {type(attention_mask).__name__}"
        )
    if attention_mask.dim() != 4:
        raise ValueError(
            f"attention_mask must be 4-D (batch, 1, query, key), got shape {tuple(attention_mask.shape)}; "
            "build one with tide.bd3lm or expand a padding mask explicitly"
        )
    b, h, q, k = attention_mask.shape
    if b not in (1, batch_size) or h != 1 or q != q_len or k != k_len:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} does not fit the input: expected "
            f"({batch_size} or 1, 1, {q_len}, {k_len})"
        )
    if attention_mask.dtype == torch.bool:
        if implementation == "sdpa":
            return attention_mask
        blocked = torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device)
        return blocked.masked_fill(~attention_mask, torch.finfo(dtype).min)
    if attention_mask.is_floating_point():
        return attention_mask.clamp(min=torch.finfo(dtype).min).to(dtype)
    raise ValueError(
        f"attention_mask dtype {attention_mask.dtype} is not supported: pass bool (True = attend) or an "
        "additive float mask"
    )


class LLaDA2MoeAttention(nn.Module):
    """Grouped-query attention with fused QKV, RMS QK-norm and partial RoPE; the mask decides everything."""

    def __init__(self, config: LLaDA2MoeConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.kv_groups = self.num_heads // self.num_kv_heads
        self.scaling = self.head_dim**-0.5
        self.query_key_value = nn.Linear(
            config.hidden_size,
            (self.num_heads + 2 * self.num_kv_heads) * self.head_dim,
            bias=config.use_qkv_bias,
        )
        if config.use_qk_norm:
            self.query_layernorm = LLaDA2MoeRMSNorm(self.head_dim, config.rms_norm_eps)
            self.key_layernorm = LLaDA2MoeRMSNorm(self.head_dim, config.rms_norm_eps)
        self.dense = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=config.use_bias)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: AttentionMask,
    ) -> torch.Tensor:
        """hidden_states (B, S, hidden) -> (B, S, hidden); mask already prepared by the model."""
        bsz, seq, _ = hidden_states.shape
        qkv = self.query_key_value(hidden_states).view(
            bsz, seq, self.num_heads + 2 * self.num_kv_heads, self.head_dim
        )
        q, k, v = qkv.split([self.num_heads, self.num_kv_heads, self.num_kv_heads], dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.config.use_qk_norm:
            q = self.query_layernorm(q)
            k = self.key_layernorm(k)
        cos, sin = position_embeddings
        q = apply_partial_rotary(q, cos, sin)
        k = apply_partial_rotary(k, cos, sin)
        k = _expand_kv(k, self.kv_groups)
        v = _expand_kv(v, self.kv_groups)
        dropout = self.config.attention_dropout if self.training else 0.0
        implementation = self.config._attn_implementation or "sdpa"
        if implementation == "sdpa":
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attention_mask, dropout_p=dropout, is_causal=False, scale=self.scaling
            )
        elif implementation == "flex_attention":
            from torch.nn.attention.flex_attention import flex_attention

            if dropout > 0:
                raise ValueError("attention dropout is not supported with flex_attention")
            out = flex_attention(q, k, v, block_mask=attention_mask, scale=self.scaling)
        elif implementation == "eager":
            scores = torch.matmul(q, k.transpose(2, 3)) * self.scaling
            if attention_mask is not None:
                scores = scores + attention_mask
            probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
            probs = F.dropout(probs, p=dropout, training=self.training)
            out = torch.matmul(probs, v)
        else:
            raise ValueError(
                f"attn_implementation={implementation!r} is not supported by LLaDA2-MoE; use one of "
                f"{SUPPORTED_ATTENTION}"
            )
        out = out.transpose(1, 2).reshape(bsz, seq, self.num_heads * self.head_dim)
        return self.dense(out)


class LLaDA2MoeMLP(nn.Module):
    """SwiGLU feed-forward: down(act(gate(x)) * up(x))."""

    def __init__(self, config: LLaDA2MoeConfig, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def route_tokens(
    router_logits: torch.Tensor,
    expert_bias: torch.Tensor,
    *,
    top_k: int,
    n_group: int,
    topk_group: int,
    routed_scaling_factor: float,
    norm_topk_prob: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-limited top-k routing of LLaDA2 (pure function).

    router_logits: (N, E) gate logits; expert_bias: (E,). Scores s = sigmoid(logits) (fp32). Choice uses
    c = s + bias: the E experts form ``n_group`` contiguous groups, a group scores the sum of its two best
    c, the ``topk_group`` best groups are kept and ``top_k`` experts with the highest c among them chosen.
    Weights are the chosen *raw* scores s, divided by their sum (``norm_topk_prob``) and multiplied by
    ``routed_scaling_factor``.

    Returns (expert_ids int64 (N, top_k), ordered by descending c; weights float32 (N, top_k)).
    """
    if router_logits.dim() != 2:
        raise ValueError(f"router_logits must be (tokens, experts), got shape {tuple(router_logits.shape)}")
    num_tokens, num_experts = router_logits.shape
    if expert_bias.shape != (num_experts,):
        raise ValueError(f"expert_bias must have shape ({num_experts},), got {tuple(expert_bias.shape)}")
    if n_group <= 0 or num_experts % n_group != 0:
        raise ValueError(f"num_experts={num_experts} is not a positive multiple of n_group={n_group}")
    per_group = num_experts // n_group
    if not 0 < topk_group <= n_group:
        raise ValueError(f"topk_group={topk_group} must be in [1, n_group={n_group}]")
    if not 0 < top_k <= topk_group * per_group:
        raise ValueError(f"top_k={top_k} must be in [1, {topk_group * per_group}] (kept groups x group size)")

    scores = torch.sigmoid(router_logits.float())
    choice = scores + expert_bias.float()
    best_in_group = choice.view(num_tokens, n_group, per_group).topk(min(2, per_group), dim=-1).values
    group_scores = best_in_group.sum(dim=-1)
    kept_groups = group_scores.topk(topk_group, dim=-1).indices
    group_keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, kept_groups, True)
    expert_keep = group_keep.repeat_interleave(per_group, dim=1)
    expert_ids = choice.masked_fill(~expert_keep, float("-inf")).topk(top_k, dim=-1).indices
    weights = scores.gather(1, expert_ids)
    if norm_topk_prob:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return expert_ids, weights * routed_scaling_factor


class LLaDA2MoeGate(nn.Module):
    """Router: ``weight`` (E, hidden) gives logits in fp32; ``expert_bias`` (E,) only steers the choice."""

    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__()
        self.config = config
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.hidden_size))
        self.register_buffer("expert_bias", torch.zeros(config.num_experts, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, hidden) -> expert_ids (N, k), weights fp32 (N, k), router_logits fp32 (N, E)."""
        logits = F.linear(x.float(), self.weight.float())
        c = self.config
        ids, weights = route_tokens(
            logits,
            self.expert_bias,
            top_k=c.num_experts_per_tok,
            n_group=c.n_group,
            topk_group=c.topk_group,
            routed_scaling_factor=c.routed_scaling_factor,
            norm_topk_prob=c.norm_topk_prob,
        )
        return ids, weights, logits


@use_experts_implementation
class LLaDA2MoeExperts(nn.Module):
    """The routed SwiGLU experts of one MoE layer, as stacked weights.

    ``gate_up_proj`` (E, 2 * I, hidden) holds each expert's [gate_proj; up_proj] rows and ``down_proj``
    (E, hidden, I) its down projection. The checkpoint stores them per expert
    (``mlp.experts.{e}.gate_proj.weight`` ...); :data:`EXPERTS_CHECKPOINT_CONVERSION` stacks them on load and
    ``save_pretrained`` splits them back, so files keep the checkpoint's names.

    ``forward(x (N, hidden), expert_ids (N, k), weights fp32 (N, k))`` returns Σ_k weight_k · expert_k(x),
    accumulated in fp32 and returned in x's dtype. Which code runs is ``config._experts_implementation``
    (transformers' experts interface; ``from_pretrained(..., experts_implementation=...)`` or
    ``model.set_experts_implementation``):

    * ``"grouped_mm"`` (the default): the (token, expert) pairs sorted by expert, one grouped matmul per
      projection over offsets computed on the device (``torch.nn.functional.grouped_mm``), no host sync;
    * ``"eager"``: the reference below, one matmul per expert that received tokens, one host sync;
    * ``"batched_mm"``: one gathered weight matrix per (token, expert) pair, N·k·2·I·hidden elements — at
      4,096 tokens of LLaDA2.0-mini that is 275 GB in fp32, so for tiny inputs only.
    """

    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__()
        self.num_experts = config.num_experts
        width = config.moe_intermediate_size
        self.gate_up_proj = nn.Parameter(torch.empty(config.num_experts, 2 * width, config.hidden_size))
        self.down_proj = nn.Parameter(torch.empty(config.num_experts, config.hidden_size, width))
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        """The ``"eager"`` reference: tokens sorted by expert, one SwiGLU per expert that received any.

        ``bincount(...).tolist()`` is a host sync and the loop issues 3 matmuls per used expert (5,000+
        per forward of LLaDA2.0-mini), which is why it is not the default."""
        num_tokens, top_k = top_k_index.shape
        flat_ids = top_k_index.reshape(-1)
        order = torch.argsort(flat_ids, stable=True)
        token_of_slot = order // top_k
        counts = torch.bincount(flat_ids, minlength=self.num_experts).tolist()
        pieces = []
        start = 0
        for expert_id, count in enumerate(counts):
            if count == 0:
                continue
            tokens = hidden_states[token_of_slot[start : start + count]]
            gate, up = F.linear(tokens, self.gate_up_proj[expert_id]).chunk(2, dim=-1)
            pieces.append(F.linear(self.act_fn(gate) * up, self.down_proj[expert_id]))
            start += count
        sorted_out = torch.cat(pieces, dim=0).float()
        slot_out = torch.empty_like(sorted_out)
        slot_out[order] = sorted_out
        combined = (slot_out.view(num_tokens, top_k, -1) * top_k_weights.unsqueeze(-1)).sum(dim=1)
        return combined.to(hidden_states.dtype)


# The checkpoint's per-expert matrices -> the stacked parameters of LLaDA2MoeExperts (reverted on save).
EXPERTS_CHECKPOINT_CONVERSION = (
    WeightConverter(
        source_patterns=["mlp.experts.*.gate_proj.weight", "mlp.experts.*.up_proj.weight"],
        target_patterns="mlp.experts.gate_up_proj",
        operations=[MergeModulelist(dim=0), Concatenate(dim=1)],
    ),
    WeightConverter(
        source_patterns="mlp.experts.*.down_proj.weight",
        target_patterns="mlp.experts.down_proj",
        operations=[MergeModulelist(dim=0)],
    ),
)


class LLaDA2MoeSparseMoeBlock(nn.Module):
    """Routed experts (:class:`LLaDA2MoeExperts`) plus a shared expert that every token uses."""

    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__()
        self.gate = LLaDA2MoeGate(config)
        self.experts = LLaDA2MoeExperts(config)
        self.shared_experts = (
            LLaDA2MoeMLP(config, config.moe_intermediate_size * config.num_shared_experts)
            if config.num_shared_experts > 0
            else None
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, S, hidden) -> (B, S, hidden)."""
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, shape[-1])
        routed = self.routed_output(x)
        if self.shared_experts is not None:
            routed = routed + self.shared_experts(x)
        return routed.view(shape)

    def routed_output(self, x: torch.Tensor) -> torch.Tensor:
        """Σ_k weight_k · expert_k(x) for x (N, hidden); accumulated in fp32, returned in x's dtype."""
        if x.shape[0] == 0:
            return torch.zeros_like(x)
        expert_ids, weights, _ = self.gate(x)
        return self.experts(x, expert_ids, weights)


class LLaDA2MoeDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm block: x + attention(norm(x)), then x + mlp(norm(x)); dense MLP below first_k_dense_replace."""

    def __init__(self, config: LLaDA2MoeConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = LLaDA2MoeRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attention = LLaDA2MoeAttention(config, layer_idx)
        self.post_attention_layernorm = LLaDA2MoeRMSNorm(config.hidden_size, config.rms_norm_eps)
        if layer_idx < config.first_k_dense_replace:
            self.mlp: nn.Module = LLaDA2MoeMLP(config, config.intermediate_size)
        else:
            self.mlp = LLaDA2MoeSparseMoeBlock(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: AttentionMask = None,
    ) -> torch.Tensor:
        hidden_states = hidden_states + self.attention(
            self.input_layernorm(hidden_states), position_embeddings, attention_mask
        )
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


# --------------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------------


class LLaDA2MoePreTrainedModel(PreTrainedModel):
    config: LLaDA2MoeConfig
    config_class = LLaDA2MoeConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LLaDA2MoeDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = True
    _keep_in_fp32_modules_strict = ["gate.weight", "expert_bias"]
    _input_embed_layer = "word_embeddings"  # transformers' embedding accessors find it (also via .model)

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, LLaDA2MoeGate):
            init.normal_(module.weight, mean=0.0, std=std)
            init.zeros_(module.expert_bias)
        elif isinstance(module, LLaDA2MoeExperts):
            init.normal_(module.gate_up_proj, mean=0.0, std=std)
            init.normal_(module.down_proj, mean=0.0, std=std)


def _reject_unsupported(kwargs: dict[str, Any]) -> None:
    """Fail loudly on features this implementation does not have (KV cache, attention maps, ...)."""
    for name in ("past_key_values", "cache"):
        if kwargs.get(name) is not None:
            raise ValueError(f"{name} is not supported: LLaDA2-MoE here has no KV cache")
    if kwargs.get("use_cache"):
        raise ValueError("use_cache=True is not supported: LLaDA2-MoE here has no KV cache")
    if kwargs.get("output_attentions"):
        raise ValueError("output_attentions=True is not supported by LLaDA2-MoE")
    unknown = sorted(
        k
        for k, v in kwargs.items()
        if v is not None
        and k not in ("past_key_values", "cache", "use_cache", "output_attentions", "return_dict")
    )
    if unknown:
        raise TypeError(f"unexpected keyword arguments for LLaDA2-MoE forward: {unknown}")


class LLaDA2MoeModel(LLaDA2MoePreTrainedModel):
    """Embeddings, decoder layers and the final norm; returns hidden states (no LM head)."""

    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__(config)
        pad = config.pad_token_id
        padding_idx = pad if isinstance(pad, int) and 0 <= pad < config.vocab_size else None
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx)
        self.layers = nn.ModuleList(LLaDA2MoeDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = LLaDA2MoeRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: AttentionMask = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs: Any,
    ) -> MoeModelOutputWithPast:
        """Run the decoder.

        input_ids (B, S) or inputs_embeds (B, S, hidden) — exactly one. attention_mask: None (full
        bidirectional) or 4-D (B or 1, 1, S, S), bool (True = attend) or additive float; a ``BlockMask``
        under ``attn_implementation="flex_attention"``. position_ids
        (B, S), (1, S) or (S,); default 0..S-1. Returns ``last_hidden_state`` (B, S, hidden) after the final
        norm and, with ``output_hidden_states``, the tuple (embeddings, output of each layer but the last,
        final normed state) — num_hidden_layers + 1 entries.
        """
        _reject_unsupported(kwargs)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            if input_ids.dim() != 2:
                raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
            inputs_embeds = self.word_embeddings(input_ids)
        elif inputs_embeds.dim() != 3:
            raise ValueError(
                f"inputs_embeds must be (batch, seq, hidden), got shape {tuple(inputs_embeds.shape)}"
            )
        bsz, seq, _ = inputs_embeds.shape
        if output_hidden_states is None:
            output_hidden_states = bool(self.config.output_hidden_states)

        position_ids = self._position_ids(position_ids, bsz, seq, inputs_embeds.device)
        theta, rotary_dim = rope_settings(self.config)
        cos_sin = rotary_cos_sin(position_ids, rotary_dim, theta, inputs_embeds.dtype)
        mask = prepare_attention_mask(
            attention_mask,
            batch_size=bsz,
            q_len=seq,
            k_len=seq,
            dtype=inputs_embeds.dtype,
            implementation=self.config._attn_implementation or "sdpa",
        )

        hidden = inputs_embeds
        collected: list[torch.Tensor] = []
        for layer in self.layers:
            if output_hidden_states:
                collected.append(hidden)
            hidden = layer(hidden, position_embeddings=cos_sin, attention_mask=mask)
        hidden = self.norm(hidden)
        if output_hidden_states:
            collected.append(hidden)
        return MoeModelOutputWithPast(
            last_hidden_state=hidden, hidden_states=tuple(collected) if output_hidden_states else None
        )

    @staticmethod
    def _position_ids(
        position_ids: torch.Tensor | None, bsz: int, seq: int, device: torch.device
    ) -> torch.Tensor:
        if position_ids is None:
            return torch.arange(seq, device=device).unsqueeze(0).expand(bsz, seq)
        if position_ids.dim() == 1:
            position_ids = position_ids.unsqueeze(0)
        if position_ids.dim() != 2 or position_ids.shape[1] != seq or position_ids.shape[0] not in (1, bsz):
            raise ValueError(
                f"position_ids shape {tuple(position_ids.shape)} does not fit the input: expected "
                f"({bsz} or 1, {seq}) or ({seq},)"
            )
        if position_ids.is_floating_point() or position_ids.dtype == torch.bool:
            raise ValueError(f"position_ids must be an integer tensor, got {position_ids.dtype}")
        return position_ids.to(device).expand(bsz, seq)


class LLaDA2MoeForCausalLM(LLaDA2MoePreTrainedModel):
    """LLaDA2-MoE with its (untied) LM head. ``model`` is the decoder, ``lm_head`` the head."""

    _tied_weights_keys = {"lm_head.weight": "model.word_embeddings.weight"}

    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__(config)
        self.model = LLaDA2MoeModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: AttentionMask = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs: Any,
    ) -> CausalLMOutput:
        """Logits (B, S, vocab) in the head's dtype; position i predicts token i (no shift).

        ``labels`` (B, S), -100 = ignored, gives the mean token cross-entropy without shifting (fp32).
        Other arguments as in :meth:`LLaDA2MoeModel.forward`.
        """
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        logits = self.lm_head(out.last_hidden_state)
        loss = None
        if labels is not None:
            if labels.shape != logits.shape[:-1]:
                raise ValueError(f"labels shape {tuple(labels.shape)} must equal {tuple(logits.shape[:-1])}")
            loss = F.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]),
                labels.reshape(-1).to(logits.device),
                ignore_index=-100,
            )
        return CausalLMOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)


# Class name the checkpoint's config.json lists under "architectures".
LLaDA2MoeModelLM = LLaDA2MoeForCausalLM


def register_llada2_moe() -> None:
    """Register the config and models for ``model_type="llada2_moe"`` with the Auto classes, and the
    per-expert checkpoint layout with transformers' weight conversion (idempotent)."""
    AutoConfig.register(MODEL_TYPE, LLaDA2MoeConfig, exist_ok=True)
    AutoModel.register(LLaDA2MoeConfig, LLaDA2MoeModel, exist_ok=True)
    AutoModelForCausalLM.register(LLaDA2MoeConfig, LLaDA2MoeForCausalLM, exist_ok=True)
    register_checkpoint_conversion_mapping(MODEL_TYPE, list(EXPERTS_CHECKPOINT_CONVERSION), overwrite=True)


register_llada2_moe()

__all__ = [
    "MODEL_TYPE",
    "EXPERTS_CHECKPOINT_CONVERSION",
    "LLaDA2MoeConfig",
    "LLaDA2MoeExperts",
    "LLaDA2MoeForCausalLM",
    "LLaDA2MoeModel",
    "LLaDA2MoeModelLM",
    "LLaDA2MoePreTrainedModel",
    "apply_partial_rotary",
    "prepare_attention_mask",
    "register_llada2_moe",
    "rope_settings",
    "rotary_cos_sin",
    "route_tokens",
]
