"""``--eval-tasks``: lm-eval tasks on each checkpoint, through ``tide-eval run`` in a child process.

The checkpoint's student is exported next to its state (``<checkpoint>/student``, a portable
``save_pretrained`` directory) and evaluated by the real CLI, so the scores are exactly what ``tide-eval``
would report for that student; the child process keeps lm-eval's memory out of the trainer's.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

STUDENT_DIR = "student"
EVAL_DIR = "eval"


class EvalTasksError(ValueError):
    """``--eval-tasks`` cannot run (lm-eval missing) or a run of it failed."""


def require_lm_eval() -> None:
    if importlib.util.find_spec("lm_eval") is None:
        raise EvalTasksError("--eval-tasks needs lm-eval: pip install 'tide-offline[eval]'")


def eval_command(student: Path, tasks: str, output: Path, *, limit: float | None, device: str) -> list[str]:
    argv = [sys.executable, "-m", "stages.eval.cli", "run", "--model", str(student), "--tasks", tasks,
            "--output", str(output), "--device", device]
    if limit is not None:
        argv += ["--limit", str(limit)]
    return argv


def run_eval_tasks(student: Path, tasks: str, output: Path, *, limit: float | None, device: str) -> dict[str, float]:
    """Scores by task from ``tide-eval run``'s ``summary.json``; a failed run raises with its last line."""
    result = subprocess.run(eval_command(student, tasks, output, limit=limit, device=device),
                            capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise EvalTasksError(f"--eval-tasks {tasks} on {student} failed (exit {result.returncode}): {last}")
    summary = json.loads((output / "summary.json").read_text(encoding="utf-8"))
    return {str(entry["task"]): float(entry["score"]) for entry in summary.get("tasks", [])
            if entry.get("score") is not None}
