"""Shared pieces of the loss functions: the one normaliser and input checks."""

from __future__ import annotations

import torch


def masked_mean(
    terms: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    weights: torch.Tensor | None = None,
    count: int | float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Σ over selected items of ``weights · terms``, divided by ``count``; a 0-d tensor.

    Args:
        terms: per-item loss terms, any shape.
        mask: optional bool, same shape: which items count (others are dropped with ``torch.where``, so
            they must be finite; NaN in a dropped item would still poison the gradient).
        weights: optional per-item weights, same shape (e.g. the TIDAL midrange weight).
        count: the denominator; defaults to the number of selected items. A batch with nothing to average
            gives 0 (still attached to the graph).
    """
    if mask is not None:
        if mask.shape != terms.shape or mask.dtype != torch.bool:
            raise ValueError(
                f"mask must be bool with the shape of terms {tuple(terms.shape)}, "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )
    if weights is not None:
        if weights.shape != terms.shape:
            raise ValueError(f"weights must have the shape of terms {tuple(terms.shape)}, got {tuple(weights.shape)}")
        terms = terms * weights
    if mask is not None:
        terms = torch.where(mask, terms, torch.zeros_like(terms))
    total = terms.sum()
    if count is None:
        count = int(mask.sum()) if mask is not None else terms.numel()
    if isinstance(count, torch.Tensor):
        return total / count.to(total.dtype).clamp_min(1)
    if count < 0:
        raise ValueError(f"count must be non-negative, got {count}")
    return total / max(count, 1)


def zero_where_not(mask: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` where ``mask`` holds, 0 elsewhere (a ``torch.where`` whose other branch carries no gradient)."""
    return torch.where(mask, value, torch.zeros_like(value))


def scaled_log(weight: torch.Tensor, log_value: torch.Tensor) -> torch.Tensor:
    """weight·log_value with 0·(−inf) read as 0 (a part with no weight gives no mass, not NaN)."""
    return torch.where(weight > 0, weight * log_value, torch.zeros_like(log_value))


def check_matrix(name: str, x: torch.Tensor) -> torch.Tensor:
    """A 2-D floating tensor, returned in fp32."""
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or not x.dtype.is_floating_point:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a 2-D floating tensor (N, V), got {shape}")
    return x.float()


def check_timesteps(name: str, t: torch.Tensor | float, n: int, device: torch.device) -> torch.Tensor:
    """Per-item timesteps in (0, 1] as an fp32 (n,) tensor; a float is broadcast."""
    t = torch.as_tensor(t, dtype=torch.float32, device=device)
    if t.ndim == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise ValueError(f"{name} must be a float or have shape ({n},), got {tuple(t.shape)}")
    if n and not bool(((t > 0) & (t <= 1)).all()):
        raise ValueError(f"{name} must lie in (0, 1], got range [{float(t.min())}, {float(t.max())}]")
    return t


def check_temperature(temperature: float) -> float:
    temperature = float(temperature)
    if not temperature > 0 or temperature == float("inf"):
        raise ValueError(f"temperature must be finite and positive, got {temperature}")
    return temperature


def check_unit(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return value
