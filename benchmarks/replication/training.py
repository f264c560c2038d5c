"""Teacher pre-training (block-diffusion objective) and the evaluation metrics of the replication.

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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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
EVAL_SEED = 1234
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


# ------------------------------------------------------------------------------------------ forwards


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


# ------------------------------------------------------------------------------------------ pre-training


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


# ------------------------------------------------------------------------------------------ metrics


@torch.no_grad()
def masked_nll(
    model: nn.Module,
    forward: Forward,
    samples: list[Encoded],
    *,
    t: float,
    mask_token_id: int,
    pad_id: int,
    batch_size: int = 32,
) -> float:
    """Mean −log p(x_i) over response tokens masked with probability ``t`` (noise from :mod:`tide.noise`
    with a fixed evaluation seed, replica = round(1000·t)); nats per masked token."""
    if not samples:
        raise ValueError("no evaluation samples")
    model.eval()
    head = model.get_output_embeddings()
    total, count = 0.0, 0
    for start in range(0, len(samples), batch_size):
        batch = samples[start : start + batch_size]
        ids, _, _, valid = collate(batch, pad_id)
        _, masked = draw_noise(batch, ids.shape[1], seed=EVAL_SEED, replica=round(1000 * t), t=t, field="response")
        if not bool(masked.any()):
            continue
        hidden = forward(noise_input_ids(ids, masked, mask_token_id), ids, valid)
        log_probs = torch.log_softmax(head(hidden[masked]).float(), dim=-1)
        total += float(-log_probs.gather(1, ids[masked][:, None]).sum())
        count += int(masked.sum())
    return total / max(count, 1)


def infill_spans(samples: list[Encoded], *, block_size: int, min_len: int = 2, max_len: int = 4) -> list[tuple[int, int]]:
    """One deterministic span ``[start, end)`` per sample: a contiguous run of response tokens inside one
    block; which run, its length (``min_len``..``max_len``) and offset come from the counter-based
    generator keyed by the sample. (-1, -1) when no block holds ``min_len`` consecutive response tokens."""
    spans = []
    for s in samples:
        runs = []
        for b0 in range(0, s.ids.shape[0], block_size):
            inside = np.append(s.response[b0 : b0 + block_size], False)
            run_start = None
            for i, flag in enumerate(inside):
                if flag and run_start is None:
                    run_start = i
                elif not flag and run_start is not None:
                    if i - run_start >= min_len:
                        runs.append((b0 + run_start, b0 + i))
                    run_start = None
        if not runs:
            spans.append((-1, -1))
            continue
        u = noise.uniform(EVAL_SEED, s.key, 0, 7, np.arange(3))
        a, b = runs[int(u[0] * len(runs))]
        length = min(b - a, min_len + int(u[1] * (max_len - min_len + 1)))
        first = a + int(u[2] * (b - a - length + 1))
        spans.append((int(first), int(first + length)))
    return spans


@torch.no_grad()
def infill_accuracy(
    model: nn.Module,
    forward: Forward,
    samples: list[Encoded],
    spans: list[tuple[int, int]],
    *,
    mask_token_id: int,
    pad_id: int,
    batch_size: int = 32,
) -> tuple[float, float, int]:
    """Greedy block-diffusion infilling: the span is masked, then filled one token per step, committing
    the most confident masked position (greedy argmax, low-confidence remasking). Under the BD3LM mask a
    span's block sees the clean blocks before it and its own partly masked block, never later text.
    Returns (exact-match rate over spans, token accuracy, number of spans)."""
    model.eval()
    head = model.get_output_embeddings()
    pairs = [(s, sp) for s, sp in zip(samples, spans, strict=True) if sp[0] >= 0]
    exact, tokens_ok, tokens, n = 0, 0, 0, 0
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        ids, _, _, valid = collate([s for s, _ in chunk], pad_id)
        span_mask = torch.zeros_like(valid)
        for row, (_, (a, b)) in enumerate(chunk):
            span_mask[row, a:b] = True
        current = ids.masked_fill(span_mask, mask_token_id)
        still = span_mask.clone()
        for _ in range(int(span_mask.sum(1).max())):
            hidden = forward(current, ids, valid)
            probs = torch.softmax(head(hidden).float(), dim=-1)
            conf, pred = probs.max(-1)
            conf = conf.masked_fill(~still, -1.0)
            pick = conf.argmax(1)
            rows = torch.arange(ids.shape[0])
            active = still[rows, pick]
            current[rows[active], pick[active]] = pred[rows[active], pick[active]]
            still[rows[active], pick[active]] = False
        correct = (current == ids) | ~span_mask
        exact += int(correct.all(1).sum())
        tokens_ok += int(((current == ids) & span_mask).sum())
        tokens += int(span_mask.sum())
        n += len(chunk)
    return exact / max(n, 1), tokens_ok / max(tokens, 1), n
