"""Resume refuses a changed run: the options and the derived facts a checkpoint was trained with must match.

Compared: every option except those that only say where files go, how often to log or save, and what to
report (:data:`FREE_OPTIONS`), plus facts derived from the cache and the launcher (:class:`RunFacts`): the
cache manifest's fingerprint (a rebuilt cache under the same path is another cache), the resolved
temperature, the number of optimizer steps (the LR and TIDAL schedules depend on it) and the number of
processes (the data order does). Every difference is named; the resume goes ahead only when each differing
name is listed in ``--allow-changed``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

logger = logging.getLogger(__name__)

# Options that change no trained number: paths (the cache is checked by its fingerprint), bookkeeping,
# reporting, and memory / speed settings with the same arithmetic.
FREE_OPTIONS = frozenset({
    "cache", "student", "output", "resume", "resume_from", "overwrite", "allow_changed", "save_every",
    "save_every_minutes", "keep_checkpoints", "log_every", "report_to", "project", "run_name", "progress",
    "debug", "val_every", "val_batches", "eval_tasks", "eval_limit", "push_to_hub", "hub_model_id",
    "hub_private", "gradient_checkpointing", "loss_chunk_size", "verify_checksums", "data_workers",
})


class ResumeMismatchError(ValueError):
    """The run to resume differs from the checkpoint's in options not allowed to change."""


@dataclass(frozen=True)
class RunFacts:
    """What a run derives from its cache and launcher, saved with every checkpoint."""

    cache_fingerprint: str
    temperature: float | None
    total_steps: int
    processes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def differences(saved_config: dict[str, Any], saved_facts: dict[str, Any], config: dict[str, Any],
                facts: RunFacts) -> dict[str, str]:
    """``{name: "the checkpoint has X, this run Y"}`` for every compared option and fact that differs."""
    found: dict[str, str] = {}
    for name in sorted(set(saved_config) | set(config)):
        if name in FREE_OPTIONS:
            continue
        old, new = saved_config.get(name, "<absent>"), config.get(name, "<absent>")
        if not _same(old, new):
            found[name] = f"the checkpoint has {old!r}, this run {new!r}"
    for name, new in facts.to_dict().items():
        old = saved_facts.get(name, "<absent>")
        if not _same(old, new):
            found[name] = f"the checkpoint has {old!r}, this run {new!r}"
    return found


def check_resume(saved_config: dict[str, Any], saved_facts: dict[str, Any], config: dict[str, Any],
                 facts: RunFacts, *, allowed: list[str], where: str) -> None:
    """Refuse a resume whose options or facts differ from the checkpoint's, unless each is ``allowed``."""
    found = differences(saved_config, saved_facts, config, facts)
    allowed_names = {name.replace("-", "_") for name in allowed}
    refused = {name: why for name, why in found.items() if name not in allowed_names}
    for name in sorted(set(found) - set(refused)):
        logger.warning("resume: %s changed (%s), allowed by --allow-changed", name, found[name])
    if refused:
        listed = "; ".join(f"{name}: {why}" for name, why in refused.items())
        raise ResumeMismatchError(
            f"cannot resume {where}: {len(refused)} setting(s) differ from the checkpoint's — {listed}; "
            f"resume with the checkpoint's settings, or pass --allow-changed {','.join(refused)} to accept them")
