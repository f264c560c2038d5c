"""Model shapes of the demos (quickstart, replication), built by the project's one tiny-model builder.

:func:`tide.testing.tiny_models.build_tiny_model` builds tiny models with the real checkpoints' vocabulary
sizes (151,936 rows) by default; the replication trains its own small vocabularies, so :func:`build_model`
passes the rows its tokenizers need (rounded up to a multiple of 64), its sizes and the real checkpoints'
initialisation range 0.02. The models load back through the project's loaders
(:func:`tide.models.student.load_student` / :func:`tide.models.teacher.load_teacher`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from tide.testing.tiny_models import build_tiny_model, round_up

INIT_RANGE = 0.02
MAX_POSITIONS = 1024
ROPE_THETA = 10_000.0


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


def build_model(
    kind: str, out_dir: str | os.PathLike, tokenizer: PreTrainedTokenizerBase, size: ModelSize, *, seed: int,
    **kind_options: Any,
) -> Path:
    """Save a ``kind`` model (``student``, ``wedlm`` or ``llada2``) of ``size`` and its tokenizer.

    ``kind_options``: the builder's per-kind options (``shared_vocab_size`` and ``mask_token_id`` for WeDLM,
    ``num_experts`` for LLaDA2, whose expert MLPs are as wide as the hidden size here)."""
    if kind == "llada2":
        kind_options.setdefault("moe_intermediate_size", size.hidden)
    return build_tiny_model(
        kind, out_dir, tokenizer=tokenizer, seed=seed, hidden_size=size.hidden, num_layers=size.layers,
        num_heads=size.heads, mlp_ratio=size.mlp_ratio, vocab_rows=round_up(len(tokenizer)),
        max_position_embeddings=MAX_POSITIONS, rope_theta=ROPE_THETA, init_range=INIT_RANGE, **kind_options,
    )


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
