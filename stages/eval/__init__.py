"""Evaluation: the lm-eval model ``tide_bd3lm``, the project's task YAMLs, and the ``tide-eval`` command.

Importing ``stages.eval.lm_eval_model`` registers ``tide_bd3lm`` with lm-eval."""

from pathlib import Path

TASKS_DIR = Path(__file__).parent / "tasks"
