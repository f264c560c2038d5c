"""The training objective of one student step, as a pure function of tensors (docs/design.md#losses).

Input: the student's final hidden states at the M masked positions of a batch (the x_t half of the BD3LM
layout), its LM head, the gold ids and timesteps there, and the teacher targets of the batch mapped onto
those M positions:

* vocabulary targets (pipeline B): N target items, each naming the masked position it belongs to, with
  the teacher's sparse targets (ragged top-k ids / values, log tail masses);
* chunk targets (pipeline A): C active chunks, each a set of masked positions (its student tokens), with
  the teacher's chunk log-prob.

Output: ``total = ce_weight·CE + Σ_mode distill_weight·term_mode`` and every term.

Memory: the LM head runs on chunks of ``head_chunk_size`` masked rows; with more than one chunk, each chunk
is recomputed in the backward pass (activation checkpointing), so at most one (chunk, V) fp32 logit block
lives at a time, never an (M, V) one. Terms that are means over items are split across chunks by the
chunk's share of the items, so the pieces add up to the full mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from tide.losses import (
    LOSSES,
    CEInputs,
    ChunkInputs,
    LossEntry,
    LossOptions,
    VocabInputs,
    combine_losses,
    parse_mode,
    required_targets,
    vocab_losses,
)
from tide.targets import SparseTargets


@dataclass(frozen=True)
class MaskedPositions:
    """The student side at the M masked positions of a batch.

    hidden: (M, H) final hidden states (after the last norm) of the x_t half; gold_ids: (M,) clean ids;
    t: (M,) float32 timestep of each position's sequence; num_maskable: maskable tokens in the batch (the
    CE normaliser, at least the number of masked ones)."""

    hidden: torch.Tensor
    gold_ids: torch.Tensor
    t: torch.Tensor
    num_maskable: int


@dataclass(frozen=True)
class VocabTargets:
    """Sparse teacher targets at N target items (a subset of the masked positions).

    index: (N,) int64 into [0, M), ascending; teacher: the items' :class:`tide.targets.SparseTargets`
    (ragged top-k ids and values, log tails at the stored temperatures); host_index: ``index`` on the CPU,
    kept when the targets move to a device, so splitting the items among LM-head chunks needs no host sync
    (None: read from ``index``)."""

    index: torch.Tensor
    teacher: SparseTargets
    host_index: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> VocabTargets:
        host = self.host_index if self.host_index is not None else self.index.cpu()
        return VocabTargets(index=self.index.to(device), teacher=self.teacher.to(device), host_index=host)


@dataclass(frozen=True)
class ChunkTargets:
    """Active chunks (masked, not in the prompt) of pipeline A.

    token_index: (S,) int64 into [0, M), the masked position of every student token of every chunk;
    chunk_of_token: (S,) int64 into [0, C); teacher_logprob: (C,) the teacher's chunk log-prob; t: (C,)."""

    token_index: torch.Tensor
    chunk_of_token: torch.Tensor
    teacher_logprob: torch.Tensor
    t: torch.Tensor

    @property
    def num_chunks(self) -> int:
        return int(self.teacher_logprob.shape[0])

    def to(self, device: torch.device | str) -> ChunkTargets:
        return ChunkTargets(token_index=self.token_index.to(device), chunk_of_token=self.chunk_of_token.to(device),
                            teacher_logprob=self.teacher_logprob.to(device), t=self.t.to(device))


Targets = VocabTargets | ChunkTargets | None


@dataclass(frozen=True)
class Objective:
    """A composed mode and the weights and options it is trained with.

    ``mode`` is a loss-mode string (``"tidal"``, ``"kl+tidal"``, ``"reverse_calm"``, ``"ce"``);
    ``shared_vocab_size`` is the width of the student slice vocabulary losses compare over."""

    mode: str
    options: LossOptions = field(default_factory=LossOptions)
    ce_weight: float = 1.0
    distill_weight: float = 1.0
    shared_vocab_size: int | None = None
    head_chunk_size: int = 4096

    def __post_init__(self) -> None:
        if self.head_chunk_size < 1:
            raise ValueError(f"head_chunk_size must be >= 1, got {self.head_chunk_size}")
        if self.target_kind == "vocab" and not self.shared_vocab_size:
            raise ValueError(f"mode {self.mode!r} compares vocabularies and needs the shared vocabulary size")

    @property
    def entries(self) -> list[LossEntry]:
        return parse_mode(self.mode)

    @property
    def distill_entries(self) -> list[LossEntry]:
        return [entry for entry in self.entries if entry.targets != "none"]

    @property
    def target_kind(self) -> str:
        """"vocab", "chunk" or "none": the teacher targets the mode needs."""
        return required_targets(self.entries)

    def at_progress(self, progress: float) -> LossOptions:
        """The loss options at training progress π (clamped to [0, 1])."""
        return replace(self.options, progress=min(max(float(progress), 0.0), 1.0))


@dataclass
class ObjectiveOutput:
    """``loss``: the scalar to back-propagate; ``terms``: every term by name (``ce`` and each mode), still
    attached to the graph; ``stats``: counts and the TIDAL λ for logging."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor]
    stats: dict[str, float | torch.Tensor]


def _head_chunk(
    objective: Objective,
    options: LossOptions,
    lm_head: nn.Module,
    hidden: torch.Tensor,
    gold: torch.Tensor,
    t: torch.Tensor,
    num_maskable: int,
    teacher: SparseTargets | None,
    local: torch.Tensor | None,
    item_share: float,
    want_gold_logprob: bool,
) -> tuple[torch.Tensor, ...]:
    """Terms of one LM-head chunk: its CE share, each vocabulary mode's share, and gold log-probs if asked.

    ``teacher``: the chunk's items' targets, at chunk rows ``local`` (None: one item per row, in order);
    ``item_share``: the chunk's share of the batch's items."""
    logits = lm_head(hidden).float()
    log_probs = torch.log_softmax(logits, dim=-1)
    ce_inputs = CEInputs(logits=log_probs, gold_ids=gold, t=t, num_maskable=max(num_maskable, 1),
                         from_log_probs=True)
    outputs = [LOSSES["ce"](ce_inputs, options)]
    if teacher is not None:
        entries = objective.distill_entries
        if item_share == 0.0:
            outputs.extend(logits.sum() * 0.0 for _ in entries)
        else:
            # a column slice is a view: no (N, V) copy when the items are the chunk's rows in order
            student = logits[:, : objective.shared_vocab_size] if local is None else logits[local, : objective.shared_vocab_size]
            inputs = VocabInputs(student_logits=student, teacher=teacher, t=t if local is None else t[local])
            outputs.extend(value * item_share for value in vocab_losses(entries, inputs, options))
    if want_gold_logprob:
        outputs.append(log_probs.gather(1, gold[:, None]).squeeze(1))
    return tuple(outputs)


def _chunk_terms(
    objective: Objective, options: LossOptions, gold_logprob: torch.Tensor, chunks: ChunkTargets,
    anchor: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Chunk-mode terms from the student's gold log-probs (M,) at the masked positions."""
    count = chunks.num_chunks
    student = torch.zeros(count, dtype=gold_logprob.dtype, device=gold_logprob.device).index_add(
        0, chunks.chunk_of_token, gold_logprob[chunks.token_index])
    inputs = ChunkInputs(student_logprob=student, teacher_logprob=chunks.teacher_logprob, t=chunks.t)
    return {entry.name: anchor + (entry(inputs, options) if count else 0.0) for entry in objective.distill_entries}


def tidal_stats(options: LossOptions, t: torch.Tensor) -> dict[str, float | torch.Tensor]:
    """λ_train at the current progress and the batch mean of λ over the rows' timesteps ``t`` (B,) (a 0-d
    tensor on ``t``'s device: reading it is the caller's host sync)."""
    schedule = options.schedule
    lam = schedule.lam(options.progress, t.float().clamp(0.0, 1.0))
    return {"lambda_train": float(schedule.lambda_train(options.progress)),
            "lambda_mean": torch.as_tensor(lam).float().mean().detach()}


def compute_objective(
    objective: Objective,
    lm_head: nn.Module,
    masked: MaskedPositions,
    targets: Targets,
    *,
    progress: float = 0.0,
    row_t: torch.Tensor | None = None,
) -> ObjectiveOutput:
    """CE at every masked position plus each distillation term of ``objective.mode``, and their total.

    ``targets`` must be of the kind the mode needs (:attr:`Objective.target_kind`); ``row_t`` (B,), the
    batch's per-row timesteps, only feeds the logged mean λ of TIDAL modes.
    """
    kind = objective.target_kind
    expected = {"vocab": VocabTargets, "chunk": ChunkTargets, "none": type(None)}[kind]
    if kind != "none" and not isinstance(targets, expected):
        raise ValueError(f"mode {objective.mode!r} needs {expected.__name__}, got {type(targets).__name__}")
    options = objective.at_progress(progress)
    hidden, gold, t = masked.hidden, masked.gold_ids, masked.t
    m_total = int(hidden.shape[0])
    anchor = hidden.sum() * 0.0  # keeps the graph alive when a batch has nothing to score
    vocab = targets if kind == "vocab" else None
    item_total = int(vocab.index.numel()) if vocab is not None else 0
    want_gold = kind == "chunk"

    pieces: dict[str, torch.Tensor] = {"ce": anchor}
    vocab_names = [entry.name for entry in objective.distill_entries] if vocab is not None else []
    for name in vocab_names:
        pieces[name] = anchor
    gold_parts: list[torch.Tensor] = []
    size = objective.head_chunk_size
    recompute = torch.is_grad_enabled() and m_total > size
    starts = list(range(0, m_total, size))
    if vocab is not None:  # items per chunk: index is ascending, so each chunk's items are one run
        host = vocab.host_index if vocab.host_index is not None else vocab.index.cpu()
        bounds = torch.searchsorted(host, torch.tensor([*starts, m_total], dtype=host.dtype)).tolist()
    for c, start in enumerate(starts):
        stop = min(start + size, m_total)
        teacher = local = None
        share = 0.0
        if vocab is not None:
            lo, hi = bounds[c], bounds[c + 1]
            teacher = vocab.teacher if (lo, hi) == (0, item_total) else vocab.teacher.select(slice(lo, hi))
            if hi - lo != stop - start:  # (items are distinct masked positions: as many as rows means all)
                local = vocab.index[lo:hi] - start
            share = (hi - lo) / item_total if item_total else 0.0

        def run(h, start=start, stop=stop, teacher=teacher, local=local, share=share):
            return _head_chunk(objective, options, lm_head, h, gold[start:stop], t[start:stop],
                               masked.num_maskable, teacher, local, share, want_gold)

        outputs = checkpoint(run, hidden[start:stop], use_reentrant=False) if recompute else run(hidden[start:stop])
        for name, value in zip(["ce", *vocab_names], outputs, strict=False):
            pieces[name] = pieces[name] + value
        if want_gold:
            gold_parts.append(outputs[-1])

    stats: dict[str, float | torch.Tensor] = {"masked_tokens": float(m_total), "maskable_tokens": float(masked.num_maskable)}
    if vocab is not None:
        stats["target_items"] = float(item_total)
    if kind == "chunk":
        gold_logprob = torch.cat(gold_parts) if gold_parts else hidden.new_zeros(0, dtype=torch.float32)
        pieces.update(_chunk_terms(objective, options, gold_logprob, targets, anchor))
        stats["active_chunks"] = float(targets.num_chunks)
    if row_t is not None and any(entry.uses_tidal_schedule for entry in objective.distill_entries):
        stats.update(tidal_stats(options, row_t))

    distill = {name: value for name, value in pieces.items() if name != "ce"}
    total, terms = combine_losses(pieces["ce"], distill, weight=objective.distill_weight,
                                  ce_weight=objective.ce_weight)
    return ObjectiveOutput(loss=total, terms=terms, stats=stats)


def masked_positions_of(masked: torch.Tensor) -> torch.Tensor:
    """(M,) int64 flat indices ``row · L + position`` of the True entries of a (B, L) mask, ascending."""
    return masked.reshape(-1).nonzero().squeeze(1)


def index_among(flat_masked: torch.Tensor, flat_items: torch.Tensor, what: str) -> torch.Tensor:
    """Where each flat item index sits in the ascending ``flat_masked`` (M,); every item must be there.

    Raises ValueError naming ``what`` when an item is not a masked position."""
    index = torch.searchsorted(flat_masked, flat_items)
    inside = index < flat_masked.numel()
    if not bool(inside.all()) or not bool((flat_masked[index[inside]] == flat_items[inside]).all()):
        raise ValueError(f"{what} must be masked positions of their row")
    return index


def chunk_token_index(
    flat_masked: torch.Tensor, row: torch.Tensor, start: torch.Tensor, end: torch.Tensor, seq_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(token_index (S,), chunk_of_token (S,)) for chunks [start, end) of rows ``row``, all (C,) int64.

    Every student token of every chunk must be masked (chunk-consistent noise); raises ValueError if not."""
    lengths = end - start
    if bool((lengths <= 0).any()):
        raise ValueError("an active chunk has no student tokens (end <= start)")
    device = flat_masked.device
    chunk_of_token = torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths)
    offsets = torch.arange(int(lengths.sum()), device=device) - torch.repeat_interleave(
        torch.cumsum(lengths, 0) - lengths, lengths)
    flat_tokens = row[chunk_of_token] * seq_len + start[chunk_of_token] + offsets
    token_index = index_among(flat_masked, flat_tokens, "every student token of a masked chunk")
    return token_index, chunk_of_token


__all__: Sequence[str] = (
    "ChunkTargets",
    "MaskedPositions",
    "Objective",
    "ObjectiveOutput",
    "Targets",
    "VocabTargets",
    "chunk_token_index",
    "compute_objective",
    "index_among",
    "masked_positions_of",
    "tidal_stats",
)
