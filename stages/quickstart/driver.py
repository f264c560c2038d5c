"""The quickstart's steps in order, its argument parser and ``main`` (run by ``python -m stages.quickstart``)."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

from stages.quickstart.cli_runner import run_cli
from stages.quickstart.commands import build_command, cli_path, eval_command, train_command
from stages.quickstart.config import TRAIN_RUNS, Layout, QuickstartConfig
from stages.quickstart.heldout import pretrain_teachers, student_score
from stages.quickstart.inputs import build_models, write_chat_data, write_eval_task
from stages.quickstart.results import (
    RunSummary,
    Summary,
    cache_facts,
    format_summary,
    read_eval_score,
    read_losses,
)

MARKER = ".tide-quickstart"
# What a quickstart run writes under its output directory; a new run replaces all of it.
GENERATED = ("models", "data", "caches", "runs", "eval", "logs", "summary.json")


def prepare_output(root: Path) -> None:
    """Make ``root`` ready for a fresh run: create it (with a marker file), or clear what an earlier
    quickstart wrote there. A non-empty directory without the marker is refused, never cleared."""
    if root.exists():
        if not root.is_dir():
            raise ValueError(f"--output {root} exists and is not a directory")
        if any(root.iterdir()) and not (root / MARKER).is_file():
            raise ValueError(
                f"--output {root} is a non-empty directory that no quickstart wrote (no {MARKER} file); "
                "choose another --output"
            )
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("written by python -m stages.quickstart\n", encoding="utf-8")
    for name in GENERATED:
        path = root / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def run_quickstart(config: QuickstartConfig) -> Summary:
    """Run every step; returns the summary (also written to ``summary.json``)."""
    config.check()
    started = time.perf_counter()
    layout = Layout(Path(config.output))
    prepare_output(layout.root)

    stage_seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        stage_seconds[name] = now - clock
        clock = now

    print("[1/7] chat data and evaluation task", flush=True)
    rows = write_chat_data(layout, config)
    write_eval_task(layout.eval_task_dir, min(config.eval_docs, config.heldout))

    print("[2/7] tokenizers (BPE trained on the chats) and small models", flush=True)
    models = build_models(layout, config)
    lap("data, tokenizers, models")

    print(f"[3/7] teacher pre-training ({config.teacher_steps} steps each) and held-out scores", flush=True)
    teachers = pretrain_teachers(layout, config)
    lap("teacher pre-training")

    print("[4/7] caches (tide-cache build, tide-cache inspect)", flush=True)
    caches = {}
    for pipeline in ("cross", "shared"):
        run_cli(build_command(config, layout, pipeline), layout.logs / f"build-{pipeline}.log")
        run_cli([cli_path("tide-cache"), "inspect", str(layout.cache(pipeline)), "--rows", "1"],
                layout.logs / f"inspect-{pipeline}.log", echo=True)
        caches[pipeline] = cache_facts(layout.cache(pipeline))
    lap("caches")

    print("[5/7] training (tide-train), every student from the same initial weights", flush=True)
    runs = []
    for run in TRAIN_RUNS:
        run_cli(train_command(config, layout, run), layout.logs / f"train-{run.name}.log")
        metrics = layout.run(run) / "logs" / "metrics.jsonl"
        steps, first, last = read_losses(metrics)
        curve = layout.run(run) / "logs" / "loss_curve.png"
        runs.append(RunSummary(
            name=run.name, pipeline=run.pipeline, mode=run.mode + (" --comp_demo" if run.comp_demo else ""),
            role=run.role, student=str(layout.run(run)), steps=steps, first_loss=first, last_loss=last,
            loss_curve=str(curve) if curve.is_file() else None, metrics=str(metrics),
        ))
    lap("student training")

    print("[6/7] held-out scores of the students", flush=True)
    for run, entry in zip(TRAIN_RUNS, runs, strict=True):
        entry.score = student_score(layout.run(run), config)
    lap("student scores")

    if config.evaluate:
        print("[7/7] evaluation (tide-eval run, offline task)", flush=True)
        for run, entry in zip(TRAIN_RUNS, runs, strict=True):
            if run.role != "native" and not config.eval_baselines:
                continue
            run_cli(eval_command(config, layout, run), layout.logs / f"eval-{run.name}.log")
            entry.eval_metric, entry.eval_score = read_eval_score(layout.eval(run))
            entry.eval_dir = str(layout.eval(run))
        lap("tide-eval")
    else:
        print("[7/7] evaluation skipped (--no-eval)", flush=True)

    summary = Summary(
        output=str(layout.root),
        seconds=time.perf_counter() - started,
        stage_seconds=stage_seconds,
        models=models,
        data={"pretrain": str(layout.pretrain_data), "chat": str(layout.chat_data), "rows": rows,
              "heldout": config.heldout, "humaneval": config.humaneval, "eval_task": str(layout.eval_task_dir)},
        caches=caches,
        teachers=teachers,
        runs=runs,
        shard_example=caches["shared"]["first_shard"],
    )
    layout.summary.write_text(json.dumps(asdict(summary), indent=2) + "\n", encoding="utf-8")
    return summary


def build_parser() -> argparse.ArgumentParser:
    defaults = QuickstartConfig()
    parser = argparse.ArgumentParser(
        prog="python -m stages.quickstart",
        description="Pre-train two small teachers on a toy task, then run both TIDE pipelines end to end on them (no downloads).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--output", type=Path, default=defaults.output, help="output directory")
    parser.add_argument("--task-train", type=int, default=defaults.task_train,
                        help="letter-shift chats the teachers pre-train on")
    parser.add_argument("--cache-rows", type=int, default=defaults.cache_rows,
                        help="of those, how many the caches hold (before replicas)")
    parser.add_argument("--heldout", type=int, default=defaults.heldout, help="held-out questions every score uses")
    parser.add_argument("--humaneval", type=int, default=defaults.humaneval,
                        help="HumanEval chats added to the pre-training and cache data")
    parser.add_argument("--eval-docs", type=int, default=defaults.eval_docs,
                        help="held-out questions tide-eval generates answers for")
    parser.add_argument("--vocab", type=int, default=defaults.vocab, help="ids of the student's BPE tokenizer")
    parser.add_argument("--max-length", type=int, default=defaults.max_length, help="student max length")
    parser.add_argument("--teacher-max-length", type=int, default=defaults.teacher_max_length,
                        help="teacher max length")
    parser.add_argument("--replicas", type=int, default=defaults.replicas, help="noise replicas per sample")
    parser.add_argument("--teacher-steps", type=int, default=defaults.teacher_steps,
                        help="pre-training steps per teacher")
    parser.add_argument("--teacher-lr", type=float, default=defaults.teacher_lr, help="teacher learning rate")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps per student run")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="rows per step (teachers too)")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="student learning rate")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of models, noise and training")
    parser.add_argument("--eval", dest="evaluate", action=argparse.BooleanOptionalAction, default=True,
                        help="run the short evaluation")
    parser.add_argument("--eval-baselines", action="store_true",
                        help="evaluate the baseline students too (default: native modes only)")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = vars(build_parser().parse_args(argv))
    config = QuickstartConfig(**args)
    try:
        summary = run_quickstart(config)
    except (RuntimeError, ValueError, FileNotFoundError, KeyError) as exc:
        print(f"quickstart: error: {exc}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    return 0
