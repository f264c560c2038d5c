"""Vocabulary distillation against a top-k teacher: forward and reverse KL (docs/design.md#kl-and-reverse-kl).

The teacher at temperature T is the cached top-k, exact on its k ids (``p = exp(value/T − log Z_T)``), plus
one tail bucket of mass ``tail = 1 − Σ_topk p`` spread uniformly over the V − k other ids (tide.targets).
Both KLs are computed from the top-k and the tail in closed form, without an (N, V) teacher tensor:

* forward: ``Σ_topk p (log p − log q) + tail·log(tail/(V−k)) − (tail/(V−k))·Σ_{v∉topk} log q_v``,
* reverse: ``Σ_v q log q − Σ_topk q log p − (1 − Σ_topk q)·log(tail/(V−k))``,

where q = p_S^T. With k = V the tail terms vanish and both equal the full-vocabulary formulas.
"""

from __future__ import annotations

import math

import torch

from tide.losses.common import check_matrix, check_temperature, masked_mean
from tide.targets import log_tail_mass, topk_log_probs


def check_teacher(
    student_logits: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_values: torch.Tensor,
    teacher_log_partition: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate (N, V) student logits against a (N, k) top-k teacher; returns fp32 logits and long ids."""
    z = check_matrix("student_logits", student_logits)
    n, vocab = z.shape
    if teacher_ids.ndim != 2 or teacher_ids.shape[0] != n or teacher_values.shape != teacher_ids.shape:
        raise ValueError(
            f"teacher_ids and teacher_values must be (N={n}, k), got {tuple(teacher_ids.shape)} "
            f"and {tuple(teacher_values.shape)}"
        )
    if teacher_log_partition.shape != (n,):
        raise ValueError(f"teacher_log_partition must have shape ({n},), got {tuple(teacher_log_partition.shape)}")
    k = teacher_ids.shape[1]
    if not 0 < k <= vocab:
        raise ValueError(f"teacher top-k width k={k} must lie in [1, V={vocab}] (student slice width)")
    ids = teacher_ids.to(device=z.device, dtype=torch.long)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise ValueError(f"teacher_ids must lie in [0, {vocab}), got range [{int(ids.min())}, {int(ids.max())}]")
    return z, ids


def teacher_log_parts(
    ids: torch.Tensor,
    values: torch.Tensor,
    log_partition: torch.Tensor,
    temperature: float,
    vocab: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Teacher top-k log-probs (N, k) at T and the log tail mass (N,) (None when k = V: no tail ids)."""
    values = values.to(device)
    log_partition = log_partition.to(device)
    log_p_top = topk_log_probs(values, log_partition, temperature)
    k = ids.shape[1]
    if k == vocab:
        return log_p_top, None
    log_tail = log_tail_mass(values, log_partition, temperature)
    return log_p_top, log_tail


def kl_terms(
    student_logits: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_values: torch.Tensor,
    teacher_log_partition: torch.Tensor,
    *,
    temperature: float,
) -> torch.Tensor:
    """Per position KL(p_T^T ‖ p_S^T), fp32 (N,), without the T² factor.

    Args:
        student_logits: (N, V) over the shared vocabulary slice.
        teacher_ids, teacher_values: (N, k) cached top-k (values = logits − row max, any float dtype).
        teacher_log_partition: (N,) ``log Z_T`` stored for ``temperature``.
    """
    temperature = check_temperature(temperature)
    z, ids = check_teacher(student_logits, teacher_ids, teacher_values, teacher_log_partition)
    vocab = z.shape[1]
    log_q = torch.log_softmax(z / temperature, dim=-1)
    log_q_top = log_q.gather(1, ids)
    log_p_top, log_tail = teacher_log_parts(ids, teacher_values, teacher_log_partition, temperature, vocab, z.device)
    terms = (log_p_top.exp() * (log_p_top - log_q_top)).sum(-1)
    if log_tail is None:
        return terms
    other = vocab - ids.shape[1]
    tail = log_tail.exp()
    log_per_id = log_tail - math.log(other)
    self_term = torch.where(tail > 0, tail * log_per_id, torch.zeros_like(tail))
    sum_other_log_q = log_q.sum(-1) - log_q_top.sum(-1)
    return terms + self_term - (tail / other) * sum_other_log_q


def reverse_kl_terms(
    student_logits: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_values: torch.Tensor,
    teacher_log_partition: torch.Tensor,
    *,
    temperature: float,
    min_tail: float = 1e-8,
) -> torch.Tensor:
    """Per position KL(p_S^T ‖ p_T^T), fp32 (N,), without the T² factor.

    ``min_tail`` floors the teacher tail mass (k < V only): a tail that rounds to 0 would make the reverse
    KL infinite wherever the student puts mass outside the top-k. The fp32 log-partition resolves tails to
    about 1e-7 anyway, so the floor only replaces noise. It has no effect at k = V.
    """
    temperature = check_temperature(temperature)
    if not 0.0 < min_tail < 1.0:
        raise ValueError(f"min_tail must lie in (0, 1), got {min_tail}")
    z, ids = check_teacher(student_logits, teacher_ids, teacher_values, teacher_log_partition)
    vocab = z.shape[1]
    log_q = torch.log_softmax(z / temperature, dim=-1)
    neg_entropy = (log_q.exp() * log_q).sum(-1)
    q_top = log_q.gather(1, ids).exp()
    log_p_top, log_tail = teacher_log_parts(ids, teacher_values, teacher_log_partition, temperature, vocab, z.device)
    terms = neg_entropy - (q_top * log_p_top).sum(-1)
    if log_tail is None:
        return terms
    log_per_id = torch.clamp(log_tail, min=math.log(min_tail)) - math.log(vocab - ids.shape[1])
    return terms - (1.0 - q_top.sum(-1)) * log_per_id


def kl_loss(
    student_logits: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_values: torch.Tensor,
    teacher_log_partition: torch.Tensor,
    *,
    temperature: float,
) -> torch.Tensor:
    """Forward KL distillation: T²·mean over positions of KL(p_T^T ‖ p_S^T)."""
    terms = kl_terms(student_logits, teacher_ids, teacher_values, teacher_log_partition, temperature=temperature)
    return temperature**2 * masked_mean(terms)


def reverse_kl_loss(
    student_logits: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_values: torch.Tensor,
    teacher_log_partition: torch.Tensor,
    *,
    temperature: float,
    min_tail: float = 1e-8,
) -> torch.Tensor:
    """Reverse KL distillation: T²·mean over positions of KL(p_S^T ‖ p_T^T)."""
    terms = reverse_kl_terms(
        student_logits, teacher_ids, teacher_values, teacher_log_partition, temperature=temperature, min_tail=min_tail
    )
    return temperature**2 * masked_mean(terms)
