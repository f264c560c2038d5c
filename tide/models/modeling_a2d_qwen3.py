"""The ``a2d-qwen3`` block-diffusion student's model classes, self-contained.

This file imports nothing but transformers: a trained student's directory carries a copy of it, and its
``config.json`` points ``auto_map`` at it, so stock ``AutoModelForCausalLM.from_pretrained(path,
trust_remote_code=True)`` loads the student in an interpreter that has never seen this project (as
published BD3LM checkpoints do). Inside the project the same classes are registered with the Auto classes
by :mod:`tide.models.a2d_qwen3` (``import tide`` does it), and no remote code runs.

The released student (dllm-collection/Qwen3-0.6B-diffusion-bd3lm-v0.1) is Qwen3-0.6B with the same weight
names. Differences from stock Qwen3: attention is bidirectional by default (no mask → every token sees every
token; a 2-D padding mask → padding-only mask), and every explicit 4-D mask (boolean for SDPA, additive for
eager, a ``BlockMask`` for flex attention) is passed to the attention layers unchanged, which is how the
block-diffusion mask reaches them. Position i of the logits predicts token i (masked diffusion, no shift).
"""

from __future__ import annotations

from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3Model

MODEL_TYPE = "a2d-qwen3"


class A2DQwen3Config(Qwen3Config):
    """Qwen3 configuration under the ``a2d-qwen3`` model type.

    Unknown keys a checkpoint may carry (block size, mask token fields, ``auto_map``) are kept as plain
    attributes by the base configuration; ``is_causal`` defaults to False so that masks built by
    transformers itself (no mask or a 2-D padding mask) are bidirectional.
    """

    model_type = MODEL_TYPE

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
    """Qwen3 with an LM head; ``architectures`` of the released checkpoint names this class."""

    config_class = A2DQwen3Config

    def __init__(self, config: A2DQwen3Config):
        super().__init__(config)
        _make_attention_bidirectional(self.model)
