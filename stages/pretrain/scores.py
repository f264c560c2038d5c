"""Held-out scores of a student or a teacher through its own forward (:mod:`stages.pretrain.teacher_training`):
masked-token NLL and greedy block-diffusion infilling of token spans."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from stages.pretrain.teacher_training import Encoded, Forward, collate, draw_noise
from tide import noise
from tide.bd3lm import noise_input_ids

EVAL_SEED = 1234


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
    block_size: int,
    batch_size: int = 32,
) -> tuple[float, float, int]:
    """Greedy block-diffusion infilling: the span is masked, then filled one token per step, committing
    the most confident masked position of the span's earliest unfinished block (greedy argmax,
    low-confidence remasking, blocks left to right as a block-diffusion sampler decodes). Under the BD3LM
    mask a block sees the blocks before it (already filled) and its own partly masked block, never later
    text. Returns (exact-match rate over spans, token accuracy, number of spans)."""
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
        block = torch.arange(ids.shape[1]) // block_size
        for _ in range(int(span_mask.sum(1).max())):
            # the clean stream is the text so far, so a span crossing blocks never sees its own answer
            hidden = forward(current, current, valid)
            probs = torch.softmax(head(hidden).float(), dim=-1)
            conf, pred = probs.max(-1)
            first = torch.where(still, block, ids.shape[1]).min(1, keepdim=True).values
            conf = conf.masked_fill(~still | (block != first), -1.0)
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
