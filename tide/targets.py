"""Sparse teacher targets and the teacher they stand for (docs/design.md#top-k-targets).

Per target position, over the shared vocabulary slice ``[0, V)``, stage one keeps:

* the ``k`` largest teacher logits minus the row maximum (``values``, descending, the first 0) and their
  ``ids``; ``k`` may differ per position (:class:`KPolicy`), so the arrays are padded to the widest row
  and ``counts`` says how many entries of each row are real;
* ``log_tails`` (n_T,): log of the teacher's mass on the *unstored* ids at every stored temperature,
  computed directly as a log-sum-exp over those ids (never as 1 − Σ, which rounds to 0 at confident
  positions); −inf when every id is stored;
* ``gold_logprob``: the teacher log-prob (T = 1) of the student's gold token.

At temperature T the stored ids are exact: p_j = (1 − τ_T)·softmax_stored(v/T)_j. How τ_T is shared among
the unstored ids is a training-time choice, :class:`TailReconstruction`: in proportion to the student's own
probabilities there (``student``, the default), uniformly (``uniform``), or a fixed share uniformly and the
rest like the student (``mixture``). With every id stored, all three are the exact teacher.

Padding of ragged rows: padded entries repeat the row's first id with the value −inf, so they carry no
mass and a scatter at the padded ids writes the same id as the first entry (deterministic).

All computations are in fp32; fp16-stored values are cast first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

_LN2 = math.log(2.0)
_FP32_LOWEST = torch.finfo(torch.float32).min

K_POLICIES = ("fixed", "mass")
TAIL_KINDS = ("student", "uniform", "mixture")


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """Stable ``log(1 − exp(x))`` for x ≤ 0: ``log(−expm1(x))`` above −ln 2, ``log1p(−exp(x))`` below.

    Returns −inf at x = 0 and 0 at x = −inf. Both branches are evaluated on safe inputs, so no NaN reaches
    the gradient.
    """
    near_zero = x > -_LN2
    x_near = torch.where(near_zero, x, torch.full_like(x, -_LN2))
    x_far = torch.where(near_zero, torch.full_like(x, -_LN2), x)
    return torch.where(near_zero, torch.log(-torch.expm1(x_near)), torch.log1p(-torch.exp(x_far)))


# --------------------------------------------------------------------------------------------- temperatures


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
        _check_temperature(t)
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


# ------------------------------------------------------------------------------------------------ k policy


@dataclass(frozen=True)
class KPolicy:
    """How many top entries a position keeps.

    ``fixed``: every position keeps ``ceiling`` entries. ``mass``: the smallest k whose cumulative teacher
    probability at ``temperature`` reaches ``mass``, clamped to [``floor``, ``ceiling``] (a floor keeps
    enough entries for training at a higher temperature than the policy's, where the same ids hold less).
    """

    kind: str = "fixed"
    ceiling: int = 64
    mass: float = 1.0
    temperature: float = 1.0
    floor: int = 1

    def __post_init__(self) -> None:
        if self.kind not in K_POLICIES:
            raise ValueError(f"k policy kind must be one of {K_POLICIES}, got {self.kind!r}")
        if isinstance(self.ceiling, bool) or not isinstance(self.ceiling, int) or self.ceiling < 1:
            raise ValueError(f"k policy ceiling must be a positive integer, got {self.ceiling!r}")
        if self.kind == "mass":
            if not 0.0 < self.mass <= 1.0:
                raise ValueError(f"k policy mass must lie in (0, 1], got {self.mass}")
            _check_temperature(self.temperature)
            if not 1 <= self.floor <= self.ceiling:
                raise ValueError(f"k policy floor must lie in [1, ceiling={self.ceiling}], got {self.floor}")

    @classmethod
    def fixed(cls, k: int) -> KPolicy:
        return cls(kind="fixed", ceiling=k, floor=k)

    def counts(self, top_values: torch.Tensor, log_partition: torch.Tensor | None = None) -> torch.Tensor:
        """k per row (N,) int64 from the rows' ``ceiling`` largest values (N, ceiling) sorted descending and,
        for ``mass``, log Σ exp(value/T) over the whole slice at the policy's temperature (N,)."""
        n, width = top_values.shape
        if self.kind == "fixed":
            return torch.full((n,), width, dtype=torch.long, device=top_values.device)
        probs = torch.exp(top_values / self.temperature - log_partition[:, None])
        reached = torch.cumsum(probs, dim=1) >= self.mass
        # smallest k with cumulative mass >= p: 1 + the number of prefixes still below p
        counts = 1 + (~reached).sum(dim=1)
        return counts.clamp(min=min(self.floor, width), max=width)


# ------------------------------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class TeacherAtTemperature:
    """The stored teacher at one temperature, as the losses read it.

    ids: int64 (N, K) (padding repeats column 0); valid: bool (N, K); log_p: float32 (N, K), the exact
    tempered log-probs of the stored ids (−inf at padding); log_tail: (N,) log τ_T (−inf: no unstored mass);
    counts: int64 (N,); temperature."""

    ids: torch.Tensor
    valid: torch.Tensor
    log_p: torch.Tensor
    log_tail: torch.Tensor
    counts: torch.Tensor
    temperature: float


@dataclass(frozen=True)
class SparseTargets:
    """Top-k teacher targets of N positions with ragged k (see the module docstring).

    Attributes:
        topk_ids: int (N, K) vocabulary ids by descending logit; padding repeats column 0.
        topk_values: float (N, K) logits minus the row max over the slice (column 0 is 0); −inf at padding.
        counts: int (N,) stored entries per row, in [1, K].
        log_tails: float32 (N, n_T) log of the teacher's mass on the unstored ids, one column per temperature.
        temperatures: the temperatures of the ``log_tails`` columns, starting with 1.0.
        gold_logprob: float32 (N,) teacher log-prob of the gold id at T = 1 (NaN outside the slice), or None
            where training does not carry it.
    """

    topk_ids: torch.Tensor
    topk_values: torch.Tensor
    counts: torch.Tensor
    log_tails: torch.Tensor
    temperatures: tuple[float, ...]
    gold_logprob: torch.Tensor | None = None

    def __post_init__(self) -> None:
        ids, values, counts, tails = self.topk_ids, self.topk_values, self.counts, self.log_tails
        if ids.ndim != 2 or values.shape != ids.shape:
            raise ValueError(f"topk_ids and topk_values must both be (N, K), got {tuple(ids.shape)} "
                             f"and {tuple(values.shape)}")
        n, width = ids.shape
        if counts.shape != (n,):
            raise ValueError(f"counts must have shape ({n},), got {tuple(counts.shape)}")
        if tails.shape != (n, len(self.temperatures)):
            raise ValueError(f"log_tails must be (N={n}, {len(self.temperatures)}) for temperatures "
                             f"{self.temperatures}, got {tuple(tails.shape)}")
        if n and (int(counts.min()) < 1 or int(counts.max()) > width):
            raise ValueError(f"counts must lie in [1, K={width}], got range [{int(counts.min())}, {int(counts.max())}]")

    @property
    def num_positions(self) -> int:
        return int(self.topk_ids.shape[0])

    @property
    def width(self) -> int:
        return int(self.topk_ids.shape[1])

    def valid(self) -> torch.Tensor:
        """bool (N, K): which entries are stored (not padding)."""
        return torch.arange(self.width, device=self.counts.device)[None, :] < self.counts[:, None]

    def select(self, index: torch.Tensor) -> SparseTargets:
        """The targets of rows ``index`` (int64), same width."""
        gold = None if self.gold_logprob is None else self.gold_logprob[index]
        return replace(self, topk_ids=self.topk_ids[index], topk_values=self.topk_values[index],
                       counts=self.counts[index], log_tails=self.log_tails[index], gold_logprob=gold)

    def to(self, device: torch.device | str) -> SparseTargets:
        gold = None if self.gold_logprob is None else self.gold_logprob.to(device)
        return replace(self, topk_ids=self.topk_ids.to(device), topk_values=self.topk_values.to(device),
                       counts=self.counts.to(device), log_tails=self.log_tails.to(device), gold_logprob=gold)

    def at(self, temperature: float, vocab_size: int | None = None) -> TeacherAtTemperature:
        """The stored teacher at a stored ``temperature``: exact log-probs of the stored ids and log τ_T.

        With ``vocab_size``, a row that stores every id has no tail whatever its stored tail says (a v1 tail,
        1 − Σ p, can round to 1e-7 there)."""
        temperature = _check_temperature(temperature)
        column = temperature_column(self.temperatures, temperature)
        valid = self.valid()
        scaled = torch.where(valid, self.topk_values.float() / temperature, torch.full_like(self.topk_values.float(),
                                                                                            -math.inf))
        log_tail = self.log_tails[:, column].float()
        if vocab_size is not None:
            log_tail = torch.where(self.counts >= vocab_size, torch.full_like(log_tail, -math.inf), log_tail)
        log_p = scaled - torch.logsumexp(scaled, dim=1, keepdim=True) + log1mexp(log_tail)[:, None]
        return TeacherAtTemperature(ids=self.topk_ids.long(), valid=valid, log_p=log_p, log_tail=log_tail,
                                    counts=self.counts.long(), temperature=temperature)


@torch.no_grad()
def sparse_targets(
    logits: torch.Tensor,
    gold_ids: torch.Tensor,
    *,
    k: int,
    shared_vocab_size: int,
    temperatures: Sequence[float],
    policy: KPolicy | None = None,
) -> SparseTargets:
    """Compress teacher logits (N, V_full) to sparse targets over the first ``shared_vocab_size`` ids.

    ``k`` is the width (a fixed k, or the ceiling of ``policy``). Computed in fp32 on ``logits.device``.
    ``gold_ids`` (N,) are the student's gold tokens (non-negative); a gold id ≥ ``shared_vocab_size`` gets a
    NaN ``gold_logprob``. Memory: one (N, V) copy of the logits besides the per-temperature scaled one.
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
    policy = policy or KPolicy.fixed(k)
    if policy.ceiling != k:
        raise ValueError(f"k={k} must equal the k policy's ceiling {policy.ceiling}")
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
    log_z = {temp: torch.logsumexp(values / temp, dim=-1) for temp in temps}
    if policy.kind == "mass" and policy.temperature not in log_z:
        log_z[policy.temperature] = torch.logsumexp(values / policy.temperature, dim=-1)
    counts = policy.counts(top_values, log_z.get(policy.temperature))
    stored = torch.arange(k, device=z.device)[None, :] < counts[:, None]
    # The unstored ids keep their values, the stored ones become −inf: the tail is a log-sum-exp over the
    # unstored ids themselves, exact however small it is.
    unstored = values.scatter(1, top_ids, torch.where(stored, torch.full_like(top_values, -math.inf), top_values))
    log_tails = torch.stack([torch.logsumexp(unstored / temp, dim=-1) - log_z[temp] for temp in temps], dim=-1)
    del unstored

    gold = gold_ids.to(device=z.device, dtype=torch.long)
    in_slice = gold < shared_vocab_size
    gathered = values.gather(1, torch.where(in_slice, gold, torch.zeros_like(gold))[:, None])[:, 0]
    gold_logprob = torch.where(in_slice, gathered - log_z[1.0], torch.full_like(gathered, math.nan))
    top_ids = torch.where(stored, top_ids, top_ids[:, :1])
    top_values = torch.where(stored, top_values, torch.full_like(top_values, -math.inf))
    return SparseTargets(topk_ids=top_ids.to(torch.int32), topk_values=top_values, counts=counts.to(torch.int32),
                         log_tails=log_tails, temperatures=temps, gold_logprob=gold_logprob)


# ---------------------------------------------------------------------------------------------- the tail


@dataclass(frozen=True)
class TailReconstruction:
    """How the teacher's unstored mass τ is shared among the unstored ids (a training-time choice).

    ``student``: τ·q_v/Q, q the student's tempered probabilities and Q their mass off the stored ids;
    ``uniform``: τ/(V − k); ``mixture``: ``uniform_share`` of τ uniformly, the rest like ``student`` (a
    safeguard for a student whose tail is still noise). ``uniform_share`` is read by ``mixture`` only.
    """

    kind: str = "student"
    uniform_share: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in TAIL_KINDS:
            raise ValueError(f"tail reconstruction must be one of {TAIL_KINDS}, got {self.kind!r}")
        if not 0.0 < float(self.uniform_share) < 1.0:
            raise ValueError(f"tail uniform share must lie in (0, 1), got {self.uniform_share}")


def off_stored_log_mass(log_probs: torch.Tensor, teacher: TeacherAtTemperature) -> torch.Tensor:
    """log of the mass a distribution (log-probs (N, V)) puts on the ids a row does not store, (N,).

    A log-sum-exp over those ids (never 1 − Σ, which loses everything below 1e-7 of the stored mass);
    −inf where every id is stored. Memory: one (N, V) copy."""
    vocab = log_probs.shape[1]
    fill = torch.full(teacher.ids.shape, _FP32_LOWEST, dtype=log_probs.dtype, device=log_probs.device)
    masked = log_probs.scatter(1, teacher.ids, fill)  # padded ids repeat column 0: the same write
    has_off = teacher.counts < vocab
    return torch.where(has_off, torch.logsumexp(masked, dim=1), torch.full_like(masked[:, 0], -math.inf))


def reconstruct_log_probs(
    teacher: TeacherAtTemperature,
    vocab_size: int,
    tail: TailReconstruction,
    student_log_probs: torch.Tensor | None = None,
) -> torch.Tensor:
    """The full tempered teacher (N, V) log-probs: exact on the stored ids, the tail shared as ``tail`` says.

    ``student_log_probs`` (N, V) (the tempered student, treated as a constant) is needed by ``student`` and
    ``mixture``. Unstored ids get −inf where τ = 0."""
    vocab_size = int(vocab_size)
    n = teacher.ids.shape[0]
    if teacher.ids.numel() and int(teacher.ids.max()) >= vocab_size:
        raise ValueError(f"teacher ids must lie in [0, {vocab_size}), got up to {int(teacher.ids.max())}")
    others = (vocab_size - teacher.counts).clamp(min=1).to(teacher.log_tail.dtype)
    log_uniform = (teacher.log_tail - torch.log(others))[:, None]
    if tail.kind == "uniform":
        out = log_uniform.expand(n, vocab_size).clone()
    else:
        if student_log_probs is None or student_log_probs.shape != (n, vocab_size):
            raise ValueError(f"tail {tail.kind!r} needs the student's (N={n}, V={vocab_size}) log-probs")
        log_q = student_log_probs.detach().float()
        log_off = off_stored_log_mass(log_q, teacher)
        safe_off = torch.where(torch.isfinite(log_off), log_off, torch.zeros_like(log_off))
        shaped = teacher.log_tail[:, None] + log_q - safe_off[:, None]
        if tail.kind == "student":
            out = shaped
        else:
            share = float(tail.uniform_share)
            out = torch.logaddexp(math.log1p(-share) + shaped, math.log(share) + log_uniform)
    stored = torch.where(teacher.valid, teacher.log_p, teacher.log_p[:, :1])  # padding: the first entry again
    return out.scatter(1, teacher.ids, stored)
