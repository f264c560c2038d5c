"""Exact teacher targets: the teacher's final normed hidden states and its LM-head rows (docs/cache-format.md,
"Exact tier").

For the shared vocabulary, the teacher's logits at a position are ``W · h``: W the teacher's output-embedding
rows of the shared vocabulary (V, H), h its final hidden state after the last norm (H,). A cache that stores
h per target position and W once gives the teacher's whole distribution at any temperature, so the vocabulary
losses take their full-vocabulary form (:mod:`tide.losses.full`) and no tail is reconstructed.

The logits are computed where a loss needs them, for the rows of one LM-head chunk of the training objective
(:mod:`tide.objective`), so at most a (chunk, V) block exists at a time. The product runs in the head's dtype
(bf16 for a bf16 teacher: the teacher's own precision, bit for bit the logits an online bf16 teacher gives on
the same kernel) and is returned in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F


@dataclass(frozen=True, eq=False)
class TeacherHead:
    """The teacher's LM-head rows of the shared vocabulary, ``weight`` (V, H), never trained.

    :meth:`on` keeps one copy per device, so moving every batch's targets to the GPU moves the head once."""

    weight: torch.Tensor
    _copies: dict[torch.device, torch.Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.weight.ndim != 2 or not self.weight.dtype.is_floating_point:
            raise ValueError(f"the teacher head must be a floating (V, H) matrix, got {self.weight.dtype} "
                             f"{tuple(self.weight.shape)}")
        self.weight.requires_grad_(False)

    @property
    def vocab_size(self) -> int:
        return int(self.weight.shape[0])

    @property
    def hidden_size(self) -> int:
        return int(self.weight.shape[1])

    def on(self, device: torch.device | str) -> torch.Tensor:
        """The head on ``device`` (copied there on first use)."""
        device = torch.device(device)
        if self.weight.device == device:
            return self.weight
        if device not in self._copies:
            self._copies[device] = self.weight.to(device)
        return self._copies[device]


@dataclass(frozen=True)
class ExactTeacher:
    """Exact teacher targets of N positions.

    hidden: (N, H) the teacher's final normed hidden states (bf16, or any float dtype), or int8 codes with
    ``scale`` (N,) float32 (h = code · scale); head: the :class:`TeacherHead` they go through."""

    hidden: torch.Tensor
    head: TeacherHead
    scale: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.hidden.ndim != 2 or self.hidden.shape[1] != self.head.hidden_size:
            raise ValueError(f"teacher hidden states must be (N, {self.head.hidden_size}), got "
                             f"{tuple(self.hidden.shape)}")
        if (self.scale is None) != self.hidden.dtype.is_floating_point:
            raise ValueError(f"hidden states of dtype {self.hidden.dtype} need "
                             f"{'no scale' if self.hidden.dtype.is_floating_point else 'a per-row scale'}")
        if self.scale is not None and self.scale.shape != (self.hidden.shape[0],):
            raise ValueError(f"scale must have shape ({self.hidden.shape[0]},), got {tuple(self.scale.shape)}")

    @property
    def num_positions(self) -> int:
        return int(self.hidden.shape[0])

    @property
    def vocab_size(self) -> int:
        return self.head.vocab_size

    def select(self, index: torch.Tensor) -> ExactTeacher:
        """The targets of rows ``index`` (int64)."""
        return replace(self, hidden=self.hidden[index], scale=None if self.scale is None else self.scale[index])

    def to(self, device: torch.device | str) -> ExactTeacher:
        """The hidden states on ``device``; the head follows when logits are computed (:meth:`TeacherHead.on`)."""
        return replace(self, hidden=self.hidden.to(device), scale=None if self.scale is None else self.scale.to(device))

    def hidden_states(self, dtype: torch.dtype) -> torch.Tensor:
        """(N, H) hidden states in ``dtype`` (int8 codes are scaled in fp32 first)."""
        if self.scale is None:
            return self.hidden.to(dtype)
        return (self.hidden.float() * self.scale.float()[:, None]).to(dtype)

    @torch.no_grad()
    def logits(self) -> torch.Tensor:
        """The teacher's fp32 logits (N, V) over the shared vocabulary: ``W · h`` in the head's dtype."""
        weight = self.head.on(self.hidden.device)
        return F.linear(self.hidden_states(weight.dtype), weight).float()


__all__ = ["ExactTeacher", "TeacherHead"]
