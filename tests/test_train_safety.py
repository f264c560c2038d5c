# ruff: noqa: F811  (pytest fixtures imported from another test module are arguments here)
"""A run is never lost or mixed: SIGKILL between checkpoints resumes to the same weights, a used output
directory is refused, a changed setting on resume is refused by name, rotation keeps other runs'
checkpoints, metrics are cut back on resume, a crafted pickle in a checkpoint never runs, and a NaN in the
cache stops the run naming its rows without saving anything."""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train_loop import base_config, cache_dir, make_cache, student_dir  # noqa: F401  (module fixtures)

from stages.train.checkpoint import list_checkpoints, rotate_checkpoints, run_id_of
from stages.train.cli import KILL_AFTER_ENV
from stages.train.data import CacheStream
from stages.train.loop import NonFiniteError, train
from stages.train.metrics import read_metrics
from stages.train.resume_check import ResumeMismatchError
from stages.train.run_dir import OutputDirectoryError

REPO = Path(__file__).resolve().parents[1]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def _cli(config, *, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "stages.train.cli"]
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if value == field.default or (field.default_factory is not dataclasses.MISSING
                                      and value == field.default_factory()):
            continue
        flag = "--" + field.name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            argv += [flag, ",".join(str(v) for v in value)]
        else:
            argv += [flag, str(value)]
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=REPO, env=env)


def test_sigkill_between_checkpoints_resumes_to_the_uninterrupted_weights(tmp_path, cache_dir, student_dir):
    """6 steps, checkpoints every 2: the process is SIGKILLed right after step 3 (checkpoint 2 on disk,
    step 3 lost); `--resume` redoes step 3 from checkpoint 2 and ends bit-identical to a straight run.
    Its metrics.jsonl holds every step once."""
    straight = base_config(cache_dir, student_dir, tmp_path / "straight", max_steps=6, save_every=2,
                           report_to=["jsonl"])
    train(straight)
    killed = dataclasses.replace(straight, output=str(tmp_path / "killed"))
    result = _cli(killed, env_extra={KILL_AFTER_ENV: "3"})
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert [p.name for p in list_checkpoints(tmp_path / "killed")] == ["step-00000002"]
    assert [r["step"] for r in read_metrics(tmp_path / "killed" / "logs" / "metrics.jsonl")] == [1, 2, 3]
    resumed = _cli(dataclasses.replace(killed, resume=True))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "killed")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    records = read_metrics(tmp_path / "killed" / "logs" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    expected = read_metrics(tmp_path / "straight" / "logs" / "metrics.jsonl")
    assert [r["loss"] for r in records] == pytest.approx([r["loss"] for r in expected], rel=1e-6)


def test_used_output_directory_is_refused_without_a_flag(tmp_path, cache_dir, student_dir):
    config = base_config(cache_dir, student_dir, tmp_path / "run", max_steps=2, save_every=1, report_to=["jsonl"])
    train(config)
    before = sorted(p.name for p in list_checkpoints(tmp_path / "run"))
    with pytest.raises(OutputDirectoryError, match=r"already holds a tide-train run .*step-00000002.*--resume.*"
                                                   r"--overwrite"):
        train(config)
    assert sorted(p.name for p in list_checkpoints(tmp_path / "run")) == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirectoryError, match="holds no tide-train run"):
        train(dataclasses.replace(config, output=str(foreign), overwrite=True))
    assert (foreign / "notes.txt").read_text() == "mine"
    old_id = run_id_of(list_checkpoints(tmp_path / "run")[-1])
    train(dataclasses.replace(config, overwrite=True, max_steps=1))
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-00000001"]
    assert run_id_of(list_checkpoints(tmp_path / "run")[-1]) != old_id


def test_resume_with_a_changed_mode_refuses_and_names_the_field(tmp_path, cache_dir, student_dir):
    config = base_config(cache_dir, student_dir, tmp_path / "run", max_steps=4, save_every=2, report_to=["jsonl"])
    train(config, stop_after_steps=2)
    with pytest.raises(ResumeMismatchError) as info:
        train(dataclasses.replace(config, mode="kl", comp_demo=False, resume=True))
    text = str(info.value)
    assert "mode: the checkpoint has 'tidal', this run 'kl'" in text and "comp_demo" in text
    assert "--allow-changed comp_demo,mode" in text
    with pytest.raises(ResumeMismatchError, match=r"total_steps: the checkpoint has 4, this run 6"):
        train(dataclasses.replace(config, max_steps=6, resume=True))
    allowed = train(dataclasses.replace(config, max_steps=6, resume=True, allow_changed=["max_steps", "total_steps"]))
    assert allowed.steps == 6


def test_rotation_deletes_only_this_runs_checkpoints(tmp_path, cache_dir, student_dir):
    """An earlier run's checkpoints with higher step numbers stay; the new run keeps its own newest two."""
    old = tmp_path / "old"
    train(base_config(cache_dir, student_dir, old, max_steps=6, save_every=1, keep_checkpoints=0,
                      report_to=["jsonl"]))
    run = tmp_path / "run"
    train(base_config(cache_dir, student_dir, run, max_steps=2, save_every=1, keep_checkpoints=0,
                      report_to=["jsonl"]))
    for step in (5, 6):  # checkpoints of another run with later steps, as a copied-in directory would be
        shutil.copytree(old / "checkpoints" / f"step-{step:08d}", run / "checkpoints" / f"step-{step:08d}")
    current = run_id_of(run / "checkpoints" / "step-00000002")
    deleted = rotate_checkpoints(run, run_id=current, keep=1)
    assert [p.name for p in deleted] == ["step-00000001"]
    assert [p.name for p in list_checkpoints(run)] == ["step-00000002", "step-00000005", "step-00000006"]
    mine = tmp_path / "mine"
    train(base_config(cache_dir, student_dir, mine, max_steps=5, save_every=1, keep_checkpoints=2,
                      report_to=["jsonl"]))
    assert [p.name for p in list_checkpoints(mine)] == ["step-00000004", "step-00000005"]


class _Payload:
    """Unpickling this creates a file: the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_crafted_pickle_in_a_checkpoint_is_never_executed(tmp_path, cache_dir, student_dir):
    config = base_config(cache_dir, student_dir, tmp_path / "run", max_steps=4, save_every=2, report_to=["jsonl"])
    train(config, stop_after_steps=2)
    checkpoint = tmp_path / "run" / "checkpoints" / "step-00000002"
    assert not list(checkpoint.glob("custom_checkpoint_*")) and not (checkpoint / "scheduler.bin").exists()
    marker = tmp_path / "code-ran"
    for name in ("random_states_0.pkl", "scheduler.bin"):
        with open(checkpoint / name, "wb") as handle:
            pickle.dump(_Payload(marker), handle)
    assert train(dataclasses.replace(config, resume=True)).steps == 4  # RNG and scheduler come from our files
    assert not marker.exists()
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step-00000004")
    with open(checkpoint / "custom_checkpoint_0.pkl", "wb") as handle:
        pickle.dump(_Payload(marker), handle)
    shutil.rmtree(tmp_path / "run" / "logs")
    with pytest.raises(ValueError, match="custom_checkpoint_0.pkl, pickled objects tide-train never writes"):
        train(dataclasses.replace(config, resume=True, allow_changed=[]))
    assert not marker.exists()
    train(dataclasses.replace(config, output=str(tmp_path / "run2")), stop_after_steps=2)
    checkpoint = tmp_path / "run2" / "checkpoints" / "step-00000002"
    torch.save({"state": _Payload(marker), "param_groups": []}, checkpoint / "optimizer.bin")
    with pytest.raises(ValueError, match="holds more than tensors and is not loaded"):
        train(dataclasses.replace(config, output=str(tmp_path / "run2"), resume=True))
    assert not marker.exists()


class _NaNTargetStream(CacheStream):
    """The real stream, with one top-k value of the first batch set to NaN after reading (content that got
    past the reader's checks)."""

    def batches(self, cursor, *, epochs, **share):
        for index, (batch, next_cursor) in enumerate(super().batches(cursor, epochs=epochs, **share)):
            if index == 0:
                batch.vocab.teacher.topk_values[0, 0] = float("nan")
            yield batch, next_cursor


def test_a_non_finite_loss_stops_the_run_naming_the_rows_and_saves_nothing(tmp_path, cache_dir, student_dir):
    output = tmp_path / "run"
    config = base_config(cache_dir, student_dir, output, max_steps=6, save_every=1, batch_size=2, grad_accum=1,
                         report_to=["jsonl"])
    with pytest.raises(NonFiniteError) as info:
        train(config, stream_class=_NaNTargetStream)
    text = str(info.value)
    assert re.match(r"step 1: the (loss|gradient norm) is nan on the batch of data/shard-\d{5}-of-\d{5}\.parquet row group", text)
    assert text.count(" row group ") == 2 and "tide-cache validate" in text
    assert not (output / "model.safetensors").exists()
    assert list_checkpoints(output) == []
    assert read_metrics(output / "logs" / "metrics.jsonl") == []
