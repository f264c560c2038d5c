"""``LOSSES``: every training mode by name, what teacher targets it needs, and how modes compose.

Objective of a training step (docs/design.md#losses): the BD3LM CE term is always present; each distillation mode
named in the mode string adds its term with a weight (default 1):

    total = CE + Σ_mode weight_mode · loss_mode

``parse_mode("tidal+kl")`` returns the entries in order; ``combine_losses`` does the sum. "ce" alone is
plain BD3LM training; listing "ce" next to distillation modes changes nothing (CE is counted once).
One cache holds one pipeline, so vocabulary ("vocab", pipeline B) and chunk ("chunk", pipeline A) modes
cannot be combined.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

import torch

from tide.exact_targets import ExactTeacher
from tide.losses.calm import CALM_CLAMP, DEFAULT_CHUNK_TEMPERATURE, calm_loss, tidal_calm_loss
from tide.losses.ce import ce_loss
from tide.losses.common import check_timesteps, masked_mean
from tide.losses.full import exact_kl, exact_reverse_kl, exact_tidal
from tide.losses.kl import kl_loss, reverse_kl_loss, teacher_at
from tide.losses.student_tail import student_tail_terms
from tide.losses.tidal import TidalSchedule, tidal_loss
from tide.targets import SparseTargets, TailReconstruction

TargetKind = Literal["none", "vocab", "chunk"]

DEFAULT_VOCAB_TEMPERATURE = 2.0


@dataclass(frozen=True)
class CEInputs:
    """CE at the M masked positions of a batch.

    logits: (M, V) student logits (or log-probs with ``from_log_probs``); gold_ids: (M,);
    t: (M,) timestep of each position's sequence; num_maskable: maskable tokens in the batch.
    """

    logits: torch.Tensor
    gold_ids: torch.Tensor
    t: torch.Tensor
    num_maskable: int | torch.Tensor
    from_log_probs: bool = False


@dataclass(frozen=True)
class VocabInputs:
    """Shared-vocabulary targets at the N target positions (pipeline B).

    student_logits: (N, V_shared); teacher: the N positions' sparse targets (ragged k, log tails at the
    stored temperatures), or their exact targets (hidden states and the teacher's head); t: (N,)."""

    student_logits: torch.Tensor
    teacher: SparseTargets | ExactTeacher
    t: torch.Tensor


@dataclass(frozen=True)
class ChunkInputs:
    """Chunk targets (pipeline A): (C,) student and teacher chunk log-probs, t (C,), optional bool active."""

    student_logprob: torch.Tensor
    teacher_logprob: torch.Tensor
    t: torch.Tensor
    active: torch.Tensor | None = None


@dataclass(frozen=True)
class LossOptions:
    """Options shared by all modes; each mode reads what it needs.

    temperature: None = the mode's default. progress: step / max_steps for TIDAL schedules. axis, decay,
    lambda0, lambda_max, weighting: the TIDAL schedule (:attr:`schedule`). tail, tail_uniform_share: how
    vocabulary modes share the teacher's unstored mass (:attr:`reconstruction`). min_tail: reverse-KL
    floor for a tail stored as exactly 0 (see tide.losses.kl.reverse_kl_terms).
    calm_clamp: chunk modes' probability clamp (the original's 1e-7), None = the unclamped log-space form.
    """

    temperature: float | None = None
    progress: float = 0.0
    axis: str = "both"
    decay: str = "cosine"
    lambda0: float = 0.1
    lambda_max: float = 0.9
    weighting: str = "midrange"
    min_tail: float = 1e-8
    tail: str = "student"
    tail_uniform_share: float = 0.1
    calm_clamp: float | None = CALM_CLAMP

    def __post_init__(self) -> None:
        self.schedule, self.reconstruction  # noqa: B018 - refuse bad options when they are made, not mid-run

    @property
    def schedule(self) -> TidalSchedule:
        return TidalSchedule(axis=self.axis, decay=self.decay, lambda0=self.lambda0, lambda_max=self.lambda_max,
                             weighting=self.weighting)

    @property
    def reconstruction(self) -> TailReconstruction:
        return TailReconstruction(kind=self.tail, uniform_share=self.tail_uniform_share)


@dataclass(frozen=True)
class LossEntry:
    """One mode and its properties: the teacher targets it needs ("none", "vocab" or "chunk"), its
    default temperature (None for CE), whether it follows the TIDAL λ schedule, and its loss function;
    ``exact``: the full-vocabulary form a vocabulary mode takes against an :class:`ExactTeacher`.

    Code that needs to know something about a mode asks its entry; nothing else lists mode names."""

    name: str
    targets: TargetKind
    default_temperature: float | None
    compute: Callable[..., torch.Tensor] = field(repr=False)
    description: str = ""
    uses_tidal_schedule: bool = False
    exact: Callable[..., torch.Tensor] | None = field(default=None, repr=False)

    def temperature(self, options: LossOptions) -> float | None:
        if self.default_temperature is None:
            return None
        return self.default_temperature if options.temperature is None else float(options.temperature)

    def __call__(self, inputs: CEInputs | VocabInputs | ChunkInputs, options: LossOptions | None = None) -> torch.Tensor:
        options = options or LossOptions()
        expected = {"none": CEInputs, "vocab": VocabInputs, "chunk": ChunkInputs}[self.targets]
        if not isinstance(inputs, expected):
            raise ValueError(f"loss {self.name!r} takes {expected.__name__}, got {type(inputs).__name__}")
        if isinstance(inputs, VocabInputs) and isinstance(inputs.teacher, ExactTeacher):
            if self.exact is None:
                raise ValueError(f"loss {self.name!r} has no form for exact teacher targets")
            return self.exact(inputs, options, self.temperature(options))
        return self.compute(inputs, options, self.temperature(options))


def _ce(inputs: CEInputs, options: LossOptions, temperature: None) -> torch.Tensor:
    return ce_loss(
        inputs.logits, inputs.gold_ids, inputs.t, num_maskable=inputs.num_maskable, from_log_probs=inputs.from_log_probs
    )


def _kl(inputs: VocabInputs, options: LossOptions, temperature: float) -> torch.Tensor:
    return kl_loss(inputs.student_logits, inputs.teacher, temperature=temperature, tail=options.reconstruction)


def _reverse_kl(inputs: VocabInputs, options: LossOptions, temperature: float) -> torch.Tensor:
    return reverse_kl_loss(inputs.student_logits, inputs.teacher, temperature=temperature,
                           tail=options.reconstruction, min_tail=options.min_tail)


def _tidal(inputs: VocabInputs, options: LossOptions, temperature: float) -> torch.Tensor:
    return tidal_loss(inputs.student_logits, inputs.teacher, inputs.t, temperature=temperature,
                      progress=options.progress, schedule=options.schedule, tail=options.reconstruction)


def _calm(reverse: bool):
    def compute(inputs: ChunkInputs, options: LossOptions, temperature: float) -> torch.Tensor:
        return calm_loss(
            inputs.student_logprob, inputs.teacher_logprob, active=inputs.active, temperature=temperature, reverse=reverse,
            clamp=options.calm_clamp,
        )

    return compute


def _tidal_calm(reverse: bool):
    def compute(inputs: ChunkInputs, options: LossOptions, temperature: float) -> torch.Tensor:
        return tidal_calm_loss(inputs.student_logprob, inputs.teacher_logprob, inputs.t, progress=options.progress,
                               active=inputs.active, temperature=temperature, schedule=options.schedule,
                               reverse=reverse, clamp=options.calm_clamp)

    return compute


_ENTRIES = [
    LossEntry("ce", "none", None, _ce, "BD3LM cross-entropy only"),
    LossEntry("kl", "vocab", DEFAULT_VOCAB_TEMPERATURE, _kl, "forward KL(p_T^T || p_S^T) · T^2", exact=exact_kl),
    LossEntry("reverse_kl", "vocab", DEFAULT_VOCAB_TEMPERATURE, _reverse_kl, "reverse KL(p_S^T || p_T^T) · T^2",
              exact=exact_reverse_kl),
    LossEntry("tidal", "vocab", DEFAULT_VOCAB_TEMPERATURE, _tidal, "TIDAL interpolated forward KL · T^2", True,
              exact=exact_tidal),
    LossEntry("calm", "chunk", DEFAULT_CHUNK_TEMPERATURE, _calm(False), "CALM chunk binary cross-entropy"),
    LossEntry("reverse_calm", "chunk", DEFAULT_CHUNK_TEMPERATURE, _calm(True), "reverse CALM (TIDE-Cross)"),
    LossEntry("tidal_calm", "chunk", DEFAULT_CHUNK_TEMPERATURE, _tidal_calm(False), "TIDAL-CALM", True),
    LossEntry("reverse_tidal_calm", "chunk", DEFAULT_CHUNK_TEMPERATURE, _tidal_calm(True), "reverse TIDAL-CALM", True),
]

LOSSES: Mapping[str, LossEntry] = MappingProxyType({entry.name: entry for entry in _ENTRIES})


def parse_mode(mode: str) -> list[LossEntry]:
    """Entries of a mode string such as ``"tidal"`` or ``"tidal+kl"``, in order."""
    if not isinstance(mode, str) or not mode.strip():
        raise ValueError(f"mode must be a non-empty string such as 'tidal+kl', got {mode!r}")
    names = [part.strip() for part in mode.split("+")]
    valid = ", ".join(LOSSES)
    for name in names:
        if not name:
            raise ValueError(f"mode {mode!r} has an empty component; valid modes: {valid}")
        if name not in LOSSES:
            raise ValueError(f"unknown loss mode {name!r} in {mode!r}; valid modes: {valid}")
    if len(set(names)) != len(names):
        raise ValueError(f"mode {mode!r} names a loss twice")
    kinds = {LOSSES[name].targets for name in names} - {"none"}
    if len(kinds) > 1:
        raise ValueError(
            f"mode {mode!r} mixes vocabulary (shared pipeline) and chunk (cross pipeline) losses; "
            "a cache holds targets of one pipeline"
        )
    return [LOSSES[name] for name in names]


def required_targets(entries: list[LossEntry]) -> TargetKind:
    """The teacher targets a composed mode needs: "vocab", "chunk" or "none"."""
    kinds = {entry.targets for entry in entries} - {"none"}
    return kinds.pop() if kinds else "none"


def vocab_losses(entries: list[LossEntry], inputs: VocabInputs, options: LossOptions) -> list[torch.Tensor]:
    """The losses of vocabulary ``entries`` on the same inputs, in order.

    Under the student-shaped tail, modes at one temperature share one softmax over the slice
    (:func:`tide.losses.student_tail.student_tail_terms`); each then takes its own reduction, the one its
    entry applies alone (T²·mean; TIDAL: T²·Σ w(t)·term / N). Any other case computes entry by entry."""
    temperatures = {entry.temperature(options) for entry in entries}
    if (len(entries) < 2 or options.tail != "student" or not isinstance(inputs.teacher, SparseTargets)
            or len(temperatures) != 1):
        return [entry(inputs, options) for entry in entries]
    temperature = temperatures.pop()
    z, view = teacher_at(inputs.student_logits, inputs.teacher, temperature)
    t = check_timesteps("t", inputs.t, z.shape[0], z.device)
    names = [entry.name for entry in entries]
    schedule = options.schedule
    lam = schedule.lam(options.progress, t) if "tidal" in names else None
    terms = student_tail_terms(z, view, names, lam=lam, min_tail=options.min_tail)
    weight = schedule.weight(t)
    return [temperature**2 * masked_mean(terms[:, i], weights=weight if name == "tidal" else None)
            for i, name in enumerate(names)]


def combine_losses(
    ce: torch.Tensor,
    distill: Mapping[str, torch.Tensor],
    *,
    weight: float | Mapping[str, float] = 1.0,
    ce_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """total = ce_weight·ce + Σ weight[name]·distill[name]; returns (total, parts including "ce").

    ``weight`` is one float for every term or a mapping by mode name (missing names get 1.0).
    """
    if "ce" in distill:
        raise ValueError("distill must hold distillation terms only; the CE term is passed as ce")
    unknown = [name for name in distill if name not in LOSSES]
    if unknown:
        raise ValueError(f"unknown loss names {unknown}; valid modes: {', '.join(LOSSES)}")
    if isinstance(weight, Mapping):
        extra = [name for name in weight if name not in distill]
        if extra:
            raise ValueError(f"weights given for {extra}, which are not among the terms {list(distill)}")
        weights = {name: float(weight.get(name, 1.0)) for name in distill}
    else:
        weights = dict.fromkeys(distill, float(weight))
    total = ce_weight * ce
    for name, term in distill.items():
        total = total + weights[name] * term
    return total, {"ce": ce, **distill}
