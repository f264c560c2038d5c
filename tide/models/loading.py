"""What loading any checkpoint needs, whatever its role: its ``config.json`` before the weights (the model
type decides how to load it), and the ``from_pretrained`` arguments every loader passes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from tide.runtime import default_dtype


def read_checkpoint_config(path: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` of a local checkpoint directory (or a hub id already in the local cache)."""
    local = Path(path)
    if local.is_dir():
        config_file = local / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{local}: no config.json in this checkpoint directory")
    elif local.is_absolute() or local.exists() or str(path).startswith("."):
        raise FileNotFoundError(f"{path}: not a checkpoint directory (no config.json)")
    else:
        from transformers.utils import cached_file

        try:
            resolved = cached_file(str(path), "config.json")
        except OSError as exc:
            raise FileNotFoundError(f"{path}: config.json not found ({exc})") from exc
        if resolved is None:
            raise FileNotFoundError(f"{path}: config.json not found")
        config_file = Path(resolved)
    with open(config_file, encoding="utf-8") as handle:
        return json.load(handle)


def from_pretrained_kwargs(
    dtype: torch.dtype | None, device: torch.device | str | None, attn_implementation: str | None
) -> dict[str, Any]:
    """``dtype`` (default: :func:`tide.runtime.default_dtype` of ``device``) and, when given, the attention
    implementation."""
    kwargs: dict[str, Any] = {"dtype": dtype if dtype is not None else default_dtype(device)}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    return kwargs
