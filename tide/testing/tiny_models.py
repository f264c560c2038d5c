"""Tiny models of the real classes, saved so that they load back through the real loading paths.

Tests, benchmarks and the quickstart never download weights. :func:`build_tiny_model` makes a small model of
one of the three kinds, with a seeded initialisation, writes it with ``save_pretrained`` next to its
tokenizer, and returns the directory. The saved ``config.json`` looks like the released checkpoint's (model
type, architectures, ``auto_map`` to remote code that is never used), so loading exercises the real path:

* ``student``: ``model_type="a2d-qwen3"``, tied embeddings → :func:`tide.models.student.load_student`;
* ``wedlm``: ``model_type="wedlm"``, Qwen3 weights, mask id / shared vocabulary size in the config →
  :func:`tide.models.teacher.load_teacher` (through :func:`tide.models.wedlm.load_wedlm`);
* ``llada2``: ``model_type="llada2_moe"`` (layer 0 dense, the rest MoE with one shared expert), mask id from
  the tokenizer → :func:`tide.models.teacher.load_teacher`.

By default a model has the real checkpoint's number of embedding rows (151,936 for the two Qwen-family
kinds; the tokenizer's size rounded up to a multiple of 64 for LLaDA2) and the default tokenizer of its
kind from :mod:`tide.testing.tokenizers`; the replication benchmark passes its own tokenizers, row count and
shape. A given ``(kind, shape, seed)`` always builds the same weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase, Qwen3Config, Qwen3ForCausalLM

from tide.models.a2d_qwen3 import A2DQwen3Config, A2DQwen3LMHeadModel, mask_token_id_from_tokenizer
from tide.models.llada2_moe import LLaDA2MoeConfig, LLaDA2MoeForCausalLM
from tide.models.wedlm import DEFAULT_WEDLM_MASK_TOKEN_ID, DEFAULT_WEDLM_SHARED_VOCAB_SIZE, WEDLM_MODEL_TYPE
from tide.testing.tokenizers import CHATML_WITH_SYSTEM_TEMPLATE, build_llama3_tokenizer, build_qwen_tokenizer

MODEL_KINDS = ("student", "wedlm", "llada2")
# Embedding rows of the real Qwen3-family checkpoints (student and WeDLM).
QWEN3_VOCAB_ROWS = 151_936
# Real checkpoints pad their embedding tables to a multiple of this.
VOCAB_ROW_MULTIPLE = 64
# Tiny models use a wider initialisation than the real 0.02 so that attention patterns visibly change
# outputs at hidden size 32 (tests compare masks through logits).
TINY_INIT_RANGE = 0.2
# RoPE base of the Qwen3 releases; LLaDA2 keeps its config class default unless one is given.
QWEN3_ROPE_THETA = 1_000_000.0
DEFAULT_NUM_EXPERTS = 8


def round_up(value: int, multiple: int = VOCAB_ROW_MULTIPLE) -> int:
    """Smallest multiple of ``multiple`` that is >= ``value``."""
    if value <= 0 or multiple <= 0:
        raise ValueError(f"round_up needs positive arguments, got value={value}, multiple={multiple}")
    return -(-value // multiple) * multiple


def _default_tokenizer(kind: str, out_dir: Path) -> PreTrainedTokenizerBase:
    if kind == "student":
        return build_qwen_tokenizer(out_dir)
    if kind == "wedlm":  # Qwen vocabulary with WeDLM's (different) chat template
        return build_qwen_tokenizer(out_dir, chat_template=CHATML_WITH_SYSTEM_TEMPLATE)
    return build_llama3_tokenizer(out_dir)


def _edit_config(out_dir: Path, updates: dict[str, Any], drop: tuple[str, ...] = ()) -> None:
    path = out_dir / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    for key in drop:
        config.pop(key, None)
    config.update(updates)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _check_options(kind: str, hidden_size: int, num_layers: int, num_heads: int, mlp_ratio: int,
                   given: dict[str, Any]) -> None:
    if kind not in MODEL_KINDS:
        raise ValueError(f"kind={kind!r}: expected one of {MODEL_KINDS}")
    if num_layers < 1 or mlp_ratio < 1:
        raise ValueError(f"num_layers ({num_layers}) and mlp_ratio ({mlp_ratio}) must be >= 1")
    if num_heads < 2 or num_heads % 2 or hidden_size <= 0 or hidden_size % num_heads:
        raise ValueError(
            f"hidden_size ({hidden_size}) must be a positive multiple of num_heads ({num_heads}), an even "
            "number >= 2 (key/value heads = num_heads / 2)"
        )
    only = {"wedlm": ("mask_token_id", "shared_vocab_size"), "llada2": ("num_experts", "moe_intermediate_size")}
    for owner, names in only.items():
        for name in names:
            if given[name] is not None and kind != owner:
                raise ValueError(f"{name} applies to kind={owner!r} only, got it for kind={kind!r}")
    experts = given["num_experts"]
    if experts is not None and (experts < 2 or experts % 2):
        raise ValueError(f"num_experts={experts}: must be even and >= 2 (two expert groups)")


def _qwen3_kwargs(tokenizer: PreTrainedTokenizerBase, rows: int, shape: dict[str, Any]) -> dict[str, Any]:
    hidden, heads = shape["hidden_size"], shape["num_heads"]
    return dict(
        vocab_size=rows,
        hidden_size=hidden,
        intermediate_size=shape["mlp_ratio"] * hidden,
        num_hidden_layers=shape["num_layers"],
        num_attention_heads=heads,
        num_key_value_heads=heads // 2,
        head_dim=hidden // heads,
        max_position_embeddings=shape["max_position_embeddings"],
        rope_theta=QWEN3_ROPE_THETA if shape["rope_theta"] is None else shape["rope_theta"],
        initializer_range=shape["init_range"],
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _save_student(out_dir: Path, tokenizer: PreTrainedTokenizerBase, rows: int, shape: dict[str, Any]) -> None:
    mask_token_id_from_tokenizer(tokenizer)
    config = A2DQwen3Config(**_qwen3_kwargs(tokenizer, rows, shape), tie_word_embeddings=True)
    torch.manual_seed(shape["seed"])
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


def _save_wedlm(out_dir: Path, tokenizer: PreTrainedTokenizerBase, rows: int, shape: dict[str, Any],
                mask_token_id: int, shared_vocab_size: int) -> None:
    kwargs = _qwen3_kwargs(tokenizer, rows, shape)
    config = Qwen3Config(**kwargs, tie_word_embeddings=False)
    torch.manual_seed(shape["seed"])
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
            "rope_theta": kwargs["rope_theta"],
            "rope_scaling": None,
            "mask_token_id": int(mask_token_id),
            "shared_vocab_size": int(shared_vocab_size),
        },
        drop=("rope_parameters",),
    )


def _save_llada2(out_dir: Path, tokenizer: PreTrainedTokenizerBase, rows: int, shape: dict[str, Any],
                 num_experts: int, moe_intermediate_size: int) -> None:
    if tokenizer.mask_token_id is None:
        raise ValueError("the LLaDA2 tokenizer has no mask token")
    hidden, heads = shape["hidden_size"], shape["num_heads"]
    rope = {} if shape["rope_theta"] is None else {"rope_theta": shape["rope_theta"]}
    config = LLaDA2MoeConfig(
        vocab_size=rows,
        hidden_size=hidden,
        intermediate_size=shape["mlp_ratio"] * hidden,
        moe_intermediate_size=moe_intermediate_size,
        num_hidden_layers=shape["num_layers"],
        num_attention_heads=heads,
        num_key_value_heads=heads // 2,
        head_dim=hidden // heads,
        max_position_embeddings=shape["max_position_embeddings"],
        **rope,
        num_experts=num_experts,
        num_shared_experts=1,
        num_experts_per_tok=2,
        n_group=2,
        topk_group=1,
        first_k_dense_replace=1,
        initializer_range=shape["init_range"],
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        mask_token_id=int(tokenizer.mask_token_id),
    )
    torch.manual_seed(shape["seed"])
    LLaDA2MoeForCausalLM(config).save_pretrained(str(out_dir))


def build_tiny_model(
    kind: str,
    out_dir: str | os.PathLike,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    seed: int = 0,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    mlp_ratio: int = 2,
    vocab_rows: int | None = None,
    max_position_embeddings: int = 4096,
    rope_theta: float | None = None,
    init_range: float = TINY_INIT_RANGE,
    mask_token_id: int | None = None,
    shared_vocab_size: int | None = None,
    num_experts: int | None = None,
    moe_intermediate_size: int | None = None,
) -> Path:
    """Save a tiny ``kind`` model (``student``, ``wedlm`` or ``llada2``) and its tokenizer under ``out_dir``.

    ``tokenizer``: saved alongside; None builds the kind's offline tokenizer there (Qwen vocabulary with
    ChatML for the student, with ChatML plus a default system turn for WeDLM, Llama-3 for LLaDA2). A student
    tokenizer must have a mask token. Shape: ``num_heads`` attention heads (half as many key/value heads),
    MLP width ``mlp_ratio × hidden_size``; ``vocab_rows`` None = the real checkpoint's rule (module
    docstring); ``rope_theta`` None = Qwen3's 1e6, or LLaDA2's config default. WeDLM only:
    ``mask_token_id`` / ``shared_vocab_size`` written to its config.json (default WeDLM's own ids). LLaDA2
    only: ``num_experts`` (even, default 8) and ``moe_intermediate_size`` (default hidden_size / 2).
    Returns ``out_dir``.
    """
    given = dict(mask_token_id=mask_token_id, shared_vocab_size=shared_vocab_size, num_experts=num_experts,
                 moe_intermediate_size=moe_intermediate_size)
    _check_options(kind, hidden_size, num_layers, num_heads, mlp_ratio, given)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if tokenizer is None:
        tokenizer = _default_tokenizer(kind, out_dir)
    else:
        tokenizer.save_pretrained(str(out_dir))
    if vocab_rows is None:
        vocab_rows = round_up(len(tokenizer)) if kind == "llada2" else QWEN3_VOCAB_ROWS
    if vocab_rows < len(tokenizer):
        raise ValueError(f"vocab_rows={vocab_rows} is smaller than the tokenizer ({len(tokenizer)} ids)")
    shape = dict(seed=seed, hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
                 mlp_ratio=mlp_ratio, max_position_embeddings=max_position_embeddings, rope_theta=rope_theta,
                 init_range=init_range)
    if kind == "student":
        _save_student(out_dir, tokenizer, vocab_rows, shape)
    elif kind == "wedlm":
        _save_wedlm(
            out_dir, tokenizer, vocab_rows, shape,
            DEFAULT_WEDLM_MASK_TOKEN_ID if mask_token_id is None else mask_token_id,
            DEFAULT_WEDLM_SHARED_VOCAB_SIZE if shared_vocab_size is None else shared_vocab_size,
        )
    else:
        _save_llada2(
            out_dir, tokenizer, vocab_rows, shape,
            DEFAULT_NUM_EXPERTS if num_experts is None else num_experts,
            hidden_size // 2 if moe_intermediate_size is None else moe_intermediate_size,
        )
    return out_dir
