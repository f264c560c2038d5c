"""Atomic training checkpoints that resume without unpickling anything.

A checkpoint ``<output>/checkpoints/step-N`` holds

* what ``Accelerator.save_state`` writes for the model (``model.safetensors``) and the optimizer
  (``optimizer.bin``, read back by accelerate with ``torch.load(weights_only=True)``, which refuses any
  pickled code); no object is registered with accelerate, so it writes no ``custom_checkpoint_*.pkl``;
* ``trainer_state.json``: the optimizer step, the data cursor, the run id, the LR scheduler's state (JSON)
  and what the resume check compares (:mod:`stages.train.resume_check`);
* ``rng_state_<rank>.safetensors`` / ``rng_state_<rank>.json``: each process's torch (CPU, CUDA) and
  Python / NumPy random states, restored after accelerate's own (``random_states_*.pkl``, which accelerate
  reads with ``weights_only=True`` and which we overwrite, so its content never matters);
* ``train_config.json``: the run's options at that step.

It is written into a hidden temporary directory and renamed into place once complete, so
:func:`latest_checkpoint` never returns a half-written one, even after a crash mid-save. Rotation deletes
only checkpoints of the current run (same run id), oldest first, never the one just written.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from cache_schema.files import atomic_write_json, fsync_directory
from stages.train.order import DataCursor

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
CONFIG_FILE = "train_config.json"
_NAME = re.compile(r"^step-(\d{8})$")


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, or holds something this trainer will not load."""


def checkpoints_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def checkpoint_path(output_dir: str | os.PathLike, step: int) -> Path:
    return checkpoints_root(output_dir) / f"step-{step:08d}"


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The step in a checkpoint directory's name, or None if the name is not ``step-NNNNNNNN``."""
    match = _NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``output_dir``, oldest first."""
    root = checkpoints_root(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: checkpoint_step(p))


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def run_id_of(path: str | os.PathLike) -> str | None:
    """The run id recorded in a checkpoint (None for a checkpoint without one)."""
    try:
        return json.loads((Path(path) / STATE_FILE).read_text()).get("run_id")
    except (OSError, json.JSONDecodeError):
        return None


# ----------------------------------------------------------------------------------------------- RNG


def _rng_tensors() -> dict[str, torch.Tensor]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{index}"] = state
    return tensors


def _rng_json() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {"name": name, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
    }


def save_rng_state(directory: Path, rank: int) -> None:
    save_file(_rng_tensors(), str(directory / f"rng_state_{rank}.safetensors"))
    atomic_write_json(directory / f"rng_state_{rank}.json", _rng_json())


def load_rng_state(directory: Path, rank: int) -> None:
    """Restore this process's random states; a checkpoint without them (another rank count) is refused."""
    tensors_file, json_file = directory / f"rng_state_{rank}.safetensors", directory / f"rng_state_{rank}.json"
    if not tensors_file.is_file() or not json_file.is_file():
        raise CheckpointError(f"{directory}: no random state for process {rank} ({tensors_file.name}); "
                              "resume with the number of processes the checkpoint was saved with")
    tensors = load_file(str(tensors_file))
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[f"torch_cuda_{i}"] for i in range(len(tensors)) if f"torch_cuda_{i}" in tensors]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    states = json.loads(json_file.read_text())
    py = states["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["state"]), py["gauss"]))
    nps = states["numpy"]
    np.random.set_state((str(nps["name"]), np.asarray(nps["keys"], dtype=np.uint32), int(nps["pos"]),
                         int(nps["has_gauss"]), float(nps["cached_gaussian"])))


# ----------------------------------------------------------------------------------------------- save / load


def save_checkpoint(
    accelerator,
    output_dir: str | os.PathLike,
    *,
    step: int,
    cursor: DataCursor,
    scheduler,
    run_id: str,
    config: dict[str, Any],
    extra: dict[str, Any] | None = None,
    keep: int = 0,
) -> Path:
    """Write the checkpoint of optimizer step ``step``; every process must call it. Returns its path.

    ``keep`` > 0 then deletes all but the newest ``keep`` checkpoints of run ``run_id``."""
    final = checkpoint_path(output_dir, step)
    tmp = final.with_name(f".tmp-{final.name}")
    if accelerator.is_main_process:
        if final.exists() and run_id_of(final) != run_id:
            raise CheckpointError(f"{final} belongs to another run (run id {run_id_of(final)}); refusing to "
                                  "overwrite it: train into another --output")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    save_rng_state(tmp, accelerator.process_index)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(tmp / CONFIG_FILE, config)
        state = {"step": step, "cursor": json.loads(cursor.to_json()), "run_id": run_id,
                 "scheduler": scheduler.state_dict(), **(extra or {})}
        atomic_write_json(tmp / STATE_FILE, state)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_directory(final.parent)
        logger.info("checkpoint saved: %s", final)
        if keep > 0:
            rotate_checkpoints(output_dir, run_id=run_id, keep=keep)
    accelerator.wait_for_everyone()
    return final


def rotate_checkpoints(output_dir: str | os.PathLike, *, run_id: str, keep: int) -> list[Path]:
    """Delete the oldest checkpoints of run ``run_id`` until ``keep`` remain; return what was deleted.
    Checkpoints of other runs (another run id, or none) are never touched."""
    mine = [p for p in list_checkpoints(output_dir) if run_id_of(p) == run_id]
    doomed = mine[:-keep] if keep > 0 else []
    for old in doomed:
        shutil.rmtree(old)
        logger.info("checkpoint removed (keeping the newest %d of this run): %s", keep, old)
    return doomed


def read_trainer_state(path: str | os.PathLike) -> tuple[int, DataCursor, dict[str, Any]]:
    """(step, cursor, the whole state mapping) of a checkpoint directory."""
    state_file = Path(path) / STATE_FILE
    if not state_file.is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint: {STATE_FILE} is missing")
    try:
        state = json.loads(state_file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{state_file} is not valid JSON: {exc}") from None
    for key in ("step", "cursor", "scheduler"):
        if key not in state:
            raise CheckpointError(f"{state_file} has no {key!r} entry (a checkpoint of an older tide-train?)")
    try:
        cursor = DataCursor.from_json(json.dumps(state["cursor"]))
    except ValueError as exc:
        raise CheckpointError(f"{state_file}: {exc}") from None
    return int(state["step"]), cursor, state


def load_checkpoint(accelerator, path: str | os.PathLike, scheduler) -> tuple[int, DataCursor, dict[str, Any]]:
    """Restore model, optimizer, scheduler and RNG from ``path``; return (step, cursor, state).

    Nothing is unpickled: accelerate reads tensors with ``weights_only=True`` (a file holding code is
    refused), the scheduler and the cursor come from JSON and the random states from safetensors / JSON."""
    path = Path(path)
    step, cursor, state = read_trainer_state(path)
    foreign = sorted(p.name for p in path.glob("custom_checkpoint_*"))
    if foreign:
        raise CheckpointError(f"{path} holds {', '.join(foreign)}, pickled objects tide-train never writes; "
                              "refusing to load the checkpoint (it may carry code)")
    try:
        accelerator.load_state(str(path), load_kwargs={"weights_only": True})
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: a state file holds more than tensors and is not loaded ({first}); "
                              "checkpoints from elsewhere may carry code, use one tide-train wrote") from None
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path} is incomplete: {exc.filename or exc} is missing") from None
    scheduler.load_state_dict(state["scheduler"])
    load_rng_state(path, accelerator.process_index)
    logger.info("resumed from %s (step %d, epoch %d, position %d)", path, step, cursor.epoch, cursor.position)
    return step, cursor, state
