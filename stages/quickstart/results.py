"""What the quickstart reports: losses, held-out and evaluation scores and cache facts read back from the
files the CLIs wrote, and the closing summary (printed, and written to ``summary.json``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages.quickstart.config import EVAL_TASK
from stages.quickstart.heldout import HeldoutScore, TeacherSummary


@dataclass
class RunSummary:
    """What one training run produced, for the final table."""

    name: str
    pipeline: str
    mode: str
    role: str
    student: str
    steps: int
    first_loss: float | None
    last_loss: float | None
    loss_curve: str | None
    metrics: str
    score: HeldoutScore | None = None
    eval_score: float | None = None
    eval_metric: str | None = None
    eval_dir: str | None = None


@dataclass
class Summary:
    """The whole run: paths, caches, training runs, elapsed seconds."""

    output: str
    seconds: float
    stage_seconds: dict[str, float]
    models: dict[str, str]
    data: dict[str, Any]
    caches: dict[str, dict[str, Any]]
    teachers: list[TeacherSummary] = field(default_factory=list)
    runs: list[RunSummary] = field(default_factory=list)
    shard_example: str | None = None


def read_losses(metrics_file: Path) -> tuple[int, float | None, float | None]:
    """(last logged step, first ``loss``, last ``loss``) of a ``metrics.jsonl`` (None where absent)."""
    if not metrics_file.is_file():
        raise FileNotFoundError(f"{metrics_file}: the training run wrote no metrics file")
    records = [json.loads(line) for line in metrics_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    losses = [float(r["loss"]) for r in records if isinstance(r.get("loss"), (int, float))]
    last_step = max((int(r.get("step", 0)) for r in records), default=0)
    return last_step, (losses[0] if losses else None), (losses[-1] if losses else None)


def read_eval_score(eval_dir: Path) -> tuple[str | None, float | None]:
    """(metric, score) of the quickstart task from a ``tide-eval run`` output directory's ``summary.json``."""
    path = eval_dir / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: tide-eval wrote no summary")
    summary = json.loads(path.read_text(encoding="utf-8"))
    for entry in summary.get("tasks", []):
        if entry.get("task") == EVAL_TASK:
            return entry.get("metric"), float(entry["score"])
    raise KeyError(f"{path}: no result for task {EVAL_TASK!r}")


def cache_facts(cache: Path) -> dict[str, Any]:
    """Rows, bytes, target items and the first shard of a built cache, from its manifest."""
    manifest = json.loads((cache / "manifest.json").read_text(encoding="utf-8"))
    shards = manifest["shards"]
    return {
        "path": str(cache),
        "pipeline": manifest["pipeline"],
        "rows": sum(s["rows"] for s in shards),
        "bytes": sum(s["bytes"] for s in shards),
        "target_items": sum(s["num_targets"] for s in shards),
        "passes": manifest["targets"]["passes"],
        "first_shard": str(cache / shards[0]["file"]) if shards else None,
    }


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def _score(score: HeldoutScore | None) -> str:
    return "-" if score is None else f"{score.exact:.3f} ({score.token:.3f})"


def format_summary(summary: Summary) -> str:
    """The closing text: where everything is, a table of the runs, and how to open a shard."""
    root = summary.output
    lines = [
        "",
        f"== TIDE quickstart finished in {summary.seconds:.0f} s; everything is under {root}/ ==",
        "time         " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in summary.stage_seconds.items()),
        "",
        *(f"model        {path}  ({label})" for label, path in summary.models.items()),
        f"data         {summary.data['pretrain']} (teacher pre-training, {summary.data['rows']['pretrain']} chats) and "
        f"{summary.data['chat']} (the caches', {summary.data['rows']['cache']} chats): letter-shift questions"
        f"{' and HumanEval problems' if summary.data.get('humaneval') else ''}",
        f"eval task    {summary.data['eval_task']}",
    ]
    for pipeline, facts in summary.caches.items():
        lines.append(
            f"cache        {facts['path']}  ({pipeline}: {facts['rows']} rows, {facts['target_items']} target items, "
            f"{facts['bytes']:,} bytes, passes {'+'.join(facts['passes'])})"
        )
    for run in summary.runs:
        lines.append(f"checkpoint   {run.student}  (trained student; resumable state in {run.student}/checkpoints)")
    for run in summary.runs:
        lines.append(f"loss curve   {run.loss_curve or '-'}  (metrics: {run.metrics})")
    for run in summary.runs:
        if run.eval_dir:
            lines.append(f"results      {run.eval_dir}/summary.json")
    lines += ["", f"held-out task: {summary.data['heldout']} letter-shift questions none of the models trained on; "
              "score = exact match of the whole answer under greedy block-diffusion infilling (token accuracy "
              "in brackets); tide-eval = exact match of generated answers (lm-eval).", "",
              f"{'model':<28} {'role':<9} {'steps':>5} {'first loss':>11} {'last loss':>10} {'held-out':>16} "
              f"{'tide-eval':>9}"]
    for teacher in summary.teachers:
        lines.append(
            f"{teacher.pipeline + ' teacher':<28} {'teacher':<9} {teacher.steps:>5} {_fmt(teacher.first_loss):>11} "
            f"{_fmt(teacher.last_loss):>10} {_score(teacher.score):>16} {'-':>9}"
        )
    for run in summary.runs:
        lines.append(
            f"{run.name:<28} {run.role:<9} {run.steps:>5} {_fmt(run.first_loss):>11} {_fmt(run.last_loss):>10} "
            f"{_score(run.score):>16} {_fmt(run.eval_score, '.3f'):>9}"
        )
    lines.append("(losses: the teachers' BD3LM CE; each student's total training loss, CE + its distillation term)")
    if summary.shard_example:
        lines += [
            "",
            "open a shard with pandas:",
            f"  .venv/bin/python -c \"import pandas as pd; df = pd.read_parquet('{summary.shard_example}'); "
            "print(df.dtypes); print(df.head())\"",
        ]
    lines.append(f"summary      {root}/summary.json")
    return "\n".join(lines)
