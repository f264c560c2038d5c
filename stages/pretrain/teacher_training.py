"""Teacher pre-training with the block-diffusion objective, for demos and the replication: the teachers the
quickstart and ``scripts/replicate.sh`` distil are trained here first, so their caches hold real knowledge.

Everything goes through the project's pieces: samples are tokenized by the build stage's
:func:`stages.cache_build.preparation.prepare_sample`; noise comes from :mod:`tide.noise`; the student forward is
:func:`tide.models.student.bd3lm_hidden_states`; a teacher is run in exactly the layout the build stage
queries it with (:func:`tide.models.teacher.build_layout`); the loss is the CE term of the training
objective (:func:`tide.objective.compute_objective`).

A "forward" here is ``fn(noised (B, L), clean (B, L), valid (B, L) bool) -> hidden (B, L, H)`` for the x_t
positions; logits come from the model's output embeddings at the positions needed.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from stages.cache_build.preparation import PreparationSettings, prepare_sample
from stages.cache_build.skips import SkipCounter, SkipSample
from stages.cache_build.sources import RawSample
from tide import noise
from tide.bd3lm import noise_input_ids
from tide.models.student import bd3lm_hidden_states
from tide.models.teacher_layouts import build_layout, layout_hidden_states
from tide.objective import MaskedPositions, Objective, compute_objective

logger = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
CE_OBJECTIVE = Objective(mode="ce")  # teacher pre-training: the BD3LM CE term of the training objective


@dataclass
class Encoded:
    """One tokenized sample: ``ids`` int64 (L,) EOS-padded to whole blocks, ``maskable`` bool (L,),
    ``response`` bool (L,) = maskable and not block padding, ``key`` the noise key, ``sample_id``."""

    ids: np.ndarray
    maskable: np.ndarray
    response: np.ndarray
    key: int
    sample_id: str


def encode(
    conversations: Sequence[list[dict[str, str]]],
    tokenizer,
    *,
    block_size: int,
    max_length: int,
    source: str,
    require_complete: bool = False,
) -> tuple[list[Encoded], dict[str, int]]:
    """Tokenize conversations with ``tokenizer``'s own chat template (the build stage's preparation).

    ``require_complete`` drops samples the length limit would truncate. Returns (samples, skip counts).
    """
    skips = SkipCounter()
    settings = PreparationSettings(pipeline="shared", block_size=block_size, max_length=max_length,
                                   teacher_max_length=10 * max_length)
    out = []
    for index, messages in enumerate(conversations):
        raw = RawSample(f"{source}:{index}", messages)
        try:
            prepared = prepare_sample(raw, tokenizer, tokenizer, settings)
        except SkipSample as skip:
            skips.add(skip.reason, raw.sample_id)
            continue
        if require_complete and prepared.teacher_input_ids.shape[0] > max_length:
            skips.add("too_long", raw.sample_id)
            continue
        ids = prepared.input_ids.astype(np.int64)
        response = prepared.maskable.copy()
        if prepared.num_padding:
            response[-prepared.num_padding:] = False
        out.append(Encoded(ids, prepared.maskable.copy(), response, prepared.sample_key, raw.sample_id))
    return out, skips.as_dict()


def collate(samples: Sequence[Encoded], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids (B, L), maskable (B, L), response (B, L), valid (B, L)), right-padded with ``pad_id``."""
    width = max(s.ids.shape[0] for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    maskable = torch.zeros((len(samples), width), dtype=torch.bool)
    response = torch.zeros_like(maskable)
    valid = torch.zeros_like(maskable)
    for row, s in enumerate(samples):
        n = s.ids.shape[0]
        ids[row, :n] = torch.from_numpy(s.ids)
        maskable[row, :n] = torch.from_numpy(s.maskable)
        response[row, :n] = torch.from_numpy(s.response)
        valid[row, :n] = True
    return ids, maskable, response, valid


def draw_noise(samples: Sequence[Encoded], width: int, *, seed: int, replica: int, t: float | None = None,
               field: str = "maskable") -> tuple[torch.Tensor, torch.Tensor]:
    """(t (B,), masked (B, width)) from the counter-based generator; a fixed ``t`` overrides the draw."""
    ts, masks = [], []
    for s in samples:
        tt = noise.draw_timestep(seed, s.key, replica) if t is None else float(t)
        m = np.zeros(width, dtype=bool)
        m[: s.ids.shape[0]] = noise.draw_mask(seed, s.key, replica, getattr(s, field), tt)
        ts.append(tt)
        masks.append(m)
    return torch.tensor(ts, dtype=torch.float32), torch.from_numpy(np.stack(masks))



def student_forward(model: nn.Module, block_size: int) -> Forward:
    """The BD3LM student forward (x_t ⊕ x0, block-diffusion mask)."""

    def fn(noised, clean, valid):
        mask = None if bool(valid.all()) else valid
        return bd3lm_hidden_states(model, noised, clean, block_size=block_size, attention_mask=mask)

    return fn


def teacher_forward(model: nn.Module, family: str, regime: str, block_size: int, mask_token_id: int) -> Forward:
    """The teacher in the layout the build stage queries it with (``TeacherRunner``'s layouts)."""

    def fn(noised, clean, valid):
        layout = build_layout(family, regime, noised, clean, valid, block_size=block_size, mask_token_id=mask_token_id)
        return layout_hidden_states(model, layout)

    return fn



def pretrain(
    model: nn.Module,
    forward: Forward,
    samples: list[Encoded],
    *,
    mask_token_id: int,
    pad_id: int,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    log_every: int = 25,
) -> list[dict[str, float]]:
    """Train ``model`` with the BD3LM CE objective for ``steps`` AdamW steps (linear warm-up over 5 %,
    cosine decay); batches walk a seeded permutation of ``samples``, replica = epoch. Returns the log."""
    if steps <= 0 or batch_size <= 0:
        raise ValueError(f"steps ({steps}) and batch_size ({batch_size}) must be positive")
    if not samples:
        raise ValueError("no training samples")
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 20)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    rng = np.random.default_rng(seed)
    order, cursor, epoch = rng.permutation(len(samples)), 0, 0
    head = model.get_output_embeddings()
    log, start = [], time.perf_counter()
    for step in range(steps):
        if cursor + batch_size > len(order):
            order, cursor, epoch = rng.permutation(len(samples)), 0, epoch + 1
        batch = [samples[i] for i in order[cursor : cursor + batch_size]]
        cursor += batch_size
        ids, maskable, _, valid = collate(batch, pad_id)
        t, masked = draw_noise(batch, ids.shape[1], seed=seed, replica=epoch)
        noised = noise_input_ids(ids, masked, mask_token_id)
        hidden = forward(noised, ids, valid)
        positions = MaskedPositions(hidden=hidden[masked], gold_ids=ids[masked], t=t[:, None].expand_as(ids)[masked],
                                    num_maskable=int(maskable.sum()))
        loss = compute_objective(CE_OBJECTIVE, head, positions, None).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if step % log_every == 0 or step == steps - 1:
            log.append({"step": step, "loss": float(loss.detach()), "elapsed_s": time.perf_counter() - start})
            logger.info("pretrain step %d/%d loss %.4f", step, steps, float(loss.detach()))
    model.eval()
    return log


@dataclass
class PretrainedTeacher:
    """A teacher pre-trained by :func:`pretrain_checkpoint`, reloaded from its saved directory."""

    model: nn.Module
    tokenizer: object
    forward: Forward
    mask_token_id: int
    log: list[dict[str, float]]
    train_samples: int
    path: Path


def pretrain_checkpoint(
    init_dir: str | os.PathLike,
    final_dir: str | os.PathLike,
    conversations: Sequence[list[dict[str, str]]],
    *,
    regime: str,
    block_size: int,
    max_length: int,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
) -> PretrainedTeacher:
    """Pre-train the teacher saved in ``init_dir`` on ``conversations`` (rendered with its own tokenizer's
    chat template) in the layout ``regime`` queries it with, and save it to ``final_dir``.

    The saved ``config.json`` is the initial directory's (release-style model type, mask id, shared
    vocabulary), so the result loads like a released teacher; the returned model is loaded back from it."""
    from transformers import AutoTokenizer

    from tide.models.teacher import TeacherRunner, load_teacher

    init_dir, final_dir = Path(init_dir), Path(final_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(init_dir), trust_remote_code=False)  # never run auto_map code
    model = load_teacher(init_dir, dtype=torch.float32)
    runner = TeacherRunner(model, regime=regime, mask_token_id=_mask_id(model, tokenizer), block_size=block_size)
    samples, _ = encode(conversations, tokenizer, block_size=block_size, max_length=max_length, source="pretrain")
    forward = teacher_forward(model, runner.family, regime, block_size, runner.mask_token_id)
    log = pretrain(model, forward, samples, mask_token_id=runner.mask_token_id, pad_id=tokenizer.pad_token_id,
                   steps=steps, batch_size=batch_size, lr=lr, seed=seed)
    model.save_pretrained(str(final_dir))
    tokenizer.save_pretrained(str(final_dir))
    (final_dir / "config.json").write_text((init_dir / "config.json").read_text(encoding="utf-8"), encoding="utf-8")
    model = load_teacher(final_dir, dtype=torch.float32)
    forward = teacher_forward(model, runner.family, regime, block_size, runner.mask_token_id)
    return PretrainedTeacher(model, tokenizer, forward, runner.mask_token_id, log, len(samples), final_dir)


def _mask_id(model: nn.Module, tokenizer) -> int:
    """The teacher's mask id: its config's (WeDLM), else its tokenizer's (LLaDA2)."""
    mask = getattr(model.config, "mask_token_id", None)
    mask = tokenizer.mask_token_id if mask is None else mask
    if mask is None:
        raise ValueError("the teacher has no mask token id in its config or its tokenizer")
    return int(mask)
