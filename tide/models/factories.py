"""Tiny models of the real classes, saved and loaded back through the real loading paths.

Tests and the quickstart never download weights. Each builder makes a small model (hidden 32, 2 layers)
of the same class and vocabulary size as the real checkpoint, with a seeded initialisation, writes it with
``save_pretrained`` next to its tokenizer (from :mod:`tide.models.tokenizers`), and returns the directory.
The saved ``config.json`` looks like the released checkpoint's (model type, architectures, ``auto_map``
to remote code that is never used), so loading exercises the real path:

* student: ``model_type="a2d-qwen3"``, 151,936 rows, tied embeddings → :func:`load_student`;
* WeDLM: ``model_type="wedlm"``, Qwen3 weights, 151,936 rows, mask id / shared vocabulary size in the
  config → :func:`tide.models.wedlm.load_wedlm`;
* LLaDA2: ``model_type="llada2_moe"``, rows = the stand-in (Llama-3) tokenizer's size rounded up to a
  multiple of 64, mask id from that tokenizer → ``AutoModelForCausalLM``.

:func:`load_teacher` dispatches on the ``model_type`` of a checkpoint's config.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen3Config,
    Qwen3ForCausalLM,
)

import tide.models  # noqa: F401  (registers a2d-qwen3 and llada2_moe)
from tide.models.a2d_qwen3 import (
    A2D_QWEN3_MODEL_TYPE,
    A2DQwen3Config,
    A2DQwen3LMHeadModel,
    mask_token_id_from_tokenizer,
)
from tide.models.llada2_moe import MODEL_TYPE as LLADA2_MODEL_TYPE
from tide.models.llada2_moe import LLaDA2MoeConfig, LLaDA2MoeForCausalLM
from tide.models.tokenizers import CHATML_WITH_SYSTEM_TEMPLATE, build_llama3_tokenizer, build_qwen_tokenizer
from tide.models.wedlm import (
    DEFAULT_WEDLM_MASK_TOKEN_ID,
    DEFAULT_WEDLM_SHARED_VOCAB_SIZE,
    WEDLM_MODEL_TYPE,
    load_wedlm,
    read_checkpoint_config,
)
from tide.runtime import default_dtype

logger = logging.getLogger(__name__)

# Embedding rows of the real Qwen3-family checkpoints (student and WeDLM).
QWEN3_VOCAB_ROWS = 151_936
# Real checkpoints pad their embedding tables to a multiple of this.
VOCAB_ROW_MULTIPLE = 64
# Tiny models use a wider initialisation than the real 0.02 so that attention patterns visibly change
# outputs at hidden size 32 (tests compare masks through logits).
TINY_INIT_RANGE = 0.2


def round_up(value: int, multiple: int = VOCAB_ROW_MULTIPLE) -> int:
    """Smallest multiple of ``multiple`` that is >= ``value``."""
    if value <= 0 or multiple <= 0:
        raise ValueError(f"round_up needs positive arguments, got value={value}, multiple={multiple}")
    return -(-value // multiple) * multiple


def _qwen3_kwargs(tokenizer: PreTrainedTokenizerBase, hidden_size: int, num_layers: int) -> dict[str, Any]:
    if hidden_size % 4 != 0:
        raise ValueError(f"hidden_size must be a multiple of 4 (4 attention heads), got {hidden_size}")
    return dict(
        vocab_size=QWEN3_VOCAB_ROWS,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden_size // 4,
        max_position_embeddings=4096,
        rope_theta=1_000_000.0,
        initializer_range=TINY_INIT_RANGE,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _edit_config(out_dir: Path, updates: dict[str, Any], drop: tuple[str, ...] = ()) -> None:
    path = out_dir / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    for key in drop:
        config.pop(key, None)
    config.update(updates)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _save_tokenizer(tokenizer: PreTrainedTokenizerBase | None, out_dir: Path, build) -> PreTrainedTokenizerBase:
    if tokenizer is None:
        return build(out_dir)
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def build_tiny_student(
    out_dir: str | os.PathLike,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    hidden_size: int = 32,
    num_layers: int = 2,
    seed: int = 0,
) -> Path:
    """Save a tiny ``a2d-qwen3`` student (151,936 rows, tied embeddings) plus its Qwen tokenizer.

    ``tokenizer``: the student tokenizer to save alongside (built with ``build_qwen_tokenizer`` if None);
    it must have a mask token. Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _save_tokenizer(tokenizer, out_dir, build_qwen_tokenizer)
    mask_token_id_from_tokenizer(tokenizer)
    config = A2DQwen3Config(**_qwen3_kwargs(tokenizer, hidden_size, num_layers), tie_word_embeddings=True)
    torch.manual_seed(seed)
    A2DQwen3LMHeadModel(config).save_pretrained(str(out_dir))
    # As in the released checkpoint: remote code is listed, and never needed.
    _edit_config(out_dir, {
        "architectures": ["A2DQwen3LMHeadModel"],
        "auto_map": {
            "AutoConfig": "modeling_qwen3.A2DQwen3Config",
            "AutoModel": "modeling_qwen3.A2DQwen3LMHeadModel",
            "AutoModelForMaskedLM": "modeling_qwen3.A2DQwen3LMHeadModel",
        },
    })
    return out_dir


def build_tiny_wedlm(
    out_dir: str | os.PathLike,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    hidden_size: int = 32,
    num_layers: int = 2,
    seed: int = 0,
    mask_token_id: int = DEFAULT_WEDLM_MASK_TOKEN_ID,
    shared_vocab_size: int = DEFAULT_WEDLM_SHARED_VOCAB_SIZE,
) -> Path:
    """Save a tiny WeDLM checkpoint: Qwen3 weights under a ``model_type="wedlm"`` config.json.

    ``tokenizer``: Qwen vocabulary with WeDLM's (different) chat template, built with
    ``build_qwen_tokenizer(chat_template=CHATML_WITH_SYSTEM_TEMPLATE)`` if None.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _save_tokenizer(
        tokenizer, out_dir, lambda d: build_qwen_tokenizer(d, chat_template=CHATML_WITH_SYSTEM_TEMPLATE)
    )
    config = Qwen3Config(**_qwen3_kwargs(tokenizer, hidden_size, num_layers), tie_word_embeddings=False)
    torch.manual_seed(seed)
    Qwen3ForCausalLM(config).save_pretrained(str(out_dir))
    # Rewrite the config the way WeDLM's release has it: own model type, remote code, legacy rope keys.
    _edit_config(
        out_dir,
        {
            "model_type": WEDLM_MODEL_TYPE,
            "architectures": ["WeDLMForCausalLM"],
            "auto_map": {
                "AutoConfig": "configuration_wedlm.WeDLMConfig",
                "AutoModelForCausalLM": "modeling_wedlm.WeDLMForCausalLM",
            },
            "qk_norm": True,
            "rope_theta": 1_000_000.0,
            "rope_scaling": None,
            "mask_token_id": mask_token_id,
            "shared_vocab_size": shared_vocab_size,
        },
        drop=("rope_parameters",),
    )
    return out_dir


def build_tiny_llada2(
    out_dir: str | os.PathLike,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_experts: int = 8,
    seed: int = 0,
) -> Path:
    """Save a tiny LLaDA2-MoE (layer 0 dense, the rest MoE) sized to the Llama-3 stand-in tokenizer.

    Rows = tokenizer size rounded up to a multiple of 64 (128,257 → 128,320); mask, pad and EOS ids come
    from the tokenizer.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _save_tokenizer(tokenizer, out_dir, build_llama3_tokenizer)
    if tokenizer.mask_token_id is None:
        raise ValueError("the LLaDA2 stand-in tokenizer has no mask token")
    if hidden_size % 4 != 0 or num_experts % 2 != 0:
        raise ValueError(f"hidden_size ({hidden_size}) must be a multiple of 4 and num_experts ({num_experts}) even")
    config = LLaDA2MoeConfig(
        vocab_size=round_up(len(tokenizer)),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        moe_intermediate_size=hidden_size // 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden_size // 4,
        max_position_embeddings=4096,
        num_experts=num_experts,
        num_shared_experts=1,
        num_experts_per_tok=2,
        n_group=2,
        topk_group=1,
        first_k_dense_replace=1,
        initializer_range=TINY_INIT_RANGE,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        mask_token_id=tokenizer.mask_token_id,
    )
    torch.manual_seed(seed)
    LLaDA2MoeForCausalLM(config).save_pretrained(str(out_dir))
    return out_dir


def _from_pretrained_kwargs(dtype, device, attn_implementation) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"dtype": dtype if dtype is not None else default_dtype(device)}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    return kwargs


def load_student(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    attn_implementation: str | None = "sdpa",
) -> PreTrainedModel:
    """Load a student checkpoint (``a2d-qwen3``, or plain ``qwen3``) through ``AutoModelForCausalLM``."""
    raw = read_checkpoint_config(path)
    if raw.get("model_type") not in (A2D_QWEN3_MODEL_TYPE, "qwen3"):
        raise ValueError(
            f"{path}: model_type={raw.get('model_type')!r} is not a student type ({A2D_QWEN3_MODEL_TYPE!r} or 'qwen3')"
        )
    model = AutoModelForCausalLM.from_pretrained(
        str(path), **_from_pretrained_kwargs(dtype, device, attn_implementation)
    )
    return model.to(device) if device is not None else model


def load_teacher(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    attn_implementation: str | None = "sdpa",
) -> PreTrainedModel:
    """Load a teacher by the ``model_type`` of its config.json: ``wedlm`` → :func:`load_wedlm` (Qwen3 with
    ``mask_token_id`` / ``shared_vocab_size`` on its config), ``llada2_moe`` → ``AutoModelForCausalLM``.
    The model is put in eval mode; dtype defaults to bf16 on GPU and fp32 on CPU."""
    raw = read_checkpoint_config(path)
    model_type = raw.get("model_type")
    kwargs = _from_pretrained_kwargs(dtype, device, attn_implementation)
    if model_type == WEDLM_MODEL_TYPE:
        model = load_wedlm(path, **kwargs)
    elif model_type == LLADA2_MODEL_TYPE:
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
        if getattr(model.config, "mask_token_id", None) is None:
            raise ValueError(f"{path}: the LLaDA2 config has no mask_token_id")
    else:
        raise ValueError(
            f"{path}: model_type={model_type!r} is not a supported teacher ({WEDLM_MODEL_TYPE!r}, {LLADA2_MODEL_TYPE!r})"
        )
    model.eval()
    return model.to(device) if device is not None else model
