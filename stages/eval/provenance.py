"""What every evaluation result records: the checkpoint, its weight fingerprint, the generation settings
and the library versions."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from pathlib import Path
from typing import Any

PROJECT_DISTRIBUTION = "tide-offline"
_READ_CHUNK = 1 << 20


def weights_fingerprint(checkpoint: str | os.PathLike) -> str:
    """``sha256:<hex>`` over the checkpoint's ``*.safetensors`` files, in name order: the digest of the
    lines ``<file name> <sha256 of the file>``. Independent of file modification times and of the path."""
    root = Path(checkpoint)
    if not root.is_dir():
        raise FileNotFoundError(f"checkpoint {root} is not a directory")
    files = sorted(root.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"checkpoint {root} holds no *.safetensors files to fingerprint")
    outer = hashlib.sha256()
    for path in files:
        inner = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(_READ_CHUNK):
                inner.update(chunk)
        outer.update(f"{path.name} {inner.hexdigest()}\n".encode())
    return "sha256:" + outer.hexdigest()


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries that decide a result."""
    return {
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "lm_eval": _version("lm_eval") or _version("lm-eval"),
        PROJECT_DISTRIBUTION: _version(PROJECT_DISTRIBUTION),
    }


PROVENANCE_FIELDS = (
    "checkpoint",
    "weights_fingerprint",
    "task",
    "num_fewshot",
    "block_size",
    "steps",
    "gen_length",
    "remasking",
    "temperature",
    "cfg_scale",
    "seed",
    "chat_template_applied",
    "think_block_injected",
    "limit",
    "versions",
)


def provenance_record(
    *,
    checkpoint: str | os.PathLike,
    fingerprint: str,
    task: str,
    num_fewshot: int | None,
    block_size: int,
    steps: int,
    gen_length: int,
    remasking: str,
    temperature: float,
    cfg_scale: float,
    seed: int,
    chat_template_applied: bool,
    think_block_injected: bool,
    limit: float | None,
) -> dict[str, Any]:
    """The provenance block of one result file (keys: ``PROVENANCE_FIELDS``)."""
    record = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "weights_fingerprint": fingerprint,
        "task": task,
        "num_fewshot": num_fewshot,
        "block_size": block_size,
        "steps": steps,
        "gen_length": gen_length,
        "remasking": remasking,
        "temperature": temperature,
        "cfg_scale": cfg_scale,
        "seed": seed,
        "chat_template_applied": chat_template_applied,
        "think_block_injected": think_block_injected,
        "limit": limit,
        "versions": library_versions(),
    }
    return record
