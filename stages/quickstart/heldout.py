"""The quickstart's held-out score, one function for teachers and students: greedy block-diffusion infilling
of the whole answer of each held-out letter-shift question (prompt given, answer masked, filled one token per
step), through each model's own forward and tokenizer. Also the teachers' pre-training step."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.pretrain.scores import infill_accuracy
from stages.pretrain.teacher_training import Encoded, Forward, encode, pretrain_checkpoint, student_forward
from stages.quickstart.config import BLOCK_SIZE, TEACHER_REGIME, Layout, QuickstartConfig
from tide.testing.chat_data import HELD_OUT_START, letter_shift_messages, read_chat_jsonl


@dataclass
class HeldoutScore:
    """Exact match of whole answers and token accuracy over the held-out questions."""

    exact: float
    token: float
    questions: int


@dataclass
class TeacherSummary:
    """One pre-trained teacher: where it is, its training curve's ends and its held-out score."""

    pipeline: str
    path: str
    steps: int
    first_loss: float
    last_loss: float
    seconds: float
    score: HeldoutScore


def heldout_samples(tokenizer, count: int, max_length: int) -> list[Encoded]:
    """The held-out questions as chats rendered with ``tokenizer``'s template (answer included: the gold)."""
    chats = letter_shift_messages(count, start=HELD_OUT_START)
    samples, skipped = encode(chats, tokenizer, block_size=BLOCK_SIZE, max_length=max_length, source="heldout",
                              require_complete=True)
    if skipped:
        raise ValueError(f"held-out questions do not fit {max_length} tokens: {skipped}")
    return samples


def answer_spans(samples: list[Encoded]) -> list[tuple[int, int]]:
    """Each sample's answer: its first to last response token (the answer and the end of the turn)."""
    spans = []
    for sample in samples:
        positions = np.flatnonzero(sample.response)
        spans.append((int(positions[0]), int(positions[-1]) + 1))
    return spans


def heldout_score(model, forward: Forward, tokenizer, *, count: int, max_length: int, mask_token_id: int,
                  ) -> HeldoutScore:
    """Greedy infilling of every held-out answer; see the module docstring."""
    samples = heldout_samples(tokenizer, count, max_length)
    exact, token, n = infill_accuracy(model, forward, samples, answer_spans(samples), mask_token_id=mask_token_id,
                                      pad_id=tokenizer.pad_token_id, block_size=BLOCK_SIZE)
    return HeldoutScore(exact=exact, token=token, questions=n)


def student_score(path: Path, config: QuickstartConfig) -> HeldoutScore:
    """The held-out score of the student saved in ``path`` (a ``tide-train`` output directory)."""
    import torch
    from transformers import AutoTokenizer

    from tide.models.student import load_student

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = load_student(path, dtype=torch.float32).eval()
    return heldout_score(model, student_forward(model, BLOCK_SIZE), tokenizer, count=config.heldout,
                         max_length=config.max_length, mask_token_id=int(tokenizer.mask_token_id))


def pretrain_teacher(pipeline: str, layout: Layout, config: QuickstartConfig) -> TeacherSummary:
    """Pre-train one teacher on the pre-training chats for ``teacher_steps`` steps, then score it."""
    started = time.perf_counter()
    teacher = pretrain_checkpoint(
        layout.teacher_init(pipeline), layout.teacher(pipeline), read_chat_jsonl(layout.pretrain_data),
        regime=TEACHER_REGIME, block_size=BLOCK_SIZE, max_length=config.teacher_max_length,
        steps=config.teacher_steps, batch_size=config.batch_size, lr=config.teacher_lr, seed=config.seed,
    )
    seconds = time.perf_counter() - started
    score = heldout_score(teacher.model, teacher.forward, teacher.tokenizer, count=config.heldout,
                          max_length=config.teacher_max_length, mask_token_id=teacher.mask_token_id)
    return TeacherSummary(pipeline=pipeline, path=str(teacher.path), steps=config.teacher_steps,
                          first_loss=teacher.log[0]["loss"], last_loss=teacher.log[-1]["loss"], seconds=seconds,
                          score=score)


def pretrain_teachers(layout: Layout, config: QuickstartConfig) -> list[TeacherSummary]:
    """Pre-train and score both teachers, the shared one first."""
    teachers = []
    for pipeline in ("shared", "cross"):
        teacher = pretrain_teacher(pipeline, layout, config)
        print(f"  {pipeline} teacher: loss {teacher.first_loss:.3f} -> {teacher.last_loss:.3f} in "
              f"{teacher.seconds:.0f} s; held-out exact match {teacher.score.exact:.3f} (token accuracy "
              f"{teacher.score.token:.3f})", flush=True)
        teachers.append(teacher)
    return teachers
