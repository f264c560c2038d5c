"""Vocabulary losses against the exact teacher (:class:`tide.exact_targets.ExactTeacher`): the full-vocabulary
formulas of docs/design.md#losses, with the teacher's logits recomputed from its stored hidden states.

With p = softmax(z_T/T) and q = softmax(z_S/T) over the shared vocabulary, per position:

* forward KL: Σ_v p_v (log p_v − log q_v);
* reverse KL: Σ_v q_v (log q_v − log p_v);
* TIDAL: r = stopgrad softmax((1 − λ)·z_S/T + λ·z_T/T), KL(r ‖ q), weighted by w(t) (see :mod:`tide.losses.tidal`).

Each loss is T²·(mean over positions), as the sparse forms. The teacher is a constant (no gradient reaches it).
A term p·log p with p = 0 counts 0. These are exactly the sparse forms of :mod:`tide.losses.kl` and
:mod:`tide.losses.tidal` with every id stored (k = V), where every tail reconstruction coincides.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from tide.exact_targets import ExactTeacher
from tide.losses.common import check_matrix, check_temperature, check_timesteps, masked_mean
from tide.losses.tidal import DEFAULT_SCHEDULE, TidalSchedule

if TYPE_CHECKING:
    from tide.losses.registry import LossOptions, VocabInputs


def _log_probs(student_logits: torch.Tensor, teacher: ExactTeacher, temperature: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(log q, log p): tempered student and teacher log-probs, fp32 (N, V)."""
    z = check_matrix("student_logits", student_logits)
    if not isinstance(teacher, ExactTeacher):
        raise ValueError(f"teacher must be ExactTeacher, got {type(teacher).__name__}")
    if teacher.num_positions != z.shape[0] or teacher.vocab_size != z.shape[1]:
        raise ValueError(f"the exact teacher covers {teacher.num_positions} positions × {teacher.vocab_size} ids, "
                         f"the student logits {tuple(z.shape)}")
    temperature = check_temperature(temperature)
    log_p = torch.log_softmax(teacher.to(z.device).logits() / temperature, dim=-1)
    return torch.log_softmax(z / temperature, dim=-1), log_p


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """Σ_v a_v (log a_v − log b_v) per row, with 0 where a_v = 0."""
    a = log_a.exp()
    return torch.where(a > 0, a * (log_a - log_b), torch.zeros_like(a)).sum(-1)


def exact_kl_terms(student_logits: torch.Tensor, teacher: ExactTeacher, *, temperature: float) -> torch.Tensor:
    """Per position KL(p_T^T ‖ p_S^T), fp32 (N,), without the T² factor."""
    log_q, log_p = _log_probs(student_logits, teacher, temperature)
    return _kl(log_p, log_q)


def exact_reverse_kl_terms(student_logits: torch.Tensor, teacher: ExactTeacher, *, temperature: float
                           ) -> torch.Tensor:
    """Per position KL(p_S^T ‖ p_T^T), fp32 (N,), without the T² factor."""
    log_q, log_p = _log_probs(student_logits, teacher, temperature)
    return _kl(log_q, log_p)


def exact_tidal_terms(student_logits: torch.Tensor, teacher: ExactTeacher, t: torch.Tensor | float, *,
                      temperature: float, progress: float, schedule: TidalSchedule = DEFAULT_SCHEDULE
                      ) -> torch.Tensor:
    """Per position KL(r ‖ p_S^T), fp32 (N,), unweighted and without T²."""
    log_q, log_p = _log_probs(student_logits, teacher, temperature)
    lam = schedule.lam(progress, check_timesteps("t", t, log_q.shape[0], log_q.device))[:, None]
    with torch.no_grad():
        log_r = torch.log_softmax((1 - lam) * log_q + lam * log_p, dim=-1)
    return _kl(log_r, log_q)


def exact_kl_loss(student_logits: torch.Tensor, teacher: ExactTeacher, *, temperature: float) -> torch.Tensor:
    """Forward KL distillation: T²·mean over positions of KL(p_T^T ‖ p_S^T)."""
    return temperature**2 * masked_mean(exact_kl_terms(student_logits, teacher, temperature=temperature))


def exact_reverse_kl_loss(student_logits: torch.Tensor, teacher: ExactTeacher, *, temperature: float
                          ) -> torch.Tensor:
    """Reverse KL distillation: T²·mean over positions of KL(p_S^T ‖ p_T^T)."""
    return temperature**2 * masked_mean(exact_reverse_kl_terms(student_logits, teacher, temperature=temperature))


def exact_tidal_loss(student_logits: torch.Tensor, teacher: ExactTeacher, t: torch.Tensor | float, *,
                     temperature: float, progress: float, schedule: TidalSchedule = DEFAULT_SCHEDULE) -> torch.Tensor:
    """TIDAL: T²·Σ_positions w(t)·KL(r ‖ p_S^T) / number of positions."""
    terms = exact_tidal_terms(student_logits, teacher, t, temperature=temperature, progress=progress,
                              schedule=schedule)
    t_vec = check_timesteps("t", t, terms.shape[0], terms.device)
    return temperature**2 * masked_mean(terms, weights=schedule.weight(t_vec))


# -- the loss registry's exact forms: (inputs, options, temperature) -> loss ------------------------------------


def exact_kl(inputs: VocabInputs, options: LossOptions, temperature: float) -> torch.Tensor:
    return exact_kl_loss(inputs.student_logits, inputs.teacher, temperature=temperature)


def exact_reverse_kl(inputs: VocabInputs, options: LossOptions, temperature: float) -> torch.Tensor:
    return exact_reverse_kl_loss(inputs.student_logits, inputs.teacher, temperature=temperature)


def exact_tidal(inputs: VocabInputs, options: LossOptions, temperature: float) -> torch.Tensor:
    return exact_tidal_loss(inputs.student_logits, inputs.teacher, inputs.t, temperature=temperature,
                            progress=options.progress, schedule=options.schedule)


__all__ = [
    "exact_kl",
    "exact_kl_loss",
    "exact_kl_terms",
    "exact_reverse_kl",
    "exact_reverse_kl_loss",
    "exact_reverse_kl_terms",
    "exact_tidal",
    "exact_tidal_loss",
    "exact_tidal_terms",
]
