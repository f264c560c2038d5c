"""Vocabulary distillation against sparse teacher targets: forward and reverse KL (docs/design.md#kl-and-reverse-kl).

The teacher at temperature T is exact on its stored ids S (p_j, see :mod:`tide.targets`) and holds the mass
τ on the others; q = p_S^T is the tempered student and Q its mass off S (a log-sum-exp over those ids). The
tail reconstruction (:class:`tide.targets.TailReconstruction`) decides the KLs' tail terms:

* ``student`` (τ·q_v/Q off S): the (|S| + 1)-bucket forms
  forward ``Σ_S p log(p/q) + τ log(τ/Q)``, reverse ``Σ_S q log(q/p) + Q log(Q/τ)``;
* ``uniform`` (τ/(V − k) off S): forward ``Σ_S p log(p/q) + τ log(τ/(V−k)) − (τ/(V−k))·Σ_{v∉S} log q_v``,
  reverse ``Σ_v q log q − Σ_S q log p − Q·log(τ/(V−k))``;
* ``mixture``: the reconstructed teacher built densely (N, V) and compared id by id.

The reconstructed teacher is a target: it is treated as a constant (the student-shaped forms give exactly
that gradient when differentiated as written, since their bucket KL's gradient equals the full KL's with the
reconstruction held fixed). With every id stored the tail terms vanish and both are the full-vocabulary
formulas. Rows may store different numbers of ids (ragged k).
"""

from __future__ import annotations

import math

import torch

from tide.losses.common import check_matrix, check_temperature, masked_mean
from tide.losses.common import zero_where_not as _where
from tide.losses.student_tail import floored_log_tail, student_tail_terms
from tide.targets import (
    SparseTargets,
    TailReconstruction,
    TeacherAtTemperature,
    off_stored_log_mass,
    reconstruct_log_probs,
)

STUDENT_TAIL = TailReconstruction()


def teacher_at(student_logits: torch.Tensor, teacher: SparseTargets, temperature: float
               ) -> tuple[torch.Tensor, TeacherAtTemperature]:
    """Check (N, V) student logits against N sparse targets; returns fp32 logits and the teacher at T on
    the logits' device."""
    z = check_matrix("student_logits", student_logits)
    n, vocab = z.shape
    if not isinstance(teacher, SparseTargets):
        raise ValueError(f"teacher must be SparseTargets, got {type(teacher).__name__}")
    if teacher.num_positions != n:
        raise ValueError(f"teacher targets cover {teacher.num_positions} positions, the student logits {n}")
    if n and int(teacher.counts.max()) > vocab:
        raise ValueError(f"teacher stores up to {int(teacher.counts.max())} ids per position, more than V={vocab}")
    view = teacher.to(z.device).at(check_temperature(temperature), vocab)
    if view.ids.numel() and (int(view.ids.min()) < 0 or int(view.ids.max()) >= vocab):
        raise ValueError(f"teacher ids must lie in [0, {vocab}), got range [{int(view.ids.min())}, "
                         f"{int(view.ids.max())}]")
    return z, view


def _stored_log_q(log_q: torch.Tensor, view: TeacherAtTemperature) -> torch.Tensor:
    """The student's log-probs at the stored ids (N, K); 0 at padding (never used there)."""
    return _where(view.valid, log_q.gather(1, view.ids))


def _others(view: TeacherAtTemperature, vocab: int) -> torch.Tensor:
    """V − k per row as a float, at least 1 (rows storing every id have no tail to divide)."""
    return (vocab - view.counts).clamp(min=1).to(view.log_tail.dtype)


def kl_terms(
    student_logits: torch.Tensor,
    teacher: SparseTargets,
    *,
    temperature: float,
    tail: TailReconstruction = STUDENT_TAIL,
) -> torch.Tensor:
    """Per position KL(p_T^T ‖ p_S^T), fp32 (N,), without the T² factor.

    ``student_logits`` (N, V) over the shared slice; ``teacher``: the N positions' sparse targets."""
    z, view = teacher_at(student_logits, teacher, temperature)
    if tail.kind == "student":
        return student_tail_terms(z, view, ("kl",))[:, 0]
    vocab = z.shape[1]
    log_q = torch.log_softmax(z / view.temperature, dim=-1)
    if tail.kind == "mixture":
        log_target = reconstruct_log_probs(view, vocab, tail, log_q)
        return _where(log_target > -math.inf, log_target.exp() * (log_target - log_q)).sum(-1)
    log_q_top = _stored_log_q(log_q, view)
    safe_log_p = _where(view.valid, view.log_p)
    terms = _where(view.valid, safe_log_p.exp() * (safe_log_p - log_q_top)).sum(-1)
    tau = view.log_tail.exp()
    has_tail = tau > 0
    safe_log_tail = _where(has_tail, view.log_tail)
    others = _others(view, vocab)
    sum_other_log_q = log_q.sum(-1) - log_q_top.sum(-1)
    return terms + _where(has_tail, tau * (safe_log_tail - torch.log(others)) - (tau / others) * sum_other_log_q)


def reverse_kl_terms(
    student_logits: torch.Tensor,
    teacher: SparseTargets,
    *,
    temperature: float,
    tail: TailReconstruction = STUDENT_TAIL,
    min_tail: float = 1e-8,
) -> torch.Tensor:
    """Per position KL(p_S^T ‖ p_T^T), fp32 (N,), without the T² factor.

    ``min_tail`` replaces a stored tail of exactly 0 at a position that leaves ids unstored (it would make
    the reverse KL infinite wherever the student puts mass there); tails computed over the unstored ids do
    not round to 0 in practice, so the floor only guards against degenerate inputs. No effect at k = V."""
    z, view = teacher_at(student_logits, teacher, temperature)
    if tail.kind == "student":
        return student_tail_terms(z, view, ("reverse_kl",), min_tail=min_tail)[:, 0]
    vocab = z.shape[1]
    log_q = torch.log_softmax(z / view.temperature, dim=-1)
    log_tail = floored_log_tail(view, vocab, min_tail)
    if tail.kind == "mixture":
        view = TeacherAtTemperature(view.ids, view.valid, view.log_p, log_tail, view.counts, view.temperature)
        log_target = reconstruct_log_probs(view, vocab, tail, log_q)
        return (log_q.exp() * (log_q - log_target)).sum(-1)
    log_q_top = _stored_log_q(log_q, view)
    stored_q = _where(view.valid, log_q_top.exp())
    log_off = off_stored_log_mass(log_q, view)
    has_off = log_off > -math.inf
    safe_off = _where(has_off, log_off)
    safe_tail = _where(has_off, log_tail)
    neg_entropy = (log_q.exp() * log_q).sum(-1)
    terms = neg_entropy - (stored_q * _where(view.valid, view.log_p)).sum(-1)
    return terms - _where(has_off, safe_off.exp() * (safe_tail - torch.log(_others(view, vocab))))


def kl_loss(
    student_logits: torch.Tensor,
    teacher: SparseTargets,
    *,
    temperature: float,
    tail: TailReconstruction = STUDENT_TAIL,
) -> torch.Tensor:
    """Forward KL distillation: T²·mean over positions of KL(p_T^T ‖ p_S^T)."""
    return temperature**2 * masked_mean(kl_terms(student_logits, teacher, temperature=temperature, tail=tail))


def reverse_kl_loss(
    student_logits: torch.Tensor,
    teacher: SparseTargets,
    *,
    temperature: float,
    tail: TailReconstruction = STUDENT_TAIL,
    min_tail: float = 1e-8,
) -> torch.Tensor:
    """Reverse KL distillation: T²·mean over positions of KL(p_S^T ‖ p_T^T)."""
    terms = reverse_kl_terms(student_logits, teacher, temperature=temperature, tail=tail, min_tail=min_tail)
    return temperature**2 * masked_mean(terms)
