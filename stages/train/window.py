"""A logging window of the trainer: everything a step reports, kept on the device until the window is read.

Reading a device value back (``float(loss)``, ``.item()``) makes the host wait for every kernel queued so
far, so a step that reads its loss cannot overlap the next step's work. The trainer therefore adds each
micro-batch's detached loss, terms and statistics to this window as tensors and reads the window once per
logging step (and before every checkpoint): one host sync, and one all-reduce with several processes.

Non-finite values are found at that read, not at the step they happen: the window remembers, per
micro-batch and per optimizer step, its loss / gradient norm and the rows it came from, so the refusal
still names the first bad step and its rows. No checkpoint is written before the window is read, so
nothing computed from a non-finite value is ever saved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


class NonFiniteError(RuntimeError):
    """A loss or gradient is NaN or infinite; the message names the batch's rows. Nothing is saved."""


def non_finite_error(what: str, value: float, step: int, rows: list[str], cache: str) -> NonFiniteError:
    shown = "; ".join(rows[:8]) + (f"; and {len(rows) - 8} more rows" if len(rows) > 8 else "")
    return NonFiniteError(
        f"step {step}: the {what} is {value} on the batch of {shown or 'unknown rows'}; nothing was saved from "
        f"this step on — check the cache with `tide-cache validate {cache}`")


@dataclass
class _Watched:
    """One value to check when the window is read: a micro-batch's loss or a step's gradient norm."""

    what: str
    step: int
    rows: list[str]
    value: torch.Tensor


@dataclass
class LogWindow:
    """Sums over the micro-batches of one logging window (device tensors or host floats), and the values
    whose finiteness is checked when the window is read."""

    sums: dict[str, torch.Tensor | float] = field(default_factory=dict)
    micro_batches: int = 0
    tokens: int = 0
    watched: list[_Watched] = field(default_factory=list)
    last_grad_norm: torch.Tensor | None = None

    def add(self, step: int, loss: torch.Tensor, values: dict[str, torch.Tensor | float], rows: list[str],
            tokens: int) -> None:
        """One micro-batch of optimizer step ``step``: its loss (detached here), logged values and rows."""
        loss = loss.detach()
        self.watched.append(_Watched("loss", step, rows, loss))
        for name, value in {"loss": loss, **values}.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.micro_batches += 1
        self.tokens += tokens

    def add_grad_norm(self, step: int, norm: torch.Tensor | None, rows: list[str]) -> None:
        """The gradient norm of optimizer step ``step`` over the rows of all its micro-batches (None, as some
        engines return, is not watched)."""
        if norm is None:
            return
        norm = torch.as_tensor(norm).detach()
        self.watched.append(_Watched("gradient norm", step, rows, norm))
        self.last_grad_norm = norm

    def check_finite(self, accelerator, cache: str) -> None:
        """Read the watched values (one host sync; one tiny all-reduce with several processes) and raise
        :class:`NonFiniteError` at the first non-finite one, naming its step and rows."""
        if self.watched:
            device = self.watched[0].value.device
            values = torch.stack([w.value.to(device=device, dtype=torch.float64).reshape(()) for w in self.watched])
            read = values.tolist()
        else:
            read = []
        first = next((i for i, value in enumerate(read) if not math.isfinite(value)), None)
        if accelerator.num_processes > 1:
            flag = torch.tensor([0.0 if first is None else 1.0], device=accelerator.device)
            elsewhere = bool(accelerator.reduce(flag, reduction="sum").item() > 0)
            if first is None and elsewhere:
                raise NonFiniteError("a loss or gradient norm is not finite on another process; nothing was saved "
                                     f"from that step on — check the cache with `tide-cache validate {cache}`")
        if first is not None:
            bad = self.watched[first]
            raise non_finite_error(bad.what, read[first], bad.step, bad.rows, cache)
        self.watched = []

    def read(self, accelerator) -> tuple[dict[str, float], float]:
        """(means over the window's micro-batches, all processes together, with ``grad_norm`` of its last
        step if one ended in it; the tokens of all processes): one host sync."""
        names = sorted(self.sums)
        device = accelerator.device
        parts = [torch.as_tensor(self.sums[name], dtype=torch.float64, device=device).reshape(()) for name in names]
        parts += [torch.tensor(float(self.micro_batches), dtype=torch.float64, device=device),
                  torch.tensor(float(self.tokens), dtype=torch.float64, device=device)]
        if self.last_grad_norm is not None:  # the same on every process after the gradient all-reduce
            parts.append(self.last_grad_norm.to(device=device, dtype=torch.float64).reshape(())
                         / accelerator.num_processes)
        local = torch.stack(parts)
        total = accelerator.reduce(local, reduction="sum") if accelerator.num_processes > 1 else local
        values = total.tolist()
        if self.last_grad_norm is not None:
            grad_norm = values.pop()
        count = max(values[-2], 1.0)
        record = {name: values[i] / count for i, name in enumerate(names)}
        if self.last_grad_norm is not None:
            record["grad_norm"] = grad_norm
        return record, values[-1]
