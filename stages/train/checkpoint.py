"""Atomic training checkpoints: model, optimizer, scheduler and RNG (via ``Accelerator.save_state``)
plus ``trainer_state.json`` (optimizer step and the data cursor).

A checkpoint is written into a hidden temporary directory and renamed into place only once complete, so
``latest_checkpoint`` never returns a half-written one, even after a crash mid-save.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from cache_schema.files import atomic_write_json
from stages.train.order import DataCursor

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^step-(\d{8})$")


def checkpoints_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def checkpoint_path(output_dir: str | os.PathLike, step: int) -> Path:
    return checkpoints_root(output_dir) / f"step-{step:08d}"


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``output_dir``, oldest first."""
    root = checkpoints_root(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def save_checkpoint(
    accelerator,
    output_dir: str | os.PathLike,
    *,
    step: int,
    cursor: DataCursor,
    extra: dict[str, Any] | None = None,
    keep: int = 0,
) -> Path:
    """Write the checkpoint of optimizer step ``step``; every process must call it. Returns its path.

    ``keep`` > 0 deletes all but the newest ``keep`` checkpoints afterwards."""
    final = checkpoint_path(output_dir, step)
    tmp = final.with_name(f".tmp-{final.name}")
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        state = {"step": step, "cursor": json.loads(cursor.to_json()), **(extra or {})}
        atomic_write_json(tmp / STATE_FILE, state)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        logger.info("checkpoint saved: %s", final)
        if keep > 0:
            for old in list_checkpoints(output_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def read_trainer_state(path: str | os.PathLike) -> tuple[int, DataCursor, dict[str, Any]]:
    """(step, cursor, the whole state mapping) of a checkpoint directory."""
    state_file = Path(path) / STATE_FILE
    if not state_file.is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint: {STATE_FILE} is missing")
    state = json.loads(state_file.read_text())
    for key in ("step", "cursor"):
        if key not in state:
            raise ValueError(f"{state_file} has no {key!r} entry")
    cursor = DataCursor.from_json(json.dumps(state["cursor"]))
    return int(state["step"]), cursor, state


def load_checkpoint(accelerator, path: str | os.PathLike) -> tuple[int, DataCursor, dict[str, Any]]:
    """Restore model, optimizer, scheduler and RNG from ``path``; return (step, cursor, state)."""
    step, cursor, state = read_trainer_state(path)
    accelerator.load_state(str(path))
    logger.info("resumed from %s (step %d, epoch %d, position %d)", path, step, cursor.epoch, cursor.position)
    return step, cursor, state
