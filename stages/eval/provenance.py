"""What every evaluation result records: the checkpoint, its weight fingerprint, the generation settings
and the library versions (both from :mod:`stages.provenance`, shared with the cache build)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from stages.provenance import library_versions

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
    "think_block",
    "gen_kwargs",
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
    think_block: dict[str, Any],
    gen_kwargs: dict[str, Any],
    limit: float | None,
) -> dict[str, Any]:
    """The provenance block of one result file (keys: ``PROVENANCE_FIELDS``). ``think_block``: the rule's
    mode and what it did per context (:class:`stages.eval.think.ThinkRecord`); ``gen_kwargs``: the protocol's
    overrides of the task's generation settings."""
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
        "think_block": think_block,
        "gen_kwargs": gen_kwargs,
        "limit": limit,
        "versions": library_versions(),
    }
    return record
