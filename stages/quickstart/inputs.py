"""The quickstart's inputs, all generated locally: the chat data, the held-out evaluation task, two BPE
tokenizers trained on the chat data and three small models. Data, tokenizers and model builders come from
:mod:`tide.testing`; the task's lm-eval config is the package file ``eval_task_template.yaml`` with the task
name, the data file and the generation length filled in.

The tokenizers are trained here (a few hundred ids) rather than taken from the real checkpoints (150k ids):
with the real vocabularies the LM heads dominate every step and the teachers cannot learn anything in the
quickstart's minutes. Two different BPEs (ChatML and Llama-3 templates) keep pipeline A's cross-tokenizer
chunk alignment real.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from string import Template

from stages.quickstart.config import EVAL_TASK, Layout, QuickstartConfig
from tide.testing.chat_data import (
    HELD_OUT_START,
    humaneval_messages,
    letter_shift_docs,
    letter_shift_messages,
    write_chat_jsonl,
)

logger = logging.getLogger("tide.quickstart")

EVAL_TASK_TEMPLATE = Path(__file__).with_name("eval_task_template.yaml")
# The cross teacher's vocabulary is larger than the student's, so their token boundaries differ.
LARGE_VOCAB_FACTOR = 1.5
STUDENT_SIZE = (64, 2)  # hidden size, layers
TEACHER_SIZE = (128, 2)
CROSS_EXPERTS = 4


def write_chat_data(layout: Layout, config: QuickstartConfig) -> dict[str, int]:
    """Write the teachers' pre-training chats (``task_train`` letter-shift pairs, then ``humaneval`` HumanEval
    pairs) and the cache's chats (the first ``cache_rows`` of the letter-shift pairs, then the same HumanEval
    pairs) as JSONL rows ``{"messages": [...]}``; returns the row counts."""
    task = letter_shift_messages(config.task_train)
    humaneval = humaneval_messages(config.humaneval) if config.humaneval else []
    write_chat_jsonl(layout.pretrain_data, task + humaneval)
    write_chat_jsonl(layout.chat_data, task[: config.cache_rows] + humaneval)
    return {"pretrain": len(task) + len(humaneval), "cache": config.cache_rows + len(humaneval)}


def heldout_docs(count: int) -> list[dict[str, str]]:
    """The held-out letter-shift questions every score uses (none is among the training chats)."""
    return letter_shift_docs(count, start=HELD_OUT_START)


def eval_task_yaml(data_file: Path, max_gen_toks: int = 16) -> str:
    """lm-eval task config for :data:`EVAL_TASK` from the package template: local JSONL (``data_file``, as an
    absolute path), greedy generation, exact match of the first five-letter answer in the response."""
    template = Template(EVAL_TASK_TEMPLATE.read_text(encoding="utf-8"))
    return template.substitute(
        task=EVAL_TASK, data_file=json.dumps(str(data_file.resolve())), max_gen_toks=max_gen_toks
    )


def write_eval_task(directory: Path, count: int) -> Path:
    """Write the evaluation task (YAML + JSONL of the first ``count`` held-out questions) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    data_file = directory / f"{EVAL_TASK}.jsonl"
    with data_file.open("w", encoding="utf-8") as handle:
        for doc in heldout_docs(count):
            handle.write(json.dumps(doc) + "\n")
    (directory / f"{EVAL_TASK}.yaml").write_text(eval_task_yaml(data_file), encoding="utf-8")
    return directory


# ----------------------------------------------------------------------------------------------- models


def _texts(path: Path) -> list[str]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [message["content"] for row in rows for message in row["messages"]]


def build_models(layout: Layout, config: QuickstartConfig) -> dict[str, str]:
    """Tokenizers trained on the pre-training chats, then the student and the two teachers' initial weights
    (seeded; the teachers are pre-trained afterwards), all under ``layout.models``, which the driver clears
    first. Returns {label: directory}."""
    from tide.testing.bpe_tokenizers import shared_teacher_tokenizer, shared_vocab_size, train_bpe_tokenizer
    from tide.testing.model_sizes import ModelSize, build_model

    texts = _texts(layout.pretrain_data)
    small = train_bpe_tokenizer(texts, layout.tokenizer("small"), vocab_size=config.vocab, kind="chatml")
    shared = shared_teacher_tokenizer(layout.tokenizer("small"), layout.tokenizer("shared"))
    large = train_bpe_tokenizer(texts, layout.tokenizer("large"), vocab_size=int(config.vocab * LARGE_VOCAB_FACTOR),
                                kind="llama3")
    student, teacher = ModelSize(*STUDENT_SIZE), ModelSize(*TEACHER_SIZE)
    build_model("student", layout.student, small, student, seed=config.seed)
    build_model("wedlm", layout.teacher_init("shared"), shared, teacher, seed=config.seed,
                mask_token_id=int(shared.mask_token_id), shared_vocab_size=shared_vocab_size(shared))
    build_model("llada2", layout.teacher_init("cross"), large, teacher, seed=config.seed, num_experts=CROSS_EXPERTS)
    return {
        f"student (a2d-qwen3, {len(small)}-id BPE)": str(layout.student),
        f"shared teacher (WeDLM layout, same vocabulary, another template; hidden {TEACHER_SIZE[0]})":
            str(layout.teacher("shared")),
        f"cross teacher (LLaDA2-MoE, {len(large)}-id Llama-3-style BPE, {CROSS_EXPERTS} experts)":
            str(layout.teacher("cross")),
    }
