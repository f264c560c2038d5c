"""What the GPU check's parts share: device timing and memory, the guarded result record, random models."""

from __future__ import annotations

import logging
import resource
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger("gpu_check")


def device_sync(device: Any) -> None:
    """Wait for the device's queued work (timings must not stop while kernels still run)."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: Any) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: Any) -> dict[str, Any]:
    """Peak memory since the last reset: CUDA allocated/reserved, or the process's peak RSS on the CPU."""
    import torch

    if torch.device(device).type == "cuda":
        return {"kind": "cuda_max_allocated", "gib": torch.cuda.max_memory_allocated(device) / 2**30,
                "reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30}
    return {"kind": "process_peak_rss", "gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def timed(device: Any, fn: Callable[[], Any]) -> tuple[Any, float]:
    """``(fn(), seconds)`` with the device synchronised before and after."""
    device_sync(device)
    start = time.perf_counter()
    out = fn()
    device_sync(device)
    return out, time.perf_counter() - start


class PartRecord:
    """A part's results, written to ``path`` after every measurement. ``measure(name, fn)`` runs ``fn``
    unless the part's deadline has passed, and records its value, its error (out of memory included) or
    that it was skipped; the part goes on either way."""

    def __init__(self, path: Path, deadline: float) -> None:
        self.path = path
        self.deadline = deadline
        self.data: dict[str, Any] = {"results": {}, "errors": {}, "skipped": {}}
        self.flush()

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def set(self, name: str, value: Any) -> None:
        self.data["results"][name] = value
        self.flush()

    def attempt(self, name: str, fn: Callable[[], Any], *, needs: float = 0.0) -> Any:
        """``fn()``, or None when it failed (the error is recorded) or when less than ``needs`` seconds are
        left (recorded as skipped)."""
        if self.time_left() < needs:
            self.data["skipped"][name] = f"time budget: {self.time_left():.0f} s left, {needs:.0f} s needed"
            self.flush()
            return None
        logger.info("%s ...", name)
        try:
            return fn()
        except Exception as exc:  # every failure is a result here, and the next measurement still runs
            self.data["errors"][name] = f"{type(exc).__name__}: {exc}"[:2000]
            logger.error("%s failed:\n%s", name, traceback.format_exc())
            free_device_memory()
            self.flush()
            return None

    def measure(self, name: str, fn: Callable[[], Any], *, needs: float = 0.0) -> Any:
        """:meth:`attempt`, with ``fn()``'s value (JSON-ready) recorded under ``name``."""
        value = self.attempt(name, fn, needs=needs)
        if value is not None:
            self.set(name, value)
        return value

    def flush(self) -> None:
        from cache_schema.files import atomic_write_json

        atomic_write_json(self.path, self.data)


def free_device_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def keep_fp32_modules(model: Any) -> None:
    """Put back in fp32 the weights the model class keeps in fp32 when loaded in low precision (the LLaDA2
    router), as ``from_pretrained`` does; a model built from its config in bf16 would have them in bf16."""
    import torch

    patterns = tuple(getattr(model, "_keep_in_fp32_modules_strict", None) or ()) + tuple(
        getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if any(pattern in name for pattern in patterns):
            tensor.data = tensor.data.to(torch.float32)


def build_random_model(model_class: Any, config: Any, device: Any, dtype: Any) -> Any:
    """A model of ``config`` with random weights, created on ``device`` in ``dtype`` (no checkpoint)."""
    import torch

    with torch.device(device):
        model = model_class._from_config(config, dtype=dtype)
    keep_fp32_modules(model)
    return model
