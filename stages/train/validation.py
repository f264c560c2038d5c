"""Held-out validation: a split of the cache's samples by sample key, and the loss terms on it.

A sample is held out when ``mix64(sample_key ^ salt) / 2^64 < fraction``: a pure function of the key, so
the split is the same on every machine and for every replica of the sample, and the same samples stay out
of training however often the run is resumed. The fraction is the build's (``tide-cache build
--holdout-fraction``, recorded in the manifest's build settings) unless ``--val-fraction`` sets one.

Training streams see only the kept rows (:func:`split_stream_class` wraps the run's stream class); every
``--val-every`` steps :func:`evaluate` runs the step without gradients over the held-out rows of the first
epoch's replica and averages each loss term over all processes.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from cache_schema.manifest import Manifest
from tide.noise import mix64

logger = logging.getLogger(__name__)

HOLDOUT_SALT = 0x686F6C646F7574  # "holdout"
HOLDOUT_KEY = "holdout_fraction"  # the build setting that records the split


def held_out(sample_keys: np.ndarray, fraction: float) -> np.ndarray:
    """bool per sample key: True where the sample belongs to the held-out split."""
    if fraction <= 0:
        return np.zeros(len(sample_keys), dtype=bool)
    keys = np.asarray(sample_keys, dtype=np.int64).astype(np.uint64) ^ np.uint64(HOLDOUT_SALT)
    return mix64(keys) < np.uint64(min(int(fraction * 2.0**64), 2**64 - 1))


def holdout_fraction(manifest: Manifest, requested: float | None) -> float:
    """``--val-fraction`` when given, else the fraction the cache was built with (0 without one)."""
    if requested is not None:
        return float(requested)
    settings = manifest.build.get("config", {}) if isinstance(manifest.build, dict) else {}
    return float(settings.get(HOLDOUT_KEY) or 0.0)


class _HeldOutSplit:
    """Mixin over :class:`stages.train.data.CacheStream`: keep only one side of the split.

    Set ``split_fraction`` and ``split_side`` ("train" or "val") on the class before constructing."""

    split_fraction: float = 0.0
    split_side: str = "train"

    def __init__(self, reader: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(reader, *args, **kwargs)
        keys = [reader.read_row_group(u, ["sample_key"]).column("sample_key").to_numpy() for u in range(reader.num_units)]
        out = [held_out(k, self.split_fraction) for k in keys]
        self._kept = [o if self.split_side == "val" else ~o for o in out]
        self._kept_flat = np.concatenate(self._kept) if self._kept else np.zeros(0, dtype=bool)
        self._unit_offsets = np.cumsum([0] + [len(k) for k in self._kept[:-1]]).astype(np.int64)
        self._split_orders: dict[int, np.ndarray] = {}

    def order(self, epoch: int) -> np.ndarray:
        if epoch not in self._split_orders:
            full = super().order(epoch)
            keep = self._kept_flat[self._unit_offsets[full[:, 0]] + full[:, 1]] if len(full) else np.zeros(0, bool)
            self._split_orders = {epoch: full[keep]}
        return self._split_orders[epoch]

    def rows_of_replica(self, replica: int) -> int:
        return int(sum(int(((values == replica) & kept).sum()) for values, kept in zip(self._replicas, self._kept,
                                                                                      strict=True)))


def split_stream_class(stream_class: type, fraction: float, side: str) -> type:
    """``stream_class`` restricted to the training (``side="train"``) or held-out (``"val"``) rows."""
    return type(f"{side.title()}Split{stream_class.__name__}", (_HeldOutSplit, stream_class),
                {"split_fraction": fraction, "split_side": side})


def held_out_rows(reader: Any, fraction: float) -> int:
    """Rows of the cache in the held-out split (every replica)."""
    total = 0
    for unit in range(reader.num_units):
        total += int(held_out(reader.read_row_group(unit, ["sample_key"]).column("sample_key").to_numpy(),
                              fraction).sum())
    return total


@torch.no_grad()
def evaluate(accelerator: Any, model: Any, step_fn: Any, stream: Any, *, progress: float,
             max_batches: int = 0) -> dict[str, float]:
    """Mean loss and loss terms over the held-out rows (first epoch's replica), all processes together."""
    was_training = model.training
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    batches = 0
    for batch, _ in stream.batches(stream.start_cursor(0), epochs=1):
        with accelerator.autocast():
            out = step_fn(model, batch.to(accelerator.device), progress=progress)
        sums["loss"] = sums.get("loss", 0.0) + out.loss.detach()
        for name, value in out.terms.items():
            sums[f"loss_{name}"] = sums.get(f"loss_{name}", 0.0) + value
        batches += 1
        if max_batches and batches >= max_batches:
            break
    if was_training:
        model.train()
    names = sorted(sums) or ["loss"]
    device = accelerator.device
    local = torch.stack([torch.as_tensor(sums.get(n, 0.0), dtype=torch.float64, device=device).reshape(())
                         for n in names] + [torch.tensor(float(batches), dtype=torch.float64, device=device)])
    total = accelerator.reduce(local, reduction="sum") if accelerator.num_processes > 1 else local
    values = total.tolist()  # the evaluation's one host sync
    count = values[-1]
    if count == 0:
        return {}
    return {name: values[i] / count for i, name in enumerate(names)}
