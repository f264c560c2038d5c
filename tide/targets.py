"""Sparse teacher targets: top-k logits plus what is needed to rebuild tempered probabilities (docs/design.md#top-k-targets).

Per target position the cache keeps, over the shared vocabulary slice ``[0, V)``:

* ``topk_ids`` (k,) and ``topk_values`` (k,): the k largest teacher logits minus the row maximum, sorted
  descending (so the first value is 0);
* ``log_partitions`` (n_T,): ``log Σ_v exp(value_v / T)`` over the whole slice for each stored temperature
  (the first is always T = 1);
* ``gold_logprob``: the teacher log-prob (T = 1, over the slice) of the student's gold token.

From these, the tempered teacher at T is exact on the top-k, ``p_v = exp(value_v / T − log Z_T)``, and the
remaining mass ``tail = 1 − Σ_topk p_v`` is exact as a total; where a full vector is needed the tail is
spread uniformly over the V − k ids outside the top-k. With k = V the reconstruction is exact.

All computations are in fp32; fp16-stored values are cast first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

_LN2 = math.log(2.0)


@dataclass(frozen=True)
class SparseTargets:
    """Top-k teacher targets for N positions.

    Attributes:
        topk_ids: int32 (N, k) vocabulary ids, by descending logit.
        topk_values: float32 (N, k) logits minus the row max over the slice (first column 0).
        log_partitions: float32 (N, n_T) ``log Σ_v exp(value_v / T)`` over the slice, one column per temperature.
        gold_logprob: float32 (N,) teacher log-prob of the gold id at T = 1; NaN where the gold id is outside
            the slice.
        temperatures: the temperatures of the ``log_partitions`` columns, starting with 1.0.
        vocab_size: size of the shared slice the targets were taken over.
    """

    topk_ids: torch.Tensor
    topk_values: torch.Tensor
    log_partitions: torch.Tensor
    gold_logprob: torch.Tensor
    temperatures: tuple[float, ...]
    vocab_size: int

    def log_partition_at(self, temperature: float) -> torch.Tensor:
        """The (N,) log-partition column stored for ``temperature``."""
        return self.log_partitions[:, temperature_column(self.temperatures, temperature)]


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """Stable ``log(1 − exp(x))`` for x ≤ 0: ``log(−expm1(x))`` above −ln 2, ``log1p(−exp(x))`` below.

    Returns −inf at x = 0. Both branches are evaluated on safe inputs, so no NaN reaches the gradient.
    """
    near_zero = x > -_LN2
    x_near = torch.where(near_zero, x, torch.full_like(x, -_LN2))
    x_far = torch.where(near_zero, torch.full_like(x, -_LN2), x)
    return torch.where(near_zero, torch.log(-torch.expm1(x_near)), torch.log1p(-torch.exp(x_far)))


def normalize_temperatures(temperatures: Sequence[float]) -> tuple[float, ...]:
    """Put a temperature list in cache order: 1.0 first, then the others in given order, no duplicates."""
    values = _check_temperature_values(temperatures)
    ordered = [1.0] + [t for t in values if t != 1.0]
    return tuple(dict.fromkeys(ordered))


def _check_temperature_values(temperatures: Sequence[float]) -> list[float]:
    if isinstance(temperatures, (int, float)):
        raise ValueError(f"temperatures must be a sequence of floats, got the number {temperatures}")
    values = [float(t) for t in temperatures]
    if not values:
        raise ValueError("temperatures must not be empty")
    for t in values:
        if not math.isfinite(t) or t <= 0.0:
            raise ValueError(f"temperatures must be finite and positive, got {t}")
    return values


def _check_temperatures(temperatures: Sequence[float]) -> tuple[float, ...]:
    values = _check_temperature_values(temperatures)
    if values[0] != 1.0:
        raise ValueError(
            f"temperatures must start with 1.0, got {values}; use normalize_temperatures() to reorder"
        )
    if len(set(values)) != len(values):
        raise ValueError(f"temperatures must not repeat, got {values}")
    return tuple(values)


def temperature_column(temperatures: Sequence[float], temperature: float) -> int:
    """Index of ``temperature`` among the stored ``temperatures`` (exact float match)."""
    stored = [float(t) for t in temperatures]
    try:
        return stored.index(float(temperature))
    except ValueError:
        raise ValueError(
            f"temperature {temperature} is not stored in these targets (stored: {stored})"
        ) from None


def _check_temperature(temperature: float) -> float:
    temperature = float(temperature)
    if not math.isfinite(temperature) or temperature <= 0.0:
        raise ValueError(f"temperature must be finite and positive, got {temperature}")
    return temperature


@torch.no_grad()
def sparse_targets(
    logits: torch.Tensor,
    gold_ids: torch.Tensor,
    *,
    k: int,
    shared_vocab_size: int,
    temperatures: Sequence[float],
) -> SparseTargets:
    """Compress teacher logits (N, V_full) to top-k targets over the first ``shared_vocab_size`` ids.

    Computed in fp32 on ``logits.device``. ``gold_ids`` (N,) are the student's gold tokens (non-negative);
    a gold id ≥ ``shared_vocab_size`` gets a NaN ``gold_logprob``.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, V), got shape {tuple(logits.shape)}")
    n, full_vocab = logits.shape
    shared_vocab_size = int(shared_vocab_size)
    if not 0 < shared_vocab_size <= full_vocab:
        raise ValueError(f"shared_vocab_size must lie in [1, {full_vocab}] (logits width), got {shared_vocab_size}")
    k = int(k)
    if not 0 < k <= shared_vocab_size:
        raise ValueError(f"k must lie in [1, shared_vocab_size={shared_vocab_size}], got {k}")
    temps = _check_temperatures(temperatures)
    if gold_ids.shape != (n,):
        raise ValueError(f"gold_ids must have shape ({n},), got {tuple(gold_ids.shape)}")
    if gold_ids.dtype.is_floating_point or gold_ids.dtype == torch.bool:
        raise ValueError(f"gold_ids must be integer, got {gold_ids.dtype}")
    if n and int(gold_ids.min()) < 0:
        raise ValueError(f"gold_ids must be non-negative, got minimum {int(gold_ids.min())}")

    z = logits[:, :shared_vocab_size].float()
    values = z - z.max(dim=-1, keepdim=True).values
    if not torch.isfinite(values).all():
        raise ValueError("logits over the shared slice must be finite")
    top_values, top_ids = torch.topk(values, k, dim=-1, largest=True, sorted=True)
    # One temperature at a time: never an (N, n_T, V) intermediate.
    log_partitions = torch.stack([torch.logsumexp(values / temp, dim=-1) for temp in temps], dim=-1)

    gold = gold_ids.to(device=z.device, dtype=torch.long)
    in_slice = gold < shared_vocab_size
    gathered = values.gather(1, torch.where(in_slice, gold, torch.zeros_like(gold))[:, None])[:, 0]
    gold_logprob = torch.where(in_slice, gathered - log_partitions[:, 0], torch.full_like(gathered, math.nan))
    return SparseTargets(
        topk_ids=top_ids.to(torch.int32),
        topk_values=top_values,
        log_partitions=log_partitions,
        gold_logprob=gold_logprob,
        temperatures=temps,
        vocab_size=shared_vocab_size,
    )


def _check_pair(values: torch.Tensor, log_partition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if values.ndim < 1:
        raise ValueError("values must have a trailing top-k dimension")
    if log_partition.shape != values.shape[:-1]:
        raise ValueError(
            f"log_partition must have shape {tuple(values.shape[:-1])} (values without its last dim), "
            f"got {tuple(log_partition.shape)}"
        )
    return values.float(), log_partition.float()


def topk_log_probs(values: torch.Tensor, log_partition: torch.Tensor, temperature: float) -> torch.Tensor:
    """Exact tempered teacher log-probs of the top-k ids, (..., k): ``values / T − log Z_T``."""
    temperature = _check_temperature(temperature)
    values, log_partition = _check_pair(values, log_partition)
    return values / temperature - log_partition[..., None]


def topk_probs(values: torch.Tensor, log_partition: torch.Tensor, temperature: float) -> torch.Tensor:
    """Exact tempered teacher probabilities of the top-k ids, (..., k)."""
    return topk_log_probs(values, log_partition, temperature).exp()


def log_tail_mass(values: torch.Tensor, log_partition: torch.Tensor, temperature: float) -> torch.Tensor:
    """log of the teacher mass outside the top-k at T, (...,); −inf where it rounds to 0 (always for k = V).

    ``tail = 1 − exp(lse_topk)`` with ``lse_topk = logsumexp(values / T) − log Z_T``, evaluated as
    ``log1mexp(min(lse_topk, 0))``; rounding can make ``lse_topk`` slightly positive, read as no tail.
    """
    log_top = torch.logsumexp(topk_log_probs(values, log_partition, temperature), dim=-1)
    return log1mexp(torch.clamp(log_top, max=0.0))


def tail_mass(values: torch.Tensor, log_partition: torch.Tensor, temperature: float) -> torch.Tensor:
    """Teacher probability mass outside the top-k at T, (...,), in [0, 1]."""
    return log_tail_mass(values, log_partition, temperature).exp()


def _check_ids(ids: torch.Tensor, values: torch.Tensor, vocab_size: int) -> torch.Tensor:
    if ids.shape != values.shape or ids.ndim != 2:
        raise ValueError(f"ids and values must both be (N, k), got {tuple(ids.shape)} and {tuple(values.shape)}")
    k = ids.shape[1]
    if not 0 < k <= vocab_size:
        raise ValueError(f"k={k} must lie in [1, vocab_size={vocab_size}]")
    ids = ids.long()
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise ValueError(f"ids must lie in [0, {vocab_size}), got range [{int(ids.min())}, {int(ids.max())}]")
    return ids


def reconstruct_log_probs(
    ids: torch.Tensor,
    values: torch.Tensor,
    log_partition: torch.Tensor,
    temperature: float,
    vocab_size: int,
) -> torch.Tensor:
    """Full tempered teacher log-probs (N, vocab_size): exact on the top-k, ``log(tail / (V − k))`` elsewhere.

    With k = V no id is outside the top-k, so the (zero) tail never appears. With k < V and a tail that
    rounds to 0, the other ids get −inf (the teacher gives them no mass).
    """
    vocab_size = int(vocab_size)
    ids = _check_ids(ids, values, vocab_size)
    top = topk_log_probs(values, log_partition, temperature)
    n, k = top.shape
    if k == vocab_size:
        fill = torch.zeros(n, device=top.device, dtype=top.dtype)
    else:
        fill = log_tail_mass(values, log_partition, temperature) - math.log(vocab_size - k)
    out = fill[:, None].expand(n, vocab_size).clone()
    return out.scatter_(1, ids, top)


def reconstruct_probs(
    ids: torch.Tensor,
    values: torch.Tensor,
    log_partition: torch.Tensor,
    temperature: float,
    vocab_size: int,
) -> torch.Tensor:
    """Full tempered teacher probabilities (N, vocab_size), tail spread uniformly over the V − k other ids."""
    return reconstruct_log_probs(ids, values, log_partition, temperature, vocab_size).exp()
