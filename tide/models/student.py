"""The block-diffusion student: loading a checkpoint, and the forward over x_t ⊕ x0 with position ids
[0..L-1, 0..L-1] and the BD3LM mask.

:func:`load_student` is the one way a student checkpoint is loaded (training, evaluation, benchmarks); it
imports only student model code. The model is any causal-LM-shaped transformers model whose base model
accepts an explicit 4-D ``attention_mask`` and ``position_ids`` (the ``a2d-qwen3`` student, stock Qwen3). The mask is built in the
form the model's attention implementation needs (:func:`tide.bd3lm.bd3lm_attention_mask`). Only the x_t
half is read out: position i of the output predicts token i (no shift).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from tide.bd3lm import bd3lm_attention_mask, bd3lm_position_ids
from tide.models.a2d_qwen3 import A2D_QWEN3_MODEL_TYPE
from tide.models.loading import from_pretrained_kwargs, read_checkpoint_config

STUDENT_MODEL_TYPES = (A2D_QWEN3_MODEL_TYPE, "qwen3")
ADAPTER_CONFIG = "adapter_config.json"


def load_student(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    attn_implementation: str | None = "sdpa",
) -> PreTrainedModel:
    """Load a student checkpoint (``a2d-qwen3``, or plain ``qwen3``) through ``AutoModelForCausalLM``.

    ``dtype`` defaults to :func:`tide.runtime.default_dtype` of ``device``; SDPA attention takes the
    explicit 4-D masks of :mod:`tide.bd3lm`. Any other model type is refused before weights are read.

    A LoRA adapter directory (``adapter_config.json``, as ``tide-train --lora-r`` saves) loads its base
    student and returns it with the adapters merged (needs ``peft``)."""
    if is_adapter_directory(path):
        return _load_with_adapters(Path(path), dtype=dtype, device=device, attn_implementation=attn_implementation)
    raw = read_checkpoint_config(path)
    if raw.get("model_type") not in STUDENT_MODEL_TYPES:
        raise ValueError(
            f"{path}: model_type={raw.get('model_type')!r} is not a student type "
            f"({' or '.join(repr(t) for t in STUDENT_MODEL_TYPES)})"
        )
    model = AutoModelForCausalLM.from_pretrained(
        str(path), **from_pretrained_kwargs(dtype, device, attn_implementation)
    )
    return model.to(device) if device is not None else model


def is_adapter_directory(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a LoRA adapter directory (adapters only, no model of its own)."""
    root = Path(path)
    return (root / ADAPTER_CONFIG).is_file() and not (root / "config.json").is_file()


def _load_with_adapters(path: Path, **kwargs: Any) -> PreTrainedModel:
    try:
        from peft import PeftModel
    except ImportError:
        raise ValueError(f"{path} holds LoRA adapters; loading them needs the peft package "
                         "(pip install 'tide-offline[lora]')") from None
    base = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{path / ADAPTER_CONFIG}: no base_model_name_or_path, so the base student is unknown")
    model = load_student(base, **kwargs)
    return PeftModel.from_pretrained(model, str(path)).merge_and_unload()


@dataclass
class BD3LMInputs:
    """What one student forward takes: ``input_ids`` (B, 2L), ``position_ids`` (B, 2L) and the mask."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: Any


def attn_implementation_of(model: nn.Module) -> str:
    """The attention implementation the model runs with (``config._attn_implementation``)."""
    impl = getattr(model.config, "_attn_implementation", None)
    return impl or "eager"


def _check_pair(noised_ids: torch.Tensor, clean_ids: torch.Tensor, attention_mask: torch.Tensor | None):
    if noised_ids.dim() != 2:
        raise ValueError(f"noised_ids must have shape (B, L), got {tuple(noised_ids.shape)}")
    if clean_ids.shape != noised_ids.shape:
        raise ValueError(
            f"clean_ids shape {tuple(clean_ids.shape)} differs from noised_ids shape {tuple(noised_ids.shape)}"
        )
    if attention_mask is not None and attention_mask.shape != noised_ids.shape:
        raise ValueError(
            f"attention_mask (padding) must have shape {tuple(noised_ids.shape)}, got {tuple(attention_mask.shape)}"
        )


def build_bd3lm_inputs(
    noised_ids: torch.Tensor,
    clean_ids: torch.Tensor,
    *,
    block_size: int,
    attention_mask: torch.Tensor | None = None,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
) -> BD3LMInputs:
    """Lay out x_t ⊕ x0 for one forward.

    ``noised_ids``, ``clean_ids`` (B, L) with L a multiple of ``block_size``; ``attention_mask`` (B, L)
    padding mask (1/True = real token, right padding), or None when nothing is padded.
    """
    _check_pair(noised_ids, clean_ids, attention_mask)
    batch, seq_len = noised_ids.shape
    if seq_len % block_size != 0:
        raise ValueError(f"sequence length {seq_len} is not a multiple of block_size={block_size}")
    valid = None if attention_mask is None else attention_mask.to(torch.bool)
    if valid is not None and bool(valid.all()):
        valid = None
    mask = bd3lm_attention_mask(
        seq_len, block_size, x0_first=False, valid=valid, attn_implementation=attn_implementation,
        dtype=dtype, device=noised_ids.device,
    )
    return BD3LMInputs(
        input_ids=torch.cat([noised_ids, clean_ids], dim=1),
        position_ids=bd3lm_position_ids(seq_len, batch, device=noised_ids.device),
        attention_mask=mask,
    )


def bd3lm_hidden_states(
    model: nn.Module,
    noised_ids: torch.Tensor,
    clean_ids: torch.Tensor,
    *,
    block_size: int,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Final hidden states (after the last norm) of the x_t half, shape (B, L, hidden).

    Apply ``model.get_output_embeddings()`` to the rows you need to get their logits.
    """
    inputs = build_bd3lm_inputs(
        noised_ids, clean_ids, block_size=block_size, attention_mask=attention_mask,
        attn_implementation=attn_implementation_of(model), dtype=model.dtype,
    )
    outputs = model.base_model(
        input_ids=inputs.input_ids,
        attention_mask=inputs.attention_mask,
        position_ids=inputs.position_ids,
        use_cache=False,
    )
    return outputs.last_hidden_state[:, : noised_ids.shape[1]]


class BD3LMStudent(nn.Module):
    """The student as a training module: ``forward(noised_ids, clean_ids, block_size=b)`` returns the x_t-half
    hidden states (:func:`bd3lm_hidden_states`).

    Distributed wrappers (DDP, as ``Accelerator.prepare`` applies) sync gradients only for work done inside
    *their* ``forward``; calling ``model.base_model`` on a wrapped causal LM bypasses it, so every rank would
    keep its own gradients. Wrap the student in this module before ``prepare`` and call the prepared module.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        noised_ids: torch.Tensor,
        clean_ids: torch.Tensor,
        *,
        block_size: int,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return bd3lm_hidden_states(
            self.model, noised_ids, clean_ids, block_size=block_size, attention_mask=attention_mask
        )

    def get_output_embeddings(self) -> nn.Module:
        return self.model.get_output_embeddings()


def bd3lm_forward(
    model: nn.Module,
    noised_ids: torch.Tensor,
    clean_ids: torch.Tensor,
    *,
    block_size: int,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Student logits of the x_t half, shape (B, L, V); position i predicts token i."""
    hidden = bd3lm_hidden_states(
        model, noised_ids, clean_ids, block_size=block_size, attention_mask=attention_mask
    )
    return model.get_output_embeddings()(hidden)
