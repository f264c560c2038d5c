"""Vocabulary losses under the student-shaped tail, fused: one pass set over the (N, V) slice for every mode
at one temperature, and a closed-form gradient (docs/design.md#kl-and-reverse-kl, #tidal).

Why fused: written as autograd over the bucket forms, each mode runs its own tempered log-softmax, a
scattered copy for the student's off-stored mass and a log-sum-exp, and keeps several (N, V) temporaries
for the backward; at the real vocabulary those passes, not the LM-head matmul, made a cached step cost
1.4× a CE step. Here the forward reads the logits with one (N, V) buffer (z/T with the stored ids set to
−inf, exponentiated against its own maximum and summed: the off-stored mass Q as a sum of positives, never
1 − Σ, and without underflow however small it is) and the backward writes the gradient in one dense pass plus a scatter at the stored ids.

With u = z/T, q = softmax(u), S the stored ids, p / τ the teacher's stored probabilities / tail mass and
Q = Σ_{v∉S} q_v, the gradients of the per-position terms w.r.t. u are (derived in docs/design.md):

* ``kl``  Σ_S p log(p/q) + τ log(τ/Q):             q_v·m − p_v on S, q_v·(m − τ/Q) off S, m = Σ_S p + τ;
* ``tidal`` Σ_S r log(r/q) + r_τ log(r_τ/Q), r the (|S| + 1)-bucket target held fixed:
  q_v·ρ − r_v on S, q_v·(ρ − r_τ/Q) off S, ρ = Σ r;
* ``reverse_kl`` R = Σ_S q log(q/p) + Q log(Q/τ):   q_v·(c_v − R), c = log(q/p) on S, log(Q/τ) off S.

Every one is q times a per-row constant off S, so the modes' gradients add into one dense coefficient per
row. m and ρ are kept as computed (not replaced by 1), so the result is the autograd gradient of the
written formula even where stored values do not sum to exactly 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from tide.losses.common import scaled_log as _scaled_log
from tide.losses.common import zero_where_not as _where
from tide.targets import TeacherAtTemperature

MODES = ("kl", "reverse_kl", "tidal")


def floored_log_tail(view: TeacherAtTemperature, vocab: int, min_tail: float) -> torch.Tensor:
    """log τ with ``min_tail`` where the stored tail is 0 although some ids are unstored (it underflowed)."""
    if not 0.0 < min_tail < 1.0:
        raise ValueError(f"min_tail must lie in (0, 1), got {min_tail}")
    underflow = torch.isneginf(view.log_tail) & (view.counts < vocab)
    return torch.where(underflow, torch.full_like(view.log_tail, math.log(min_tail)), view.log_tail)


def _softmax_stats(z: torch.Tensor, view: TeacherAtTemperature, inv_t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(lse (N,), log Q (N,)) of u = z/T: the log-partition and the log-mass off the stored ids.

    The off-stored sum is shifted by its own maximum, so a student whose off-stored mass is 1e-40 of its
    top still gets a finite log Q; the stored part comes from the (N, K) gathered logits."""
    stored = torch.where(view.valid, z.gather(1, view.ids) * inv_t, torch.full(view.ids.shape, -math.inf,
                                                                                dtype=z.dtype, device=z.device))
    buffer = z * inv_t  # the forward's only (N, V) allocation
    buffer.scatter_(1, view.ids, -math.inf)  # padded ids repeat the first id: the same write
    top_off = buffer.amax(dim=1, keepdim=True)
    top_off = torch.where(torch.isfinite(top_off), top_off, torch.zeros_like(top_off))  # every id stored
    log_off_sum = buffer.sub_(top_off).exp_().sum(dim=1).log() + top_off[:, 0]
    lse = torch.logaddexp(torch.logsumexp(stored, dim=1), log_off_sum)
    return lse, log_off_sum - lse


def _kl(view, log_q_top, q_top, log_off):
    """Forward KL: (term, dense coefficient, gradient at the stored ids), all w.r.t. u."""
    log_p = _where(view.valid, view.log_p)
    p = _where(view.valid, log_p.exp())
    tau = view.log_tail.exp()
    has_tail = tau > 0
    term = _where(view.valid, p * (log_p - log_q_top)).sum(1)
    term = term + _where(has_tail, tau * (_where(has_tail, view.log_tail) - _where(has_tail, log_off)))
    mass = p.sum(1) + tau
    dense = mass - _where(has_tail, torch.exp(_where(has_tail, view.log_tail) - _where(has_tail, log_off)))
    return term, dense, q_top * mass[:, None] - p


def _tidal(view, log_q_top, q_top, log_off, lam):
    """TIDAL KL(r ‖ q) with r the fixed (|S| + 1)-bucket target: (term, dense coefficient, stored gradient)."""
    lam = lam[:, None]
    mixed_top = _scaled_log(1 - lam, log_q_top) + _scaled_log(lam, view.log_p)
    mixed_top = torch.where(view.valid, mixed_top, torch.full_like(mixed_top, -math.inf))
    mixed_tail = _scaled_log(1 - lam[:, 0], log_off) + _scaled_log(lam[:, 0], view.log_tail)
    log_r = torch.log_softmax(torch.cat([mixed_top, mixed_tail[:, None]], dim=1), dim=1)
    log_r_top, log_r_tail = log_r[:, :-1], log_r[:, -1]
    r_top, r_tail = log_r_top.exp(), log_r_tail.exp()
    on_top, on_tail = r_top > 0, r_tail > 0
    term = _where(on_top, r_top * (_where(on_top, log_r_top) - log_q_top)).sum(1)
    term = term + _where(on_tail, r_tail * (_where(on_tail, log_r_tail) - _where(on_tail, log_off)))
    rho = r_top.sum(1) + r_tail
    dense = rho - _where(on_tail, torch.exp(_where(on_tail, log_r_tail) - _where(on_tail, log_off)))
    return term, dense, q_top * rho[:, None] - r_top


def _reverse_kl(view, log_q_top, q_top, log_off, log_tail):
    """Reverse KL: (term, dense coefficient, stored gradient); ``log_tail`` already floored."""
    has_off = log_off > -math.inf
    c_top = _where(view.valid, log_q_top - _where(view.valid, view.log_p))
    c_off = _where(has_off, _where(has_off, log_off) - _where(has_off, log_tail))
    term = (q_top * c_top).sum(1) + _where(has_off, _where(has_off, log_off).exp() * c_off)
    dense = _where(has_off, c_off - term)
    return term, dense, q_top * (c_top - term[:, None])


class _StudentTailTerms(torch.autograd.Function):
    """Per-position terms (N, n_modes) of ``modes`` and their closed-form gradient w.r.t. the logits."""

    @staticmethod
    def forward(ctx, z, view, modes, lam, log_tail_floored):  # noqa: D102 - see the class docstring
        inv_t = 1.0 / view.temperature
        with torch.no_grad():
            lse, log_off = _softmax_stats(z, view, inv_t)
            log_q_top = _where(view.valid, z.gather(1, view.ids) * inv_t - lse[:, None])
            q_top = _where(view.valid, log_q_top.exp())
            terms, dense, stored = [], [], []
            for mode in modes:
                if mode == "kl":
                    out = _kl(view, log_q_top, q_top, log_off)
                elif mode == "tidal":
                    out = _tidal(view, log_q_top, q_top, log_off, lam)
                else:
                    out = _reverse_kl(view, log_q_top, q_top, log_off, log_tail_floored)
                terms.append(out[0])
                dense.append(out[1])
                stored.append(out[2])
        ctx.save_for_backward(z, lse, view.ids, view.valid, torch.stack(dense, 1), torch.stack(stored, 2))
        ctx.inv_t = inv_t
        return torch.stack(terms, 1)

    @staticmethod
    def backward(ctx, grad_terms):  # noqa: D102
        z, lse, ids, valid, dense, stored = ctx.saved_tensors
        inv_t = ctx.inv_t
        coefficient = (dense * grad_terms).sum(1) * inv_t
        values = (stored * grad_terms[:, None, :]).sum(2) * inv_t
        values = torch.where(valid, values, values[:, :1])  # padding writes the first id's value again
        grad = z * inv_t  # the backward's only (N, V) allocation: q, then the gradient, in place
        grad.sub_(lse[:, None]).exp_().mul_(coefficient[:, None])
        grad.scatter_(1, ids, values)
        return grad, None, None, None, None


def student_tail_terms(
    logits: torch.Tensor,
    view: TeacherAtTemperature,
    modes: Sequence[str],
    *,
    lam: torch.Tensor | None = None,
    min_tail: float = 1e-8,
) -> torch.Tensor:
    """Per-position terms (N, len(modes)), fp32, without T², of vocabulary ``modes`` (any of :data:`MODES`)
    under the student-shaped tail, sharing one softmax over ``logits`` (N, V) fp32 at ``view.temperature``.

    ``lam`` (N,): TIDAL's λ per position (needed when ``"tidal"`` is among the modes); ``min_tail``: the
    reverse-KL floor of a tail stored as exactly 0 (:func:`floored_log_tail`). Differentiable in ``logits``
    (first order)."""
    modes = tuple(modes)
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown or not modes:
        raise ValueError(f"modes must be a non-empty subset of {MODES}, got {list(modes)}")
    if "tidal" in modes and (lam is None or lam.shape != (logits.shape[0],)):
        raise ValueError(f"tidal needs λ per position, shape ({logits.shape[0]},)")
    log_tail = floored_log_tail(view, logits.shape[1], min_tail) if "reverse_kl" in modes else view.log_tail
    return _StudentTailTerms.apply(logits, view, modes, lam, log_tail)
