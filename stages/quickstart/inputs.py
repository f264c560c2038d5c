"""The quickstart's inputs, all generated locally: the three tiny checkpoints, the chat data and the held-out
evaluation task. Models and data come from :mod:`tide.testing`; the task's lm-eval config is the package
file ``eval_task_template.yaml`` with the task name, the data file and the generation length filled in."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from string import Template

from stages.quickstart.config import EVAL_TASK, Layout
from tide.testing.chat_data import arithmetic_docs, humaneval_chat, write_chat_jsonl

logger = logging.getLogger("tide.quickstart")

EVAL_TASK_TEMPLATE = Path(__file__).with_name("eval_task_template.yaml")


def write_chat_data(path: Path, humaneval: int, synthetic: int) -> int:
    """Write HumanEval chat pairs (the first ``humaneval``) plus ``synthetic`` generated pairs as JSONL rows
    ``{"messages": [...]}``; returns the number of rows."""
    conversations = humaneval_chat(humaneval, synthetic)
    write_chat_jsonl(path, conversations)
    return len(conversations)


def eval_task_yaml(data_file: Path, max_gen_toks: int = 32) -> str:
    """lm-eval task config for :data:`EVAL_TASK` from the package template: local JSONL (``data_file``, as an
    absolute path), greedy generation, exact match of the last number of the answer."""
    template = Template(EVAL_TASK_TEMPLATE.read_text(encoding="utf-8"))
    return template.substitute(
        task=EVAL_TASK, data_file=json.dumps(str(data_file.resolve())), max_gen_toks=max_gen_toks
    )


def write_eval_task(directory: Path, count: int) -> Path:
    """Write the evaluation task (YAML + JSONL) into ``directory``; returns the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    data_file = directory / f"{EVAL_TASK}.jsonl"
    with data_file.open("w", encoding="utf-8") as handle:
        for doc in arithmetic_docs(count):
            handle.write(json.dumps(doc) + "\n")
    (directory / f"{EVAL_TASK}.yaml").write_text(eval_task_yaml(data_file), encoding="utf-8")
    return directory


# ----------------------------------------------------------------------------------------------- models


def build_models(layout: Layout, seed: int) -> dict[str, str]:
    """The three tiny checkpoints (each with its tokenizer), built once and reused on a re-run."""
    from tide.testing.tiny_models import build_tiny_model  # torch loads only when models are built

    kinds = {
        "student": (layout.student, "student"),
        "cross teacher (LLaDA2-MoE, Llama-3 tokenizer)": (layout.teacher("cross"), "llada2"),
        "shared teacher (WeDLM / Qwen3, Qwen vocabulary)": (layout.teacher("shared"), "wedlm"),
    }
    out = {}
    for label, (path, kind) in kinds.items():
        if not (path / "config.json").is_file() or not (path / "tokenizer_config.json").is_file():
            logger.info("building the tiny %s in %s", label, path)
            build_tiny_model(kind, path, seed=seed)
        out[label] = str(path)
    return out
