"""The command lines of the quickstart's steps, for the real CLIs of the installed package."""

from __future__ import annotations

import sys
from pathlib import Path

from stages.quickstart.config import EVAL_TASK, TEACHER_REGIME, Layout, QuickstartConfig, TrainRun


def cli_path(name: str) -> str:
    """The console script ``name`` next to the running interpreter (the venv's), else on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.is_file() else name


def build_command(config: QuickstartConfig, layout: Layout, pipeline: str) -> list[str]:
    """``tide-cache build`` for one pipeline."""
    argv = [
        cli_path("tide-cache"), "build",
        "--teacher", str(layout.teacher(pipeline)),
        "--student-tokenizer", str(layout.student),
        "--sources", str(layout.chat_data),
        "--output", str(layout.cache(pipeline)),
        "--pipeline", pipeline,
        "--regime", TEACHER_REGIME,
        "--max-length", str(config.max_length),
        "--teacher-max-length", str(config.teacher_max_length),
        "--replicas", str(config.replicas),
        "--seed", str(config.seed),
        "--passes", "plain,compdemo",
        "--rows-per-shard", "4096",
        "--rows-per-row-group", "16",
        "--device", "cpu",
        "--no-progress",
    ]
    return argv


def train_command(config: QuickstartConfig, layout: Layout, run: TrainRun) -> list[str]:
    """``tide-train`` for one quickstart run."""
    argv = [
        cli_path("tide-train"),
        "--cache", str(layout.cache(run.pipeline)),
        "--student", str(layout.student),
        "--output", str(layout.run(run)),
        "--mode", run.mode,
        "--max_steps", str(config.steps),
        "--batch_size", str(config.batch_size),
        "--lr", str(config.lr),
        "--warmup_steps", str(min(10, config.steps // 10)),
        "--log_every", "1",
        "--seed", str(config.seed),
        "--mixed_precision", "no",
    ]
    if run.comp_demo:
        argv.append("--comp_demo")
    return argv


def eval_command(config: QuickstartConfig, layout: Layout, run: TrainRun) -> list[str]:
    """``tide-eval run`` of the offline task on one trained student."""
    return [
        cli_path("tide-eval"), "run",
        "--model", str(layout.run(run)),
        "--tasks", EVAL_TASK,
        "--include-path", str(layout.eval_task_dir),
        "--output", str(layout.eval(run)),
        "--limit", str(config.eval_docs),
        "--block-size", "32",
        "--device", "cpu",
        "--seed", str(config.seed),
    ]
