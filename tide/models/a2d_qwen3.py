"""The student's ``a2d-qwen3`` model type, registered on top of stock Qwen3 classes.

The released student (dllm-collection/Qwen3-0.6B-diffusion-bd3lm-v0.1) is Qwen3-0.6B with the same weight
names; its ``config.json`` says ``model_type: "a2d-qwen3"`` and points ``auto_map`` at remote modeling code
that does not run on transformers 5.x. Importing this module registers the model type, so that
``AutoConfig`` / ``AutoModel`` / ``AutoModelForCausalLM`` / ``AutoModelForMaskedLM`` load it without remote
code.

Differences from stock Qwen3: attention is bidirectional by default (no mask → every token sees every
token; a 2-D padding mask → padding-only mask), and every explicit 4-D mask (boolean for SDPA, additive for
eager, a ``BlockMask`` for flex attention) is passed to the attention layers unchanged, which is how the
block-diffusion mask of :mod:`tide.bd3lm` reaches them. The mask token id is not part of the config: it
comes from the tokenizer (:func:`mask_token_id_from_tokenizer`).
"""

from __future__ import annotations

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    PreTrainedTokenizerBase,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3Model,
)

from tide.models.model_types import A2D_QWEN3_MODEL_TYPE


class A2DQwen3Config(Qwen3Config):
    """Qwen3 configuration under the ``a2d-qwen3`` model type.

    Unknown keys a checkpoint may carry (block size, mask token fields, ``auto_map``) are kept as plain
    attributes by the base configuration; ``is_causal`` defaults to False so that masks built by
    transformers itself (no mask or a 2-D padding mask) are bidirectional.
    """

    model_type = A2D_QWEN3_MODEL_TYPE

    def __post_init__(self, **kwargs):
        is_causal = kwargs.pop("is_causal", False)
        super().__post_init__(**kwargs)
        self.is_causal = bool(is_causal)


def _make_attention_bidirectional(model: Qwen3Model) -> None:
    """SDPA falls back to ``is_causal`` on the attention module when it receives no mask."""
    causal = bool(getattr(model.config, "is_causal", False))
    for layer in model.layers:
        layer.self_attn.is_causal = causal


class A2DQwen3Model(Qwen3Model):
    """Qwen3 decoder stack with bidirectional default attention (see module docstring)."""

    config_class = A2DQwen3Config

    def __init__(self, config: A2DQwen3Config):
        super().__init__(config)
        _make_attention_bidirectional(self)


class A2DQwen3LMHeadModel(Qwen3ForCausalLM):
    """Qwen3 with an LM head; ``architectures`` of the released checkpoint names this class.

    Position i of the logits predicts token i (masked diffusion, no shift).
    """

    config_class = A2DQwen3Config

    def __init__(self, config: A2DQwen3Config):
        super().__init__(config)
        _make_attention_bidirectional(self.model)


def register_a2d_qwen3() -> None:
    """Register the model type with the Auto classes (idempotent)."""
    AutoConfig.register(A2D_QWEN3_MODEL_TYPE, A2DQwen3Config, exist_ok=True)
    AutoModel.register(A2DQwen3Config, A2DQwen3Model, exist_ok=True)
    AutoModelForCausalLM.register(A2DQwen3Config, A2DQwen3LMHeadModel, exist_ok=True)
    AutoModelForMaskedLM.register(A2DQwen3Config, A2DQwen3LMHeadModel, exist_ok=True)


def mask_token_id_from_tokenizer(tokenizer: PreTrainedTokenizerBase) -> int:
    """The student's mask id, read from its tokenizer (``<|mask|>``); errors if the tokenizer has none."""
    mask_id = getattr(tokenizer, "mask_token_id", None)
    if mask_id is None:
        raise ValueError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', type(tokenizer).__name__)!r} has no mask token: "
            "the block-diffusion student needs `mask_token` set (e.g. <|mask|>)"
        )
    return int(mask_id)


register_a2d_qwen3()
