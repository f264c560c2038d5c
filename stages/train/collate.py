"""Collation of cache rows into padded training tensors and flat teacher-target tables.

A row is a mapping from column name to a numpy value: scalars for ``t``/``replica``, 1-D arrays for list
columns and 2-D arrays (items, k) for list<fixed_size_list> columns. The stored noise is used as is.

Vocabulary targets (pipeline "shared") become one flat table of target items (row, student position,
top-k ids/values, log-partitions at every stored temperature) for the selected pass.
Chunk targets (pipeline "cross") become one flat table of chunks (row, student start/end, teacher chunk
log-prob for the selected pass, active = masked ∧ ¬prompt).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch


@dataclass
class VocabTargets:
    """Top-k teacher targets at N target items.

    row, position: int64 (N,); topk_ids: int64 (N, k); topk_values: float32 (N, k) (teacher logits minus
    the row max over the shared slice, descending); log_partitions: float32 (N, n_T), one column per
    stored temperature (manifest ``targets.temperatures``, the first being 1.0)."""

    row: torch.Tensor
    position: torch.Tensor
    topk_ids: torch.Tensor
    topk_values: torch.Tensor
    log_partitions: torch.Tensor


@dataclass
class ChunkTargets:
    """Aligned chunks: row, start, end int64 (C,) (student positions, end exclusive); teacher_logprob
    float32 (C,) (NaN where not masked); active bool (C,) = masked ∧ ¬prompt."""

    row: torch.Tensor
    start: torch.Tensor
    end: torch.Tensor
    teacher_logprob: torch.Tensor
    active: torch.Tensor


@dataclass
class Batch:
    """input_ids int64 (B, L) clean x0 (EOS-padded); maskable bool (B, L); masked bool (B, L) (the stored
    plain noise); t float32 (B,); vocab / chunks: teacher targets of the selected pass, or None."""

    input_ids: torch.Tensor
    maskable: torch.Tensor
    masked: torch.Tensor
    t: torch.Tensor
    vocab: VocabTargets | None = None
    chunks: ChunkTargets | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())

    def to(self, device: torch.device | str) -> Batch:
        def move(obj):
            if obj is None:
                return None
            return type(obj)(**{f.name: getattr(obj, f.name).to(device) for f in fields(obj)})

        return Batch(
            input_ids=self.input_ids.to(device),
            maskable=self.maskable.to(device),
            masked=self.masked.to(device),
            t=self.t.to(device),
            vocab=move(self.vocab),
            chunks=move(self.chunks),
        )


@dataclass(frozen=True)
class CollateSpec:
    """What to collate: ``targets`` is "vocab", "chunk" or None; ``target_pass`` is "plain" or
    "compdemo"; ``max_length`` > 0 truncates rows (targets past it are dropped). ``k`` and
    ``num_temperatures`` (vocabulary targets; from the manifest) give the item widths, so a row without
    target items — a small t can mask no aligned position — still collates with the others."""

    pad_token_id: int
    block_size: int
    targets: str | None = None
    target_pass: str = "plain"
    max_length: int = 0
    k: int | None = None
    num_temperatures: int | None = None


def _column(row: Mapping[str, object], name: str, row_label: str) -> np.ndarray:
    if name not in row:
        raise KeyError(f"{row_label}: column {name!r} is missing from the cache row")
    return np.asarray(row[name])


def collate_rows(rows: Sequence[Mapping[str, object]], spec: CollateSpec) -> Batch:
    """Pad ``rows`` to one batch (length = the longest row, a multiple of the block size)."""
    if not rows:
        raise ValueError("cannot collate an empty list of rows")
    if spec.max_length and spec.max_length % spec.block_size:
        raise ValueError(f"max_length {spec.max_length} is not a multiple of the block size {spec.block_size}")
    if spec.targets not in (None, "vocab", "chunk"):
        raise ValueError(f"unknown target kind {spec.targets!r}; expected 'vocab', 'chunk' or None")
    labels = [str(row.get("sample_id", f"row {i}")) for i, row in enumerate(rows)]
    lengths = []
    for row, label in zip(rows, labels, strict=True):
        n = len(_column(row, "input_ids", label))
        if n % spec.block_size:
            raise ValueError(f"{label}: input_ids length {n} is not a multiple of the block size {spec.block_size}")
        lengths.append(min(n, spec.max_length) if spec.max_length else n)
    length = max(lengths)
    batch_size = len(rows)
    input_ids = np.full((batch_size, length), spec.pad_token_id, dtype=np.int64)
    maskable = np.zeros((batch_size, length), dtype=bool)
    masked = np.zeros((batch_size, length), dtype=bool)
    t = np.zeros(batch_size, dtype=np.float32)
    vocab_parts: list[dict[str, np.ndarray]] = []
    chunk_parts: list[dict[str, np.ndarray]] = []
    for b, (row, label, n) in enumerate(zip(rows, labels, lengths, strict=True)):
        input_ids[b, :n] = _column(row, "input_ids", label)[:n]
        row_maskable = _column(row, "maskable", label).astype(bool)
        maskable[b, :n] = row_maskable[:n]
        positions = _column(row, "masked_positions", label).astype(np.int64)
        positions = positions[positions < n]
        masked[b, positions] = True
        if (masked[b] & ~maskable[b]).any():
            raise ValueError(f"{label}: masked_positions include positions that are not maskable")
        t[b] = float(_column(row, "t", label))
        if not 0.0 < t[b] <= 1.0:
            raise ValueError(f"{label}: timestep t={t[b]} is outside (0, 1]")
        if spec.targets == "vocab":
            vocab_parts.append(_vocab_items(row, label, b, n, spec))
        elif spec.targets == "chunk":
            chunk_parts.append(_chunk_items(row, label, b, n, spec))
    batch = Batch(
        input_ids=torch.from_numpy(input_ids),
        maskable=torch.from_numpy(maskable),
        masked=torch.from_numpy(masked),
        t=torch.from_numpy(t),
    )
    if spec.targets == "vocab":
        # Rows without items carry no width of their own; leave them out unless every row is empty.
        vocab_parts = [p for p in vocab_parts if len(p["row"])] or vocab_parts[:1]
        cat = {k: np.concatenate([p[k] for p in vocab_parts]) for k in vocab_parts[0]}
        batch.vocab = VocabTargets(**{k: torch.from_numpy(v) for k, v in cat.items()})
    elif spec.targets == "chunk":
        cat = {k: np.concatenate([p[k] for p in chunk_parts]) for k in chunk_parts[0]}
        batch.chunks = ChunkTargets(**{k: torch.from_numpy(v) for k, v in cat.items()})
    return batch


def _vocab_items(row: Mapping[str, object], label: str, b: int, n: int, spec: CollateSpec) -> dict[str, np.ndarray]:
    prefix = spec.target_pass
    positions = _column(row, "target_positions", label).astype(np.int64)
    ids = _column(row, f"{prefix}_topk_ids", label)
    values = _column(row, f"{prefix}_topk_values", label)
    partitions = _column(row, f"{prefix}_log_partitions", label)
    count = len(positions)
    k = ids.shape[1] if ids.ndim == 2 else (spec.k or 0)
    num_t = partitions.shape[1] if partitions.ndim == 2 else (spec.num_temperatures or 0)
    ids = ids.reshape(count, k)
    values = values.reshape(count, k)
    partitions = partitions.reshape(count, num_t)
    keep = positions < n
    return {
        "row": np.full(int(keep.sum()), b, dtype=np.int64),
        "position": positions[keep],
        "topk_ids": ids[keep].astype(np.int64),
        "topk_values": values[keep].astype(np.float32),
        "log_partitions": partitions[keep].astype(np.float32),
    }


def _chunk_items(row: Mapping[str, object], label: str, b: int, n: int, spec: CollateSpec) -> dict[str, np.ndarray]:
    start = _column(row, "chunk_student_start", label).astype(np.int64)
    end = _column(row, "chunk_student_end", label).astype(np.int64)
    chunk_masked = _column(row, "chunk_masked", label).astype(bool)
    in_prompt = _column(row, "chunk_in_prompt", label).astype(bool)
    logprob = _column(row, f"{spec.target_pass}_chunk_logprob", label).astype(np.float32)
    if not (len(start) == len(end) == len(chunk_masked) == len(in_prompt) == len(logprob)):
        raise ValueError(f"{label}: chunk columns have different lengths")
    keep = end <= n
    active = chunk_masked & ~in_prompt & keep
    bad = active & ~np.isfinite(logprob)
    if bad.any():
        raise ValueError(
            f"{label}: {spec.target_pass}_chunk_logprob is not finite for {int(bad.sum())} masked response chunk(s)"
        )
    return {
        "row": np.full(int(keep.sum()), b, dtype=np.int64),
        "start": start[keep],
        "end": end[keep],
        "teacher_logprob": logprob[keep],
        "active": active[keep],
    }
