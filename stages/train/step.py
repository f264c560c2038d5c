"""One student training step from a collated cache batch: the BD3LM forward, then :mod:`tide.objective`.

The student sees x_t ⊕ x0 under the block-diffusion mask (:func:`tide.models.student.bd3lm_hidden_states`:
SDPA boolean mask on CPU, the form the model's attention implementation needs elsewhere). The hidden states
of the x_t half at the M masked positions, the batch's teacher targets mapped onto those positions by the
cache's pipeline (:mod:`stages.train.pipelines`), and the LM head go to :func:`tide.objective.compute_objective`,
which owns every loss computation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from stages.train.collate import Batch
from stages.train.pipelines import CrossPipeline, SharedPipeline
from tide.bd3lm import noise_input_ids
from tide.models.student import BD3LMStudent, bd3lm_hidden_states
from tide.objective import MaskedPositions, Objective, compute_objective


@dataclass
class StepOutput:
    """``loss``: the scalar to back-propagate; ``terms``: detached 0-d tensors by name (ce, each mode);
    ``stats``: counts (floats) and λ for logging. Nothing here has been read back from the device: the
    trainer reads a logging window's sums at once (one host sync per window)."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor]
    stats: dict[str, float | torch.Tensor]


def student_hidden_states(model: nn.Module, noised: torch.Tensor, clean: torch.Tensor, block_size: int) -> torch.Tensor:
    """x_t-half hidden states (B, L, H) of a plain or a distributed-wrapped student.

    A DDP / DeepSpeed wrapper syncs gradients only for work done inside its own ``forward``, so a wrapped
    student must be a :class:`BD3LMStudent` whose forward is the BD3LM forward."""
    core = getattr(model, "module", model)
    if isinstance(core, BD3LMStudent):
        return model(noised, clean, block_size=block_size)
    if core is not model:
        raise ValueError(
            f"the student is wrapped in {type(model).__name__}; wrap it in BD3LMStudent before "
            "Accelerator.prepare so the forward runs inside the wrapper (gradient sync)"
        )
    return bd3lm_hidden_states(model, noised, clean, block_size=block_size)


class StudentStep:
    """Callable ``step(model, batch, progress=π) -> StepOutput`` for one :class:`tide.objective.Objective`.

    ``pipeline`` is the cache's training pipeline; it is needed whenever the objective's mode needs teacher
    targets, and must provide the kind of targets the mode needs."""

    def __init__(
        self,
        objective: Objective,
        *,
        block_size: int,
        mask_token_id: int,
        pipeline: SharedPipeline | CrossPipeline | None = None,
    ) -> None:
        kind = objective.target_kind
        if kind != "none" and (pipeline is None or pipeline.target_kind != kind):
            found = "no pipeline" if pipeline is None else f"a {pipeline.name!r} cache ({pipeline.target_kind} targets)"
            raise ValueError(f"mode {objective.mode!r} needs {kind} targets, got {found}")
        self.objective = objective
        self.block_size = block_size
        self.mask_token_id = mask_token_id
        self.pipeline = pipeline if kind != "none" else None

    def __call__(self, model: nn.Module, batch: Batch, *, progress: float = 0.0) -> StepOutput:
        x0, masked = batch.input_ids, batch.masked
        batch_size, seq_len = x0.shape
        noised = noise_input_ids(x0, masked, self.mask_token_id)
        hidden = student_hidden_states(model, noised, x0, self.block_size)
        lm_head = getattr(model, "module", model).get_output_embeddings()

        flat = batch.masked_index  # (M,) ascending row * L + position, computed at collation
        row_t = batch.t.to(hidden.device)
        positions = MaskedPositions(
            hidden=hidden.reshape(batch_size * seq_len, -1)[flat],
            gold_ids=x0.reshape(-1)[flat],
            t=row_t[flat // seq_len].float(),
            num_maskable=batch.num_maskable,
        )
        targets = None
        if self.pipeline is not None:
            targets = batch.targets
            expected = self.pipeline.targets_class
            if not isinstance(targets, expected):
                raise ValueError(
                    f"mode {self.objective.mode!r} needs {self.pipeline.target_kind} targets but the batch has none")
        out = compute_objective(self.objective, lm_head, positions, targets, progress=progress, row_t=batch.t)
        stats = {**out.stats, "tokens": float(batch.num_tokens)}
        terms = {name: value.detach() for name, value in out.terms.items()}
        return StepOutput(loss=out.loss, terms=terms, stats=stats)
