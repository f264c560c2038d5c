"""The output directory of a training run: what may start there, and which run it is.

A run writes ``run.json`` (its run id) into ``--output`` before anything else; checkpoints carry the same
id, so rotation can tell this run's checkpoints from an earlier run's. Before training starts,
:func:`claim_output` decides what the directory allows:

* missing or empty: a new run;
* holding a tide-train run: refused, unless ``--resume`` (its latest checkpoint; a run killed before its
  first checkpoint starts over under the same checks), ``--resume-from`` (a given checkpoint) or
  ``--overwrite`` (the earlier run's files are deleted, then a new run starts);
* holding anything else: refused, ``--overwrite`` included — only tide-train's own runs are ever deleted.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from cache_schema.files import atomic_write_json
from stages.train.checkpoint import (
    STATE_FILE,
    checkpoints_root,
    latest_checkpoint,
    list_checkpoints,
    run_id_of,
)

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
CONFIG_FILE = "train_config.json"


class OutputDirectoryError(ValueError):
    """``--output`` holds something this run may not start over, continue, or delete."""


@dataclass(frozen=True)
class RunStart:
    """Where a run starts: ``checkpoint`` to resume (None: from the student), its ``run_id``, and whether an
    earlier attempt of the same run left files without a checkpoint (``restarted``)."""

    checkpoint: Path | None
    run_id: str
    restarted: bool = False


def is_training_output(path: Path) -> bool:
    """Whether ``path`` holds a tide-train run (its run file, config or checkpoints)."""
    return (path / RUN_FILE).is_file() or (path / CONFIG_FILE).is_file() or checkpoints_root(path).is_dir()


def _describe(path: Path) -> str:
    found = list_checkpoints(path)
    if found:
        return f"a tide-train run with {len(found)} checkpoint(s), the latest {found[-1].name}"
    return "a tide-train run without a checkpoint"


def _read_run_id(path: Path) -> str | None:
    try:
        return json.loads((path / RUN_FILE).read_text()).get("run_id")
    except (OSError, json.JSONDecodeError):
        return None


def _new_run_id() -> str:
    return uuid.uuid4().hex[:16]


def check_checkpoint_path(path: str | os.PathLike) -> Path:
    """A ``--resume-from`` value: an existing, complete checkpoint directory."""
    checkpoint = Path(path)
    if not checkpoint.is_dir():
        raise OutputDirectoryError(f"--resume-from {checkpoint}: no such checkpoint directory")
    if not (checkpoint / STATE_FILE).is_file():
        raise OutputDirectoryError(f"--resume-from {checkpoint}: not a complete checkpoint (no {STATE_FILE}); "
                                   "give a .../checkpoints/step-N directory")
    return checkpoint


def claim_output(output: Path, *, resume: bool, resume_from: str, overwrite: bool) -> RunStart:
    """Decide how this run may use ``output`` (see the module docstring); refuse with a message otherwise.

    Deletes nothing by itself except, with ``overwrite``, an earlier tide-train run's files."""
    if resume_from:
        checkpoint = check_checkpoint_path(resume_from)
        inside = checkpoint.resolve().parent == checkpoints_root(output).resolve()
        if not inside and output.is_dir() and any(output.iterdir()):
            held = _describe(output) if is_training_output(output) else "files of no tide-train run"
            raise OutputDirectoryError(
                f"--output {output} is not empty (it holds {held}); resume the checkpoint into a new --output "
                "or into the run it belongs to")
        if inside:
            newer = [p for p in list_checkpoints(output) if p.name > checkpoint.name]
            if newer:
                raise OutputDirectoryError(
                    f"--resume-from {checkpoint}: the run has newer checkpoints ({newer[-1].name}) that continuing "
                    "from an older one would overwrite; resume it into a new --output")
        # continuing a run keeps its id; a checkpoint taken elsewhere starts a new run here
        run_id = run_id_of(checkpoint) if inside else None
        return RunStart(checkpoint=checkpoint, run_id=run_id or _new_run_id())
    if not output.exists():
        if resume:
            logger.warning("--resume: %s does not exist yet; starting a new run", output)
        return RunStart(checkpoint=None, run_id=_new_run_id())
    if not output.is_dir():
        raise OutputDirectoryError(f"--output {output} exists and is not a directory")
    if not any(output.iterdir()):
        if resume:
            logger.warning("--resume: %s is empty; starting a new run", output)
        return RunStart(checkpoint=None, run_id=_new_run_id())
    if not is_training_output(output):
        raise OutputDirectoryError(
            f"--output {output} is a non-empty directory that holds no tide-train run; choose an empty or new "
            "directory (--overwrite deletes only tide-train runs)")
    if overwrite:
        logger.warning("--overwrite: deleting the earlier run in %s (%s)", output, _describe(output))
        for entry in output.iterdir():
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        return RunStart(checkpoint=None, run_id=_new_run_id())
    if resume:
        checkpoint = latest_checkpoint(output)
        run_id = (run_id_of(checkpoint) if checkpoint else None) or _read_run_id(output) or _new_run_id()
        if checkpoint is None:
            logger.warning("--resume: %s has no checkpoint yet; the run starts over", output)
        return RunStart(checkpoint=checkpoint, run_id=run_id, restarted=checkpoint is None)
    raise OutputDirectoryError(
        f"--output {output} already holds {_describe(output)}; pass --resume to continue it, --overwrite to "
        "start again, or choose another --output")


def write_run_file(output: Path, start: RunStart) -> None:
    """Record the run id (and what it resumed) in ``output/run.json``."""
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_json(output / RUN_FILE, {
        "run_id": start.run_id,
        "resumed_from": str(start.checkpoint) if start.checkpoint else None,
    })
