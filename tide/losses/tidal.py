"""TIDAL: dual-axis interpolated distillation (docs/design.md#tidal).

λ schedule (:class:`TidalSchedule`): progress π = step / max_steps; g = ½(1 − cos(π·π)) (``cosine``) or π
(``linear``); λ_train = λ0 + (λmax − λ0)·g; λ = λ_train·(1 − t) for axis ``both``, λ_train for
``training_only``, λmax·(1 − t) for ``timestep_only``; per-item weight w(t) = exp(−(t − 0.5)²/(2·0.15²))
(``midrange``) or 1 (``uniform``).

Target r = stopgrad softmax((1 − λ)·z_S/T + λ·z_T/T); loss per position KL(r ‖ p_S^T); Σ w·KL / number of
positions, × T².

Representing z_T/T from sparse targets: z_T/T is replaced by the reconstructed teacher's log-probs (a
per-row constant apart, which the softmax ignores). With the ``student`` tail the teacher's log-prob off the
stored ids S is log q_v + log(τ/Q), so the mixed logit there is the student's own plus a per-row constant:
r's tail is ∝ q·(τ/Q)^λ and the loss is a closed (|S| + 1)-bucket form,
r over [S, tail] = softmax([(1 − λ)·log q_S + λ·log p_S, (1 − λ)·log Q + λ·log τ]),
KL = Σ_S r log(r/q) + r_tail·log(r_tail/Q). The other tails build the (N, V) reconstruction and mix id by id.
With every id stored all are exactly the formula above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tide.losses.common import check_timesteps, check_unit, masked_mean, scaled_log
from tide.losses.common import zero_where_not as _where
from tide.losses.kl import STUDENT_TAIL, teacher_at
from tide.losses.student_tail import student_tail_terms
from tide.targets import SparseTargets, TailReconstruction, reconstruct_log_probs

AXES = ("both", "training_only", "timestep_only")
DECAYS = ("cosine", "linear")
WEIGHTINGS = ("midrange", "uniform")

MIDRANGE_CENTER = 0.5
MIDRANGE_WIDTH = 0.15


def midrange_weight(t: torch.Tensor | float) -> torch.Tensor | float:
    """w(t) = exp(−(t − 0.5)² / (2·0.15²)); a float for a float, a tensor for a tensor."""
    if isinstance(t, torch.Tensor):
        return torch.exp(-((t - MIDRANGE_CENTER) ** 2) / (2 * MIDRANGE_WIDTH**2))
    return math.exp(-((float(t) - MIDRANGE_CENTER) ** 2) / (2 * MIDRANGE_WIDTH**2))


@dataclass(frozen=True)
class TidalSchedule:
    """The TIDAL interpolation schedule and per-timestep weighting (shared by ``tidal`` and ``tidal_calm``)."""

    axis: str = "both"
    decay: str = "cosine"
    lambda0: float = 0.1
    lambda_max: float = 0.9
    weighting: str = "midrange"

    def __post_init__(self) -> None:
        if self.axis not in AXES:
            raise ValueError(f"axis must be one of {AXES}, got {self.axis!r}")
        if self.decay not in DECAYS:
            raise ValueError(f"decay must be one of {DECAYS}, got {self.decay!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        check_unit("lambda0", self.lambda0)
        check_unit("lambda_max", self.lambda_max)

    def lambda_train(self, progress: float) -> float:
        """λ_train at training progress π ∈ [0, 1]."""
        progress = check_unit("progress", progress)
        g = 0.5 * (1.0 - math.cos(math.pi * progress)) if self.decay == "cosine" else progress
        return self.lambda0 + (self.lambda_max - self.lambda0) * g

    def lam(self, progress: float, t: torch.Tensor | float) -> torch.Tensor | float:
        """λ for progress π and timestep(s) t (a tensor for a tensor)."""
        lambda_train = self.lambda_train(progress)
        if self.axis == "training_only":
            return torch.full_like(t, lambda_train) if isinstance(t, torch.Tensor) else lambda_train
        scale = lambda_train if self.axis == "both" else self.lambda_max
        return scale * (1 - t)

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """Per-item weight w(t)."""
        return midrange_weight(t) if self.weighting == "midrange" else torch.ones_like(t)


DEFAULT_SCHEDULE = TidalSchedule()


def _kl_to_student(log_r: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    r = log_r.exp()
    return _where(r > 0, r * (log_r - log_q)).sum(-1)


def tidal_terms(
    student_logits: torch.Tensor,
    teacher: SparseTargets,
    t: torch.Tensor | float,
    *,
    temperature: float,
    progress: float,
    schedule: TidalSchedule = DEFAULT_SCHEDULE,
    tail: TailReconstruction = STUDENT_TAIL,
) -> torch.Tensor:
    """Per position KL(r ‖ p_S^T), fp32 (N,), unweighted and without T².

    ``student_logits`` (N, V) over the shared slice; ``teacher`` the N positions' sparse targets; t (N,) or
    a float."""
    z, view = teacher_at(student_logits, teacher, temperature)
    n, vocab = z.shape
    lam = schedule.lam(progress, check_timesteps("t", t, n, z.device))[:, None]
    if tail.kind == "student":
        return student_tail_terms(z, view, ("tidal",), lam=lam[:, 0])[:, 0]
    log_q = torch.log_softmax(z / view.temperature, dim=-1)
    with torch.no_grad():
        log_teacher = reconstruct_log_probs(view, vocab, tail, log_q)
        log_r = torch.log_softmax(scaled_log(1 - lam, log_q.detach()) + scaled_log(lam, log_teacher), dim=-1)
    return _kl_to_student(log_r, log_q)


def tidal_loss(
    student_logits: torch.Tensor,
    teacher: SparseTargets,
    t: torch.Tensor | float,
    *,
    temperature: float,
    progress: float,
    schedule: TidalSchedule = DEFAULT_SCHEDULE,
    tail: TailReconstruction = STUDENT_TAIL,
) -> torch.Tensor:
    """TIDAL: T²·Σ_positions w(t)·KL(r ‖ p_S^T) / number of positions."""
    terms = tidal_terms(student_logits, teacher, t, temperature=temperature, progress=progress, schedule=schedule,
                        tail=tail)
    t_vec = check_timesteps("t", t, terms.shape[0], terms.device)
    return temperature**2 * masked_mean(terms, weights=schedule.weight(t_vec))
