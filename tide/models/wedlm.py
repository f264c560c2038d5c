"""Load a WeDLM checkpoint (``model_type = "wedlm"``) as stock ``Qwen3ForCausalLM``.

tencent/WeDLM-8B-Instruct keeps Qwen3-8B's weights and weight names exactly; only its ``config.json``
(``model_type: "wedlm"``, an ``auto_map`` to remote code that does not run on transformers 5.x, plus a few
WeDLM-specific decoding keys) differs. :func:`load_wedlm` reads that file, builds a ``Qwen3Config`` from
the keys the two share, and loads the weights through ``Qwen3ForCausalLM.from_pretrained``. The returned
model's config carries ``mask_token_id`` and ``shared_vocab_size`` (ids 0..shared_vocab_size-1 mean the
same token for WeDLM and the student).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

from transformers import Qwen3Config, Qwen3ForCausalLM

from tide.models.loading import read_checkpoint_config
from tide.models.model_types import WEDLM_MODEL_TYPE

logger = logging.getLogger(__name__)

# docs/design.md#special-ids: WeDLM's mask id and the number of ids it shares with the Qwen3 student. Used only when
# neither the caller nor the checkpoint's config.json says otherwise.
DEFAULT_WEDLM_MASK_TOKEN_ID = 151_665
DEFAULT_WEDLM_SHARED_VOCAB_SIZE = 151_646

# Legacy/standard keys that Qwen3Config accepts without being dataclass fields.
_EXTRA_QWEN3_KEYS = ("rope_theta", "rope_scaling", "torch_dtype", "dtype", "architectures")


def qwen3_config_from_wedlm(raw: dict[str, Any]) -> Qwen3Config:
    """Translate a WeDLM ``config.json`` dict into a ``Qwen3Config`` (shared keys only)."""
    model_type = raw.get("model_type")
    if model_type != WEDLM_MODEL_TYPE:
        raise ValueError(f"config.json has model_type={model_type!r}, expected {WEDLM_MODEL_TYPE!r}")
    if raw.get("qk_norm") is False:
        raise ValueError("config.json has qk_norm=false, but Qwen3 attention always applies q/k RMS norm")
    fields = {field.name for field in dataclasses.fields(Qwen3Config)}
    kept = {key: value for key, value in raw.items() if key in fields or key in _EXTRA_QWEN3_KEYS}
    kept["architectures"] = ["Qwen3ForCausalLM"]
    if kept.get("rope_scaling", True) is None:
        del kept["rope_scaling"]  # a null legacy key only triggers a deprecation warning
    dropped = sorted(set(raw) - set(kept) - {"model_type"})
    if dropped:
        logger.info("WeDLM config keys not used by Qwen3: %s", ", ".join(dropped))
    return Qwen3Config(**kept)


def _resolve_id(name: str, explicit: int | None, raw: dict[str, Any], default: int) -> int:
    if explicit is not None:
        return int(explicit)
    if raw.get(name) is not None:
        return int(raw[name])
    logger.info("%s not in config.json; using the default %d (docs/design.md#special-ids)", name, default)
    return default


def load_wedlm(
    path: str | os.PathLike,
    *,
    mask_token_id: int | None = None,
    shared_vocab_size: int | None = None,
    **from_pretrained_kwargs: Any,
) -> Qwen3ForCausalLM:
    """Load a ``wedlm`` checkpoint as ``Qwen3ForCausalLM``.

    ``mask_token_id`` / ``shared_vocab_size``: explicit values win, then the checkpoint's config.json,
    then :data:`DEFAULT_WEDLM_MASK_TOKEN_ID` / :data:`DEFAULT_WEDLM_SHARED_VOCAB_SIZE`. Other keyword
    arguments go to ``from_pretrained`` (``dtype``, ``device_map``, ``attn_implementation``, ...).
    """
    if "config" in from_pretrained_kwargs:
        raise ValueError("load_wedlm builds the Qwen3 config itself; do not pass `config`")
    raw = read_checkpoint_config(path)
    config = qwen3_config_from_wedlm(raw)
    mask_id = _resolve_id("mask_token_id", mask_token_id, raw, DEFAULT_WEDLM_MASK_TOKEN_ID)
    shared = _resolve_id("shared_vocab_size", shared_vocab_size, raw, DEFAULT_WEDLM_SHARED_VOCAB_SIZE)
    if not 0 <= mask_id < config.vocab_size:
        raise ValueError(f"mask_token_id={mask_id} is outside the vocabulary of size {config.vocab_size}")
    if not 0 < shared <= config.vocab_size:
        raise ValueError(f"shared_vocab_size={shared} must be in (0, vocab_size={config.vocab_size}]")
    model = Qwen3ForCausalLM.from_pretrained(str(path), config=config, **from_pretrained_kwargs)
    model.config.mask_token_id = mask_id
    model.config.shared_vocab_size = shared
    model.config.teacher_model_type = WEDLM_MODEL_TYPE
    return model
