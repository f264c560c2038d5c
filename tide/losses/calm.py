"""Chunk-level losses for the cross-tokenizer pipeline: CALM, reverse CALM, TIDAL-CALM (docs/design.md#calm-family).

Per active chunk (masked, not in the prompt) with student log-prob ℓ_S (differentiable) and cached teacher
log-prob ℓ_T, at temperature T: s = exp(ℓ_S/T), q = exp(ℓ_T/T).

* CALM:                −[q·log s + (1 − q)·log(1 − s)]
* reverse CALM:        −[s·log q + (1 − s)·log(1 − q)]
* TIDAL-CALM:          m = stopgrad((1 − λ)·s + λ·q); −[m·log s + (1 − m)·log(1 − s)], midrange-weighted
* reverse TIDAL-CALM:  −[s·log m + (1 − s)·log(1 − m)], midrange-weighted

Two forms, chosen by ``clamp``:

* ``clamp=ε`` (the original's, ``CALM_CLAMP`` = 1e−7 is the training default through
  :class:`tide.losses.registry.LossOptions`): s, q and the mixture m are computed in fp32 and clamped to
  [ε, 1 − ε] (in fp32 the upper bound rounds to 1 − 1.19e−7), so log(1 − q) ≥ −15.94 and a chunk whose
  probability is clamped passes no gradient. A near-certain teacher chunk (q → 1) thus weighs log(1 − q)
  at −15.94 instead of its true, much larger magnitude.
* ``clamp=None`` (the functions' own default): everything in log space: log s = ℓ_S/T,
  log(1 − s) = log1mexp(ℓ_S/T), and for the mixture log m = logaddexp(log(1−λ) + log s, log λ + log q),
  log(1 − m) = logaddexp(log(1−λ) + log(1−s), log λ + log(1−q)). No probability is clamped, so a very
  unlikely or near-certain chunk keeps its gradient. The one guard: a chunk log-prob of exactly 0
  (probability 1 in fp32) would give log(1 − s) = −inf; log(1 − ·) is evaluated at x = −(smallest normal
  fp32) there instead, a finite value (≈ −87.3) with no gradient through that term.

Losses are averaged over active chunks (TIDAL-CALM: Σ w·term / number of active chunks).
"""

from __future__ import annotations

import torch

from tide.losses.common import check_temperature, check_timesteps, masked_mean
from tide.losses.tidal import DEFAULT_SCHEDULE, TidalSchedule
from tide.targets import log1mexp

DEFAULT_CHUNK_TEMPERATURE = 5.0
CALM_CLAMP = 1e-7  # the original's probability clamp (distill_bd3lm.py: compute_alm_loss)

_FP32_TINY = torch.finfo(torch.float32).tiny


def _chunk_vector(name: str, x: torch.Tensor, n: int | None = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 1 or not x.dtype.is_floating_point:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a 1-D floating tensor of chunk log-probs, got {shape}")
    if n is not None and x.shape[0] != n:
        raise ValueError(f"{name} must have {n} chunks, got {x.shape[0]}")
    x = x.float()
    if x.numel() and not bool((torch.isfinite(x) & (x <= 0)).all()):
        bad = x[~(torch.isfinite(x) & (x <= 0))][0].item()
        raise ValueError(f"{name} must be finite log-probs ≤ 0 for every active chunk, found {bad}")
    return x


def _select_active(
    student_logprob: torch.Tensor,
    teacher_logprob: torch.Tensor,
    t: torch.Tensor | float | None,
    active: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Drop inactive chunks first, so NaN placeholders of unmasked chunks never enter the arithmetic."""
    if student_logprob.ndim != 1 or teacher_logprob.shape != student_logprob.shape:
        raise ValueError(
            f"student_logprob and teacher_logprob must be 1-D of equal length, got "
            f"{tuple(student_logprob.shape)} and {tuple(teacher_logprob.shape)}"
        )
    n = student_logprob.shape[0]
    device = student_logprob.device
    t_vec = None if t is None else check_timesteps("t", t, n, device)
    if active is not None:
        if active.shape != (n,) or active.dtype != torch.bool:
            raise ValueError(f"active must be bool with shape ({n},), got {active.dtype} {tuple(active.shape)}")
        active = active.to(device)
        student_logprob = student_logprob[active]
        teacher_logprob = teacher_logprob.to(device)[active]
        t_vec = None if t_vec is None else t_vec[active]
    s_log = _chunk_vector("student_logprob", student_logprob)
    t_log = _chunk_vector("teacher_logprob", teacher_logprob.to(device))
    return s_log, t_log, t_vec


def log_prob_pair(
    chunk_logprob: torch.Tensor, temperature: float, clamp: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p, log(1 − p)) of p = exp(ℓ/T): in log space, or of p clamped to [clamp, 1 − clamp] in fp32."""
    log_p = chunk_logprob / temperature
    if clamp is None:
        return log_p, log1mexp(torch.clamp(log_p, max=-_FP32_TINY))
    p = torch.exp(log_p.float()).clamp(clamp, 1 - clamp)
    return torch.log(p), torch.log1p(-p)


def _bernoulli_cross_entropy(
    coef: torch.Tensor, log_x: torch.Tensor, log_one_minus_x: torch.Tensor
) -> torch.Tensor:
    return -(coef * log_x + (1 - coef) * log_one_minus_x)


def calm_terms(
    student_logprob: torch.Tensor,
    teacher_logprob: torch.Tensor,
    *,
    temperature: float = DEFAULT_CHUNK_TEMPERATURE,
    reverse: bool = False,
    clamp: float | None = None,
) -> torch.Tensor:
    """CALM per chunk, (C,): −[q·log s + (1 − q)·log(1 − s)]; ``reverse=True`` gives reverse CALM (TIDE-Cross),
    −[s·log q + (1 − s)·log(1 − q)]. Inputs: (C,) chunk log-probs of active chunks."""
    temperature = check_temperature(temperature)
    s_lp, t_lp, _ = _select_active(student_logprob, teacher_logprob, None, None)
    scored, weighted = (t_lp, s_lp) if reverse else (s_lp, t_lp)
    log_x, log_1mx = log_prob_pair(scored, temperature, clamp)
    coef = torch.exp(log_prob_pair(weighted, temperature, clamp)[0])
    return _bernoulli_cross_entropy(coef, log_x, log_1mx)


def _mixture_logs(
    log_s: torch.Tensor,
    log_1ms: torch.Tensor,
    log_q: torch.Tensor,
    log_1mq: torch.Tensor,
    lam: torch.Tensor,
    clamp: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log m, log(1 − m)) of m = (1 − λ)s + λq, detached (clamped to [clamp, 1 − clamp] when given)."""
    if clamp is not None:
        m = ((1 - lam) * log_s.detach().exp() + lam * log_q.exp()).clamp(clamp, 1 - clamp)
        return torch.log(m), torch.log1p(-m)
    log_lam = torch.log(lam)
    log_1mlam = torch.log1p(-lam)
    log_m = torch.logaddexp(log_1mlam + log_s.detach(), log_lam + log_q)
    log_1mm = torch.logaddexp(log_1mlam + log_1ms.detach(), log_lam + log_1mq)
    return log_m, log_1mm


def tidal_calm_terms(
    student_logprob: torch.Tensor,
    teacher_logprob: torch.Tensor,
    t: torch.Tensor | float,
    *,
    temperature: float = DEFAULT_CHUNK_TEMPERATURE,
    progress: float,
    schedule: TidalSchedule = DEFAULT_SCHEDULE,
    reverse: bool = False,
    clamp: float | None = None,
) -> torch.Tensor:
    """TIDAL-CALM per chunk, (C,), unweighted; ``reverse=True`` gives −[s·log m + (1 − s)·log(1 − m)]."""
    temperature = check_temperature(temperature)
    s_lp, t_lp, t_vec = _select_active(student_logprob, teacher_logprob, t, None)
    lam = schedule.lam(progress, t_vec)
    log_s, log_1ms = log_prob_pair(s_lp, temperature, clamp)
    log_q, log_1mq = log_prob_pair(t_lp, temperature, clamp)
    log_m, log_1mm = _mixture_logs(log_s, log_1ms, log_q, log_1mq, lam, clamp)
    if reverse:
        return _bernoulli_cross_entropy(log_s.exp(), log_m, log_1mm)
    return _bernoulli_cross_entropy(log_m.exp(), log_s, log_1ms)


def calm_loss(
    student_logprob: torch.Tensor,
    teacher_logprob: torch.Tensor,
    *,
    active: torch.Tensor | None = None,
    temperature: float = DEFAULT_CHUNK_TEMPERATURE,
    reverse: bool = False,
    clamp: float | None = None,
) -> torch.Tensor:
    """Mean CALM (or reverse CALM) over active chunks. ``active``: optional bool (C,) (masked, not prompt)."""
    s_lp, t_lp, _ = _select_active(student_logprob, teacher_logprob, None, active)
    return masked_mean(calm_terms(s_lp, t_lp, temperature=temperature, reverse=reverse, clamp=clamp))


def tidal_calm_loss(
    student_logprob: torch.Tensor,
    teacher_logprob: torch.Tensor,
    t: torch.Tensor | float,
    *,
    progress: float,
    active: torch.Tensor | None = None,
    temperature: float = DEFAULT_CHUNK_TEMPERATURE,
    schedule: TidalSchedule = DEFAULT_SCHEDULE,
    reverse: bool = False,
    clamp: float | None = None,
) -> torch.Tensor:
    """Σ over active chunks of w(t)·TIDAL-CALM term / number of active chunks."""
    s_lp, t_lp, t_vec = _select_active(student_logprob, teacher_logprob, t, active)
    terms = tidal_calm_terms(s_lp, t_lp, t_vec, temperature=temperature, progress=progress, schedule=schedule,
                             reverse=reverse, clamp=clamp)
    return masked_mean(terms, weights=schedule.weight(t_vec))


__all__ = [
    "CALM_CLAMP",
    "DEFAULT_CHUNK_TEMPERATURE",
    "calm_loss",
    "calm_terms",
    "log_prob_pair",
    "tidal_calm_loss",
    "tidal_calm_terms",
]
