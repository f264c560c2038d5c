"""The student's ``a2d-qwen3`` model type: registration with the Auto classes, the mask id, and the
portable save.

The model classes live in :mod:`tide.models.modeling_a2d_qwen3`, a file that imports only transformers.
Importing this module (``import tide`` does) registers the model type, so that ``AutoConfig`` /
``AutoModel`` / ``AutoModelForCausalLM`` / ``AutoModelForMaskedLM`` load a student without remote code.
:func:`make_portable` copies that file next to a saved student and points ``auto_map`` at it, so the
directory also loads with stock transformers and ``trust_remote_code=True`` where this project is not
installed. The mask token id is not part of the config: it comes from the tokenizer
(:func:`mask_token_id_from_tokenizer`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    PreTrainedTokenizerBase,
)

from tide.models import modeling_a2d_qwen3
from tide.models.model_types import A2D_QWEN3_MODEL_TYPE
from tide.models.modeling_a2d_qwen3 import A2DQwen3Config, A2DQwen3LMHeadModel, A2DQwen3Model

__all__ = ["A2DQwen3Config", "A2DQwen3LMHeadModel", "A2DQwen3Model", "make_portable",
           "mask_token_id_from_tokenizer", "register_a2d_qwen3"]

MODELING_FILE = Path(modeling_a2d_qwen3.__file__).name
_MODULE = MODELING_FILE.removesuffix(".py")
# What stock transformers needs to find each class in the copied file.
AUTO_MAP = {
    "AutoConfig": f"{_MODULE}.A2DQwen3Config",
    "AutoModel": f"{_MODULE}.A2DQwen3Model",
    "AutoModelForCausalLM": f"{_MODULE}.A2DQwen3LMHeadModel",
    "AutoModelForMaskedLM": f"{_MODULE}.A2DQwen3LMHeadModel",
}


def register_a2d_qwen3() -> None:
    """Register the model type with the Auto classes (idempotent)."""
    AutoConfig.register(A2D_QWEN3_MODEL_TYPE, A2DQwen3Config, exist_ok=True)
    AutoModel.register(A2DQwen3Config, A2DQwen3Model, exist_ok=True)
    AutoModelForCausalLM.register(A2DQwen3Config, A2DQwen3LMHeadModel, exist_ok=True)
    AutoModelForMaskedLM.register(A2DQwen3Config, A2DQwen3LMHeadModel, exist_ok=True)


def make_portable(directory: str | os.PathLike) -> None:
    """Copy the modeling file into a saved ``a2d-qwen3`` checkpoint and point its ``auto_map`` at it
    (replacing the released checkpoint's map to remote code that is not there)."""
    root = Path(directory)
    config_file = root / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if config.get("model_type") != A2D_QWEN3_MODEL_TYPE:
        raise ValueError(f"{root}: model_type={config.get('model_type')!r}, expected {A2D_QWEN3_MODEL_TYPE!r}")
    shutil.copyfile(modeling_a2d_qwen3.__file__, root / MODELING_FILE)
    config["auto_map"] = dict(AUTO_MAP)
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


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
