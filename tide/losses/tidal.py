"""TIDAL: dual-axis interpolated distillation (docs/design.md#tidal).

λ schedule: progress π = step / max_steps; g = ½(1 − cos(π·π)) (``cosine``) or π (``linear``);
λ_train = λ0 + (λmax − λ0)·g; λ = λ_train·(1 − t) for axis ``both``, λ_train for ``training_only``,
λmax·(1 − t) for ``timestep_only``.

Target r = stopgrad softmax((1 − λ)·z_S/T + λ·z_T/T); loss per position KL(r ‖ p_S^T), weighted by the
midrange weight w(t) = exp(−(t − 0.5)²/(2·0.15²)) or 1 (``uniform``); Σ w·KL / number of positions, × T².

Representing z_T/T. The cache holds the teacher only as top-k values and log-partitions, so z_T/T is taken
as ``log p_T^T`` of the reconstructed teacher (exact on the top-k, ``log(tail/(V − k))`` on every other id).
Since ``log p_T^T = z_T/T − log Z_T`` and the softmax ignores a per-row constant, using ``log p_T^T`` in
place of ``z_T/T`` gives the same r; with k = V it is exactly the formula above. The mixed logits are
built directly ((N, V), once) with the teacher's log-probs scattered at its top-k ids, without a separate
(N, V) teacher tensor.
"""

from __future__ import annotations

import math

import torch

from tide.losses.common import check_temperature, check_timesteps, check_unit, masked_mean
from tide.losses.kl import check_teacher, teacher_log_parts

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


def timestep_weight(t: torch.Tensor, weighting: str) -> torch.Tensor:
    """Per-item weight for ``weighting`` in {"midrange", "uniform"}."""
    if weighting == "midrange":
        return midrange_weight(t)
    if weighting == "uniform":
        return torch.ones_like(t)
    raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")


def tidal_lambda(
    progress: float,
    t: torch.Tensor | float,
    *,
    axis: str = "both",
    decay: str = "cosine",
    lambda0: float = 0.1,
    lambda_max: float = 0.9,
) -> torch.Tensor | float:
    """The TIDAL interpolation weight λ for training progress π ∈ [0, 1] and timestep(s) t."""
    progress = check_unit("progress", progress)
    lambda0 = check_unit("lambda0", lambda0)
    lambda_max = check_unit("lambda_max", lambda_max)
    if axis not in AXES:
        raise ValueError(f"axis must be one of {AXES}, got {axis!r}")
    if decay == "cosine":
        g = 0.5 * (1.0 - math.cos(math.pi * progress))
    elif decay == "linear":
        g = progress
    else:
        raise ValueError(f"decay must be one of {DECAYS}, got {decay!r}")
    lambda_train = lambda0 + (lambda_max - lambda0) * g
    if axis == "training_only":
        return torch.full_like(t, lambda_train) if isinstance(t, torch.Tensor) else lambda_train
    scale = lambda_train if axis == "both" else lambda_max
    return scale * (1 - t)


def _scaled_log(weight: torch.Tensor, log_value: torch.Tensor) -> torch.Tensor:
    """weight·log_value with 0·(−inf) read as 0 (an unused teacher gives no mass, not NaN)."""
    return torch.where(weight > 0, weight * log_value, torch.zeros_like(log_value))


def tidal_terms(
    student_logits: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_values: torch.Tensor,
    teacher_log_partition: torch.Tensor,
    t: torch.Tensor | float,
    *,
    temperature: float,
    progress: float,
    axis: str = "both",
    decay: str = "cosine",
    lambda0: float = 0.1,
    lambda_max: float = 0.9,
) -> torch.Tensor:
    """Per position KL(r ‖ p_S^T), fp32 (N,), unweighted and without T².

    Args:
        student_logits: (N, V) over the shared slice; teacher_*: cached top-k at ``temperature``
            (``teacher_log_partition`` (N,) is the column for that temperature); t: (N,) or float.
    """
    temperature = check_temperature(temperature)
    z, ids = check_teacher(student_logits, teacher_ids, teacher_values, teacher_log_partition)
    n, vocab = z.shape
    t = check_timesteps("t", t, n, z.device)
    lam = tidal_lambda(progress, t, axis=axis, decay=decay, lambda0=lambda0, lambda_max=lambda_max)
    log_q = torch.log_softmax(z / temperature, dim=-1)
    with torch.no_grad():
        log_p_top, log_tail = teacher_log_parts(ids, teacher_values, teacher_log_partition, temperature, vocab, z.device)
        z_scaled = z.detach() / temperature
        mixed = (1 - lam)[:, None] * z_scaled
        if log_tail is not None:
            log_per_id = log_tail - math.log(vocab - ids.shape[1])
            mixed = mixed + _scaled_log(lam, log_per_id)[:, None]
        mixed_top = (1 - lam)[:, None] * z_scaled.gather(1, ids) + _scaled_log(lam[:, None], log_p_top)
        mixed = mixed.scatter(1, ids, mixed_top)
        log_r = torch.log_softmax(mixed, dim=-1)
        r = log_r.exp()
    contrib = torch.where(r > 0, r * (log_r - log_q), torch.zeros_like(log_q))
    return contrib.sum(-1)


def tidal_loss(
    student_logits: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_values: torch.Tensor,
    teacher_log_partition: torch.Tensor,
    t: torch.Tensor | float,
    *,
    temperature: float,
    progress: float,
    axis: str = "both",
    decay: str = "cosine",
    lambda0: float = 0.1,
    lambda_max: float = 0.9,
    weighting: str = "midrange",
) -> torch.Tensor:
    """TIDAL: T²·Σ_positions w(t)·KL(r ‖ p_S^T) / number of positions."""
    terms = tidal_terms(
        student_logits,
        teacher_ids,
        teacher_values,
        teacher_log_partition,
        t,
        temperature=temperature,
        progress=progress,
        axis=axis,
        decay=decay,
        lambda0=lambda0,
        lambda_max=lambda_max,
    )
    t_vec = check_timesteps("t", t, terms.shape[0], terms.device)
    return temperature**2 * masked_mean(terms, weights=timestep_weight(t_vec, weighting))
