"""Run benchmarks through lm-eval's ``simple_evaluate`` and write one result directory per task.

Layout under the output directory::

    <task>/results.json   lm-eval's results (no samples) + ``tide_provenance`` + ``summary``
    <task>/samples.jsonl  every logged sample (lm-eval ``log_samples``), one JSON object per line
    summary.json          the table: task, metric, score, plus the average
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lm_eval import simple_evaluate
from lm_eval.tasks import TaskManager
from lm_eval.utils import handle_non_serializable

from stages.eval import TASKS_DIR
from stages.eval.lm_eval_model import TideBD3LM
from stages.eval.protocol import DEFAULT_BOOTSTRAP_ITERS, TaskSetting
from stages.eval.provenance import provenance_record
from stages.eval.think import ThinkRecord

logger = logging.getLogger(__name__)


@dataclass
class TaskScore:
    """The reported number of one task, its standard error (None without bootstrap) and the ``also`` keys."""

    task: str
    metric: str
    score: float
    stderr: float | None = None
    also: dict[str, float] | None = None


def build_task_manager(
    extra_include_paths: list[str | os.PathLike] | None = None, *, include_defaults: bool = True
) -> TaskManager:
    """lm-eval's task registry plus the project's task YAMLs (and any extra directories)."""
    paths = [str(TASKS_DIR)] + [str(Path(p)) for p in (extra_include_paths or [])]
    for path in paths:
        if not Path(path).is_dir():
            raise FileNotFoundError(f"task include path {path} is not a directory")
    return TaskManager(include_path=paths, include_defaults=include_defaults)


def pick_score(results: dict[str, Any], task: str, metric: str) -> tuple[str, float]:
    """The reported number: ``results[task][metric]`` when present, else the first numeric metric of the
    task (stderr entries excluded), so custom tasks without a configured metric still report one."""
    if task not in results:
        raise KeyError(f"lm-eval returned no results for task {task!r} (got {sorted(results)})")
    entry = results[task]
    if metric and isinstance(entry.get(metric), (int, float)):
        return metric, float(entry[metric])
    for key, value in entry.items():
        if "," in key and "_stderr" not in key and isinstance(value, (int, float)) and not isinstance(value, bool):
            if metric:
                logger.warning("task %s has no metric %r; reporting %r", task, metric, key)
            return key, float(value)
    raise KeyError(f"task {task!r} has no numeric metric in its results: {sorted(entry)}")


def run_task(
    lm: TideBD3LM,
    setting: TaskSetting,
    output_dir: str | os.PathLike,
    *,
    task_manager: TaskManager,
    apply_chat_template: bool = True,
    limit: float | None = None,
    confirm_run_unsafe_code: bool = False,
    bootstrap_iters: int = DEFAULT_BOOTSTRAP_ITERS,
) -> TaskScore:
    """Evaluate one benchmark with its protocol settings and write its result directory."""
    if setting.unsafe_code and not confirm_run_unsafe_code:
        raise ValueError(
            f"task {setting.task} executes model-generated code; pass --confirm-run-unsafe-code to run it"
        )
    lm.configure(gen_length=setting.gen_length, steps=setting.steps)
    lm.chat_template_applied = False
    lm.think_record = ThinkRecord(lm.think_block)
    results = simple_evaluate(
        model=lm,
        tasks=[setting.task],
        num_fewshot=setting.num_fewshot,
        limit=limit,
        log_samples=True,
        apply_chat_template=apply_chat_template,
        fewshot_as_multiturn=apply_chat_template,
        task_manager=task_manager,
        confirm_run_unsafe_code=confirm_run_unsafe_code,
        bootstrap_iters=bootstrap_iters,
        random_seed=lm.settings.seed,
        numpy_random_seed=lm.settings.seed,
        torch_random_seed=lm.settings.seed,
        fewshot_random_seed=lm.settings.seed,
        gen_kwargs=dict(setting.gen_kwargs) or None,
    )
    if results is None:
        raise RuntimeError(f"lm-eval returned no results for {setting.task} (not rank 0?)")
    samples = results.pop("samples", None) or {}
    metric, score = pick_score(results["results"], setting.task, setting.metric)
    entry = results["results"][setting.task]
    stderr = _stderr(entry, metric)
    also = {key: float(entry[key]) for key in setting.also if isinstance(entry.get(key), (int, float))}
    s = lm.settings
    provenance = provenance_record(
        checkpoint=lm.checkpoint,
        fingerprint=lm.fingerprint,
        task=setting.task,
        num_fewshot=setting.num_fewshot,
        block_size=s.block_size,
        steps=s.steps,
        gen_length=s.gen_length,
        remasking=s.remasking,
        temperature=s.temperature,
        cfg_scale=s.cfg_scale,
        seed=s.seed,
        chat_template_applied=bool(apply_chat_template and lm.chat_template_applied),
        think_block=lm.think_record.as_dict(),
        gen_kwargs=dict(setting.gen_kwargs),
        limit=limit,
    )
    provenance["n_shot_by_subtask"] = results.get("n-shot", {})
    task_dir = Path(output_dir) / setting.task
    task_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "summary": {"task": setting.task, "metric": metric, "score": score, "stderr": stderr, "also": also},
        "tide_provenance": provenance,
        **results,
    }
    (task_dir / "results.json").write_text(
        json.dumps(record, indent=2, default=handle_non_serializable, ensure_ascii=False) + "\n"
    )
    with (task_dir / "samples.jsonl").open("w") as handle:
        for subtask, entries in samples.items():
            for entry in entries:
                line = {"task": subtask, **entry}
                handle.write(json.dumps(line, default=handle_non_serializable, ensure_ascii=False) + "\n")
    logger.info("%s: %s = %.4f -> %s", setting.task, metric, score, task_dir)
    return TaskScore(setting.task, metric, score, stderr, also)


def _stderr(entry: dict[str, Any], metric: str) -> float | None:
    """lm-eval's ``<metric>_stderr,<filter>`` entry as a float; None when absent or not a number ("N/A")."""
    name, _, filter_name = metric.partition(",")
    value = entry.get(f"{name}_stderr,{filter_name}")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def format_table(scores: list[TaskScore]) -> str:
    """Plain-text table of (task, metric, score ± stderr) with the average of the scores as the last line;
    the ``also`` keys of a task follow on lines of their own."""
    rows = []
    for s in scores:
        error = f" ± {100 * s.stderr:.2f}" if s.stderr is not None else ""
        rows.append((s.task, s.metric, f"{100 * s.score:.2f}{error}"))
        rows += [("", f"(also) {key}", f"{100 * value:.2f}") for key, value in (s.also or {}).items()]
    rows.append(("average", "", f"{100 * average(scores):.2f}" if scores else "n/a"))
    widths = [max(len(r[i]) for r in rows + [("task", "metric", "score")]) for i in range(3)]
    lines = [
        "  ".join(h.ljust(w) for h, w in zip(("task", "metric", "score"), widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def average(scores: list[TaskScore]) -> float:
    return math.fsum(s.score for s in scores) / len(scores) if scores else float("nan")


def write_summary(scores: list[TaskScore], output_dir: str | os.PathLike) -> Path:
    path = Path(output_dir) / "summary.json"
    payload = {
        "tasks": [{"task": s.task, "metric": s.metric, "score": s.score, "stderr": s.stderr, "also": s.also or {}}
                  for s in scores],
        "average": average(scores) if scores else None,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
