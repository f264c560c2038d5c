"""Tiny models of the project's real classes, sized to the tokenizers trained here.

:mod:`tide.models.factories` builds tiny models with the real checkpoints' vocabulary sizes (151,936 rows);
the replication trains its own small vocabularies, so it builds the same classes with the rows its
tokenizers need, saves them with ``save_pretrained`` in the released checkpoints' config layout, and
loads them back through the project's loaders (:func:`tide.models.factories.load_student` /
``load_teacher``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase, Qwen3Config, Qwen3ForCausalLM

import tide.models  # noqa: F401  (registers a2d-qwen3 and llada2_moe)
from tide.models.a2d_qwen3 import A2DQwen3Config, A2DQwen3LMHeadModel
from tide.models.factories import round_up
from tide.models.llada2_moe import LLaDA2MoeConfig, LLaDA2MoeForCausalLM
from tide.models.wedlm import WEDLM_MODEL_TYPE

INIT_RANGE = 0.02


@dataclass(frozen=True)
class ModelSize:
    """hidden size, layers, attention heads (KV heads = heads / 2), MLP width = ``mlp_ratio`` × hidden."""

    hidden: int
    layers: int
    heads: int = 4
    mlp_ratio: int = 2

    def __post_init__(self) -> None:
        if self.hidden <= 0 or self.layers <= 0 or self.heads <= 1 or self.hidden % self.heads:
            raise ValueError(f"invalid model size {self}: hidden must be a positive multiple of heads >= 2")


def _qwen3_kwargs(tokenizer: PreTrainedTokenizerBase, size: ModelSize) -> dict[str, Any]:
    return dict(
        vocab_size=round_up(len(tokenizer)),
        hidden_size=size.hidden,
        intermediate_size=size.mlp_ratio * size.hidden,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.heads // 2,
        head_dim=size.hidden // size.heads,
        max_position_embeddings=1024,
        rope_theta=10_000.0,
        initializer_range=INIT_RANGE,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _edit_config(out_dir: Path, updates: dict[str, Any]) -> None:
    path = out_dir / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config.update(updates)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def build_student(out_dir: str | os.PathLike, tokenizer: PreTrainedTokenizerBase, size: ModelSize, *, seed: int) -> Path:
    """Save an ``a2d-qwen3`` student (tied embeddings) and its tokenizer under ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = A2DQwen3Config(**_qwen3_kwargs(tokenizer, size), tie_word_embeddings=True)
    A2DQwen3LMHeadModel(config).save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    _edit_config(out_dir, {"architectures": ["A2DQwen3LMHeadModel"]})
    return out_dir


def build_shared_teacher(
    out_dir: str | os.PathLike, tokenizer: PreTrainedTokenizerBase, size: ModelSize, *, shared_vocab_size: int, seed: int
) -> Path:
    """Save a Qwen3-class teacher in WeDLM's release layout (``model_type="wedlm"``, mask id and shared
    vocabulary size in config.json), loadable by :func:`tide.models.wedlm.load_wedlm`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = Qwen3Config(**_qwen3_kwargs(tokenizer, size), tie_word_embeddings=False)
    Qwen3ForCausalLM(config).save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    _edit_config(out_dir, {
        "model_type": WEDLM_MODEL_TYPE,
        "architectures": ["WeDLMForCausalLM"],
        "mask_token_id": int(tokenizer.mask_token_id),
        "shared_vocab_size": int(shared_vocab_size),
    })
    return out_dir


def build_cross_teacher(
    out_dir: str | os.PathLike, tokenizer: PreTrainedTokenizerBase, size: ModelSize, *, num_experts: int, seed: int
) -> Path:
    """Save an LLaDA2-MoE teacher (layer 0 dense, the rest MoE with one shared expert) and its tokenizer."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if num_experts < 2 or num_experts % 2:
        raise ValueError(f"num_experts={num_experts}: must be even and >= 2 (two expert groups)")
    torch.manual_seed(seed)
    config = LLaDA2MoeConfig(
        vocab_size=round_up(len(tokenizer)),
        hidden_size=size.hidden,
        intermediate_size=size.mlp_ratio * size.hidden,
        moe_intermediate_size=size.hidden,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.heads // 2,
        head_dim=size.hidden // size.heads,
        max_position_embeddings=1024,
        rope_theta=10_000.0,
        num_experts=num_experts,
        num_shared_experts=1,
        num_experts_per_tok=2,
        n_group=2,
        topk_group=1,
        first_k_dense_replace=1,
        initializer_range=INIT_RANGE,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        mask_token_id=int(tokenizer.mask_token_id),
    )
    LLaDA2MoeForCausalLM(config).save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return out_dir


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
