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
# What a quickstart run writes under its output directory; a new run replaces these (models are reused).
GENERATED = ("data", "caches", "runs", "eval", "logs", "summary.json")


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

    print("[1/5] tiny models", flush=True)
    models = build_models(layout, config.seed)

    print("[2/5] chat data and evaluation task", flush=True)
    rows = write_chat_data(layout.chat_data, config.humaneval, config.synthetic)
    write_eval_task(layout.eval_task_dir, config.eval_docs)

    print("[3/5] caches (tide-cache build, tide-cache inspect)", flush=True)
    caches = {}
    for pipeline in ("cross", "shared"):
        run_cli(build_command(config, layout, pipeline), layout.logs / f"build-{pipeline}.log")
        run_cli([cli_path("tide-cache"), "inspect", str(layout.cache(pipeline)), "--rows", "1"],
                layout.logs / f"inspect-{pipeline}.log", echo=True)
        caches[pipeline] = cache_facts(layout.cache(pipeline))

    print("[4/5] training (tide-train)", flush=True)
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

    if config.evaluate:
        print("[5/5] evaluation (tide-eval run, offline task)", flush=True)
        for run, entry in zip(TRAIN_RUNS, runs, strict=True):
            if run.role != "native" and not config.eval_baselines:
                continue
            run_cli(eval_command(config, layout, run), layout.logs / f"eval-{run.name}.log")
            entry.eval_metric, entry.eval_score = read_eval_score(layout.eval(run))
            entry.eval_dir = str(layout.eval(run))
    else:
        print("[5/5] evaluation skipped (--no-eval)", flush=True)

    summary = Summary(
        output=str(layout.root),
        seconds=time.perf_counter() - started,
        models=models,
        data={"chat": str(layout.chat_data), "rows": rows, "eval_task": str(layout.eval_task_dir)},
        caches=caches,
        runs=runs,
        shard_example=caches["shared"]["first_shard"],
    )
    layout.summary.write_text(json.dumps(asdict(summary), indent=2) + "\n", encoding="utf-8")
    return summary


def build_parser() -> argparse.ArgumentParser:
    defaults = QuickstartConfig()
    parser = argparse.ArgumentParser(
        prog="python -m stages.quickstart",
        description="Run both TIDE pipelines end to end on tiny local models (no downloads).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--output", type=Path, default=defaults.output, help="output directory")
    parser.add_argument("--humaneval", type=int, default=defaults.humaneval, help="HumanEval conversations")
    parser.add_argument("--synthetic", type=int, default=defaults.synthetic, help="generated conversations")
    parser.add_argument("--eval-docs", type=int, default=defaults.eval_docs, help="evaluation questions")
    parser.add_argument("--max-length", type=int, default=defaults.max_length, help="student max length")
    parser.add_argument("--teacher-max-length", type=int, default=defaults.teacher_max_length,
                        help="teacher max length")
    parser.add_argument("--replicas", type=int, default=defaults.replicas, help="noise replicas per sample")
    parser.add_argument("--k", type=int, default=defaults.k, help="top-k of the shared cache")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps per training run")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="rows per step")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="learning rate")
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
