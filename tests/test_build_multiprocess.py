"""A real two-process build (``accelerate launch --cpu --num_processes 2``) writes the same cache as one process.

The in-process rank simulation in test_build_run.py covers the layout; this runs the actual launcher, with
torch.distributed (gloo) barriers between the ranks, with short chats so it stays in the default run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from stages.cli import tide_cache_main
from tide.testing.chat_data import synthetic_messages, write_chat_jsonl
from tide.testing.tiny_models import build_tiny_model


def _build(args: list[str], output: Path, *, launcher: list[str]) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    command = [*launcher, "-m", "stages.cli", "build", *args, "--output", str(output)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]


def test_two_process_launch_writes_the_one_process_cache(tmp_path: Path) -> None:
    teacher = build_tiny_model("wedlm", tmp_path / "wedlm")
    student = build_tiny_model("student", tmp_path / "student")
    # Short chats and sequences: the test is about the launcher and the barriers, not the teacher's work.
    sources = write_chat_jsonl(tmp_path / "chats.jsonl", synthetic_messages(6))
    args = [
        "--teacher", str(teacher), "--student-tokenizer", str(student), "--sources", str(sources),
        "--max-length", "64", "--teacher-max-length", "96", "--rows-per-shard", "3", "--replicas", "2",
        "--k", "16", "--no-progress",
    ]
    assert tide_cache_main(["build", *args, "--output", str(tmp_path / "one")]) == 0  # the one-process reference
    _build(
        args,
        tmp_path / "two",
        launcher=[
            sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        ],
    )
    one = sorted(p.name for p in (tmp_path / "one" / "data").glob("*.parquet"))
    two = sorted(p.name for p in (tmp_path / "two" / "data").glob("*.parquet"))
    assert one == two and len(one) == 4
    for name in one:
        assert (tmp_path / "one" / "data" / name).read_bytes() == (tmp_path / "two" / "data" / name).read_bytes(), name
