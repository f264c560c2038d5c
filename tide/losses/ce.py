"""BD3LM cross-entropy (docs/design.md#ce-term): Σ over masked i of (1/t)·(−log p_S(x_i)) / number of maskable tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tide.losses.common import check_matrix, check_timesteps, masked_mean


def ce_terms(
    student: torch.Tensor,
    gold_ids: torch.Tensor,
    t: torch.Tensor | float,
    *,
    from_log_probs: bool = False,
) -> torch.Tensor:
    """Per masked position (1/t)·(−log p_S(x_i)), fp32 (M,).

    Args:
        student: (M, V) student logits at the masked positions, or log-probs with ``from_log_probs=True``.
        gold_ids: (M,) clean ids x0 at those positions, in [0, V).
        t: (M,) timestep of each position's sequence, or one float for all.
    """
    x = check_matrix("student", student)
    m, vocab = x.shape
    if gold_ids.shape != (m,) or gold_ids.dtype.is_floating_point or gold_ids.dtype == torch.bool:
        raise ValueError(f"gold_ids must be integer with shape ({m},), got {gold_ids.dtype} {tuple(gold_ids.shape)}")
    gold = gold_ids.to(device=x.device, dtype=torch.long)
    if m and (int(gold.min()) < 0 or int(gold.max()) >= vocab):
        raise ValueError(f"gold_ids must lie in [0, {vocab}), got range [{int(gold.min())}, {int(gold.max())}]")
    t = check_timesteps("t", t, m, x.device)
    if from_log_probs:
        nll = F.nll_loss(x, gold, reduction="none")
    else:
        nll = F.cross_entropy(x, gold, reduction="none")
    return nll / t


def ce_loss(
    student: torch.Tensor,
    gold_ids: torch.Tensor,
    t: torch.Tensor | float,
    *,
    num_maskable: int | torch.Tensor,
    from_log_probs: bool = False,
) -> torch.Tensor:
    """BD3LM CE: ``ce_terms`` summed and divided by the number of maskable tokens in the batch."""
    terms = ce_terms(student, gold_ids, t, from_log_probs=from_log_probs)
    if not isinstance(num_maskable, torch.Tensor) and num_maskable < terms.numel():
        raise ValueError(
            f"num_maskable={num_maskable} is below the number of masked positions {terms.numel()} "
            "(masked positions are a subset of the maskable ones)"
        )
    return masked_mean(terms, count=num_maskable)
