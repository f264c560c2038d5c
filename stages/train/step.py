"""One student training step from a collated cache batch: forward, CE, distillation terms, total loss.

The student sees x_t ⊕ x0 under the block-diffusion mask (:func:`tide.models.student.bd3lm_hidden_states`:
SDPA boolean mask on CPU, the form the model's attention implementation needs elsewhere). Only the x_t
half's hidden states at the M masked positions go through the LM head, in chunks of ``loss_chunk_size``
rows; with more than one chunk each chunk is recomputed in the backward pass (activation checkpointing),
so at most one (chunk, V) fp32 logit block is alive at a time.

* CE (DESIGN.md §3) over the full student vocabulary at every masked position.
* Vocabulary modes (kl, reverse_kl, tidal) at the cache's target positions (a subset of the masked ones),
  over the shared slice ``[0, shared_vocab_size)`` of the student logits.
* Chunk modes (calm family): the student chunk log-prob is Σ log p_S(x_j) over the chunk's student
  tokens (same position, no shift), compared with the cached teacher chunk log-prob, active chunks only.

Every term is computed by :mod:`tide.losses`; the step only gathers inputs and splits the sums across
chunks (each chunk's mean is scaled by its share of the items, so the pieces add up to the full mean).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from stages.train.collate import Batch
from tide.bd3lm import noise_input_ids
from tide.losses import (
    LOSSES,
    CEInputs,
    ChunkInputs,
    LossOptions,
    VocabInputs,
    parse_mode,
    required_targets,
    tidal_lambda,
)
from tide.models.student import BD3LMStudent, bd3lm_hidden_states

TIDAL_MODES = ("tidal", "tidal_calm", "reverse_tidal_calm")


@dataclass(frozen=True)
class StepConfig:
    """What a step needs besides the model and the batch.

    temperatures: the cache's stored temperatures (vocabulary modes read their log-partition column);
    shared_vocab_size: width of the slice vocabulary losses compare over (pipeline B)."""

    mode: str
    block_size: int
    mask_token_id: int
    shared_vocab_size: int | None = None
    temperatures: tuple[float, ...] = (1.0,)
    options: LossOptions = field(default_factory=LossOptions)
    distill_weight: float = 1.0
    ce_weight: float = 1.0
    loss_chunk_size: int = 4096


@dataclass
class StepOutput:
    """``loss``: the scalar to back-propagate; ``terms``: detached scalars by name (ce, each mode);
    ``stats``: counts and λ for logging."""

    loss: torch.Tensor
    terms: dict[str, float]
    stats: dict[str, float]


class StudentStep:
    """Callable ``step(model, batch, progress=π) -> StepOutput`` for one composed ``mode``."""

    def __init__(self, config: StepConfig) -> None:
        self.config = config
        entries = parse_mode(config.mode)
        self.distill = [entry for entry in entries if entry.targets != "none"]
        self.targets = required_targets(entries)
        if self.targets == "vocab" and not config.shared_vocab_size:
            raise ValueError(f"mode {config.mode!r} compares vocabularies and needs the shared vocabulary size")
        if config.loss_chunk_size < 1:
            raise ValueError(f"loss_chunk_size must be >= 1, got {config.loss_chunk_size}")

    def options(self, progress: float) -> LossOptions:
        progress = min(max(float(progress), 0.0), 1.0)
        return LossOptions(**{**self.config.options.__dict__, "progress": progress})

    def __call__(self, model: nn.Module, batch: Batch, *, progress: float = 0.0) -> StepOutput:
        cfg = self.config
        options = self.options(progress)
        x0, masked = batch.input_ids, batch.masked
        batch_size, seq_len = x0.shape
        noised = noise_input_ids(x0, masked, cfg.mask_token_id)
        core = getattr(model, "module", model)  # what a DDP / DeepSpeed wrapper runs
        if isinstance(core, BD3LMStudent):
            # Through the (possibly distributed) wrapper's forward, so its gradient sync hooks run.
            hidden = model(noised, x0, block_size=cfg.block_size)
        elif core is not model:
            raise ValueError(
                f"the student is wrapped in {type(model).__name__}; wrap it in BD3LMStudent before "
                "Accelerator.prepare so the forward runs inside the wrapper (gradient sync)"
            )
        else:
            hidden = bd3lm_hidden_states(model, noised, x0, block_size=cfg.block_size)
        lm_head = core.get_output_embeddings()
        anchor = hidden.sum() * 0.0  # keeps the graph alive when a batch has nothing to score

        flat = masked.reshape(-1).nonzero().squeeze(1)  # (M,) sorted row * L + position
        hidden_m = hidden.reshape(batch_size * seq_len, -1)[flat]
        gold = x0.reshape(-1)[flat]
        t_m = batch.t.to(hidden.device)[flat // seq_len].float()
        num_maskable = int(batch.maskable.sum())
        m_total = int(flat.numel())

        item_index, item_total = None, 0
        if self.targets == "vocab":
            if batch.vocab is None:
                raise ValueError(f"mode {cfg.mode!r} needs vocabulary targets but the batch has none")
            item_flat = batch.vocab.row * seq_len + batch.vocab.position
            item_index = torch.searchsorted(flat, item_flat)
            inside = item_index < m_total
            if not bool(inside.all()) or not bool((flat[item_index[inside]] == item_flat[inside]).all()):
                raise ValueError("cache target positions must be masked positions of their row")
            item_total = int(item_flat.numel())

        need_gold = self.targets == "chunk"
        pieces: dict[str, torch.Tensor] = {"ce": anchor}
        for entry in self.distill:
            pieces[entry.name] = anchor
        gold_parts: list[torch.Tensor] = []
        use_checkpoint = torch.is_grad_enabled() and m_total > cfg.loss_chunk_size
        for start in range(0, m_total, cfg.loss_chunk_size):
            stop = min(start + cfg.loss_chunk_size, m_total)
            items = None
            if item_index is not None:
                items = ((item_index >= start) & (item_index < stop)).nonzero().squeeze(1)

            def chunk_fn(h, start=start, stop=stop, items=items):
                return self._chunk_terms(lm_head, h, gold[start:stop], t_m[start:stop], start, items,
                                         item_index, item_total, batch, num_maskable, need_gold, options)

            if use_checkpoint:
                outputs = checkpoint(chunk_fn, hidden_m[start:stop], use_reentrant=False)
            else:
                outputs = chunk_fn(hidden_m[start:stop])
            names = ["ce"] + ([e.name for e in self.distill] if self.targets == "vocab" else [])
            for name, value in zip(names, outputs[: len(names)], strict=True):
                pieces[name] = pieces[name] + value
            if need_gold:
                gold_parts.append(outputs[-1])

        stats: dict[str, float] = {
            "masked_tokens": float(m_total),
            "maskable_tokens": float(num_maskable),
            "tokens": float(batch.num_tokens),
        }
        if self.targets == "vocab":
            stats["target_items"] = float(item_total)
        if self.targets == "chunk":
            gold_lp = torch.cat(gold_parts) if gold_parts else hidden.new_zeros(0, dtype=torch.float32)
            chunk_terms, active_count = self._chunk_losses(gold_lp, flat, batch, seq_len, options, anchor)
            pieces.update(chunk_terms)
            stats["active_chunks"] = float(active_count)
        if any(entry.name in TIDAL_MODES for entry in self.distill):
            stats["lambda_train"] = float(tidal_lambda(
                options.progress, 0.0, axis="training_only", decay=options.decay,
                lambda0=options.lambda0, lambda_max=options.lambda_max,
            ))
            lam = tidal_lambda(options.progress, batch.t.float().clamp(0.0, 1.0), axis=options.axis,
                               decay=options.decay, lambda0=options.lambda0, lambda_max=options.lambda_max)
            stats["lambda_mean"] = float(torch.as_tensor(lam).float().mean())

        total = cfg.ce_weight * pieces["ce"]
        for entry in self.distill:
            total = total + cfg.distill_weight * pieces[entry.name]
        terms = {name: float(value.detach()) for name, value in pieces.items()}
        return StepOutput(loss=total, terms=terms, stats=stats)

    # --- pieces ---------------------------------------------------------------------------------------------

    def _chunk_terms(self, lm_head, h, gold, t, start, items, item_index, item_total, batch, num_maskable,
                     need_gold, options):
        """Terms of one LM-head chunk: CE share, vocabulary-mode shares, and gold log-probs if needed."""
        logits = lm_head(h).float()
        log_probs = torch.log_softmax(logits, dim=-1)
        ce_entry = CEInputs(logits=log_probs, gold_ids=gold, t=t, num_maskable=max(num_maskable, 1),
                            from_log_probs=True)
        outputs = [LOSSES["ce"](ce_entry, options)]
        if self.targets == "vocab":
            vocab = batch.vocab
            n_items = int(items.numel())
            local = item_index[items] - start
            inputs = VocabInputs(
                student_logits=logits[local, : self.config.shared_vocab_size],
                teacher_ids=vocab.topk_ids[items],
                teacher_values=vocab.topk_values[items],
                teacher_log_partitions=vocab.log_partitions[items],
                temperatures=self.config.temperatures,
                t=batch.t.float()[vocab.row[items]],
            )
            for entry in self.distill:
                if n_items == 0:
                    outputs.append(logits.sum() * 0.0)
                else:
                    outputs.append(entry(inputs, options) * (n_items / item_total))
        if need_gold:
            outputs.append(log_probs.gather(1, gold[:, None]).squeeze(1))
        return tuple(outputs)

    def _chunk_losses(self, gold_lp, flat, batch, seq_len, options, anchor):
        """Chunk-mode terms from the gold log-probs (M,) at the masked positions ``flat``."""
        chunks = batch.chunks
        if chunks is None:
            raise ValueError(f"mode {self.config.mode!r} needs chunk targets but the batch has none")
        active = chunks.active.nonzero().squeeze(1)
        rows, starts, ends = chunks.row[active], chunks.start[active], chunks.end[active]
        lengths = ends - starts
        if bool((lengths <= 0).any()):
            raise ValueError("an active chunk has no student tokens (end <= start)")
        chunk_of_token = torch.repeat_interleave(torch.arange(len(active), device=gold_lp.device), lengths)
        offsets = torch.arange(int(lengths.sum()), device=gold_lp.device) - torch.repeat_interleave(
            torch.cumsum(lengths, 0) - lengths, lengths)
        token_flat = rows[chunk_of_token] * seq_len + starts[chunk_of_token] + offsets
        where = torch.searchsorted(flat, token_flat)
        valid = where < flat.numel()
        if not bool(valid.all()) or not bool((flat[where] == token_flat).all()):
            raise ValueError("every student token of a masked chunk must be masked (chunk-consistent noise)")
        student_lp = torch.zeros(len(active), dtype=gold_lp.dtype, device=gold_lp.device).index_add(
            0, chunk_of_token, gold_lp[where])
        inputs = ChunkInputs(student_logprob=student_lp, teacher_logprob=chunks.teacher_logprob[active],
                             t=batch.t.float()[rows])
        terms = {}
        for entry in self.distill:
            terms[entry.name] = anchor + (entry(inputs, options) if len(active) else 0.0)
        return terms, len(active)
