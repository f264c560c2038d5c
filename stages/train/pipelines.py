"""What each cache pipeline means to training: its columns, how its target items collate, and how a
collated batch becomes the objective's teacher targets.

One object per pipeline, chosen once from the manifest (:func:`train_pipeline`); nothing else in
training compares pipeline names. ``shared`` (pipeline B) carries sparse vocabulary targets at target
positions, decoded by the cache's codec (format v2's encodings, or v1's columns) once per batch;
``cross`` (pipeline A) carries chunk tables with the teacher's chunk log-probs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from cache_schema.codec import PaddedArrays, SparseCodec, V1Codec, codec_for
from cache_schema.errors import BatchRowError, SchemaError
from cache_schema.manifest import Manifest
from cache_schema.schemas import PIPELINE_CROSS, PIPELINE_SHARED, TRAINING_BASE_COLUMNS, chunk_logprob_column
from tide.exact_targets import ExactTeacher
from tide.objective import ChunkTargets, VocabTargets, chunk_token_index, index_among
from tide.targets import SparseTargets

BASE_COLUMNS = TRAINING_BASE_COLUMNS  # columns every training run reads, whatever the pipeline and mode


@dataclass
class VocabItems:
    """Sparse teacher targets of a batch, one entry per target item.

    row, position: int64 (N,); teacher: the items' :class:`tide.targets.SparseTargets` (ids and values padded
    to the batch's widest item, log tails per stored temperature, the first being 1.0), or their
    :class:`tide.exact_targets.ExactTeacher` (exact targets, :mod:`stages.train.exact_pipeline`)."""

    row: torch.Tensor
    position: torch.Tensor
    teacher: SparseTargets | ExactTeacher


@dataclass
class ChunkItems:
    """Aligned chunks of a batch: row, start, end int64 (C,) (student positions, end exclusive);
    teacher_logprob float32 (C,) (NaN where not masked); active bool (C,) = masked ∧ ¬prompt."""

    row: torch.Tensor
    start: torch.Tensor
    end: torch.Tensor
    teacher_logprob: torch.Tensor
    active: torch.Tensor


def decoded_targets(decoded: PaddedArrays, temperatures: tuple[float, ...]) -> SparseTargets:
    """The losses' targets over a codec's padded decode (the arrays are shared, not copied)."""
    return SparseTargets(topk_ids=torch.from_numpy(decoded.ids), topk_values=torch.from_numpy(decoded.values),
                         counts=torch.from_numpy(decoded.counts), log_tails=torch.from_numpy(decoded.log_tails),
                         temperatures=temperatures)


def vocab_loss_targets(items: VocabItems, flat_masked: torch.Tensor, seq_len: int) -> VocabTargets:
    """Vocabulary items mapped onto the masked positions (every item must be one); computed at collation, on
    the host, where the mapping keeps a host copy of its index."""
    index = index_among(flat_masked, items.row * seq_len + items.position, "cache target positions")
    return VocabTargets(index=index, teacher=items.teacher, host_index=index.cpu())


def row_column(row: Mapping[str, object], name: str, label: str) -> np.ndarray:
    """One column of a cache row as a numpy array; KeyError naming the row (``label``) if it is absent."""
    if name not in row:
        raise KeyError(f"{label}: column {name!r} is missing from the cache row")
    return np.asarray(row[name])


class TrainPipeline(Protocol):
    """The training side of one cache pipeline."""

    name: str
    target_kind: str  # the objective's target kind: "vocab" or "chunk"
    items_class: type
    targets_class: type  # what :meth:`loss_targets` returns

    def columns(self, target_pass: str) -> list[str]:
        """Cache columns a run with targets of ``target_pass`` reads, besides :data:`BASE_COLUMNS`."""

    def row_items(self, row: Mapping[str, object], label: str, b: int, n: int, target_pass: str) -> dict:
        """Per-row item arrays (numpy) of row ``b`` truncated to ``n`` tokens."""

    def concat_items(self, parts: list[dict]) -> VocabItems | ChunkItems:
        """One item table for the batch from the rows' parts."""

    def loss_targets(self, items: VocabItems | ChunkItems, flat_masked: torch.Tensor, row_t: torch.Tensor,
                     seq_len: int) -> VocabTargets | ChunkTargets:
        """The objective's targets: items mapped onto the M masked positions (``flat_masked``, ascending
        ``row · seq_len + position``); ``row_t`` (B,) the rows' timesteps."""


@dataclass(frozen=True)
class SharedPipeline:
    """Pipeline B: sparse targets at target positions (a subset of the masked positions).

    ``codec`` reads the cache's pass columns (:class:`cache_schema.codec.SparseCodec` for format v2,
    :class:`cache_schema.codec.V1Codec` for v1)."""

    codec: SparseCodec | V1Codec
    temperatures: tuple[float, ...]
    name: str = PIPELINE_SHARED
    target_kind: str = "vocab"
    items_class: type = VocabItems
    targets_class: type = VocabTargets
    any_temperature: bool = False  # vocabulary modes train at a stored temperature only

    def columns(self, target_pass: str) -> list[str]:
        return ["target_positions", *self.codec.columns(target_pass)]

    def row_items(self, row: Mapping[str, object], label: str, b: int, n: int, target_pass: str) -> dict:
        """The row's raw pass columns and target positions; checked and decoded once per batch, in
        :meth:`concat_items` (a per-row check costs more than the batch's whole decode)."""
        return {"b": b, "n": n, "label": label, "pass": target_pass,
                "position": row_column(row, "target_positions", label),
                "columns": {name: row_column(row, name, label) for name in self.codec.columns(target_pass)}}

    def concat_items(self, parts: list[dict]) -> VocabItems:
        target_pass = parts[0]["pass"]
        try:
            items = self.codec.items_per_row([p["columns"] for p in parts], target_pass)
        except BatchRowError as exc:
            raise ValueError(f"{parts[exc.row]['label']}: {exc}") from None
        positions = [p["position"] for p in parts]
        stored = np.fromiter((len(x) for x in positions), dtype=np.int64, count=len(parts))
        mismatch = np.flatnonzero(items != stored)
        if mismatch.size:
            at = int(mismatch[0])
            raise ValueError(f"{parts[at]['label']}: {items[at]} {target_pass} target items for {stored[at]} target "
                             "positions")
        columns = {name: np.concatenate([p["columns"][name].reshape(-1) for p in parts])
                   for name in parts[0]["columns"]}
        try:
            decoded = self.codec.decode_padded(columns, target_pass)
        except SchemaError as exc:
            rows = ", ".join(p["label"] for p in parts)
            raise ValueError(f"the {target_pass} targets of rows {rows} do not decode: {exc}") from None
        position = np.concatenate(positions).astype(np.int64)
        row = np.repeat(np.fromiter((p["b"] for p in parts), dtype=np.int64, count=len(parts)), stored)
        keep = position < np.repeat(np.fromiter((p["n"] for p in parts), dtype=np.int64, count=len(parts)), stored)
        if not keep.all():
            decoded, row, position = decoded.select(keep), row[keep], position[keep]
        return VocabItems(row=torch.from_numpy(row), position=torch.from_numpy(position),
                          teacher=decoded_targets(decoded, self.temperatures))

    def loss_targets(self, items: VocabItems, flat_masked: torch.Tensor, row_t: torch.Tensor,
                     seq_len: int) -> VocabTargets:
        return vocab_loss_targets(items, flat_masked, seq_len)


@dataclass(frozen=True)
class CrossPipeline:
    """Pipeline A: chunk tables with the teacher's chunk log-prob per masked chunk."""

    name: str = PIPELINE_CROSS
    target_kind: str = "chunk"
    items_class: type = ChunkItems
    targets_class: type = ChunkTargets

    def columns(self, target_pass: str) -> list[str]:
        return ["chunk_student_start", "chunk_student_end", "chunk_masked", "chunk_in_prompt",
                chunk_logprob_column(target_pass)]

    def row_items(self, row: Mapping[str, object], label: str, b: int, n: int, target_pass: str) -> dict:
        start = row_column(row, "chunk_student_start", label).astype(np.int64)
        end = row_column(row, "chunk_student_end", label).astype(np.int64)
        chunk_masked = row_column(row, "chunk_masked", label).astype(bool)
        in_prompt = row_column(row, "chunk_in_prompt", label).astype(bool)
        name = chunk_logprob_column(target_pass)
        logprob = row_column(row, name, label).astype(np.float32)
        if not (len(start) == len(end) == len(chunk_masked) == len(in_prompt) == len(logprob)):
            raise ValueError(f"{label}: chunk columns have different lengths")
        keep = end <= n
        active = chunk_masked & ~in_prompt & keep
        bad = active & ~np.isfinite(logprob)
        if bad.any():
            raise ValueError(f"{label}: {name} is not finite for {int(bad.sum())} masked response chunk(s)")
        return {
            "row": np.full(int(keep.sum()), b, dtype=np.int64),
            "start": start[keep],
            "end": end[keep],
            "teacher_logprob": logprob[keep],
            "active": active[keep],
        }

    def concat_items(self, parts: list[dict]) -> ChunkItems:
        return ChunkItems(**{key: torch.from_numpy(np.concatenate([p[key] for p in parts])) for key in parts[0]})

    def loss_targets(self, items: ChunkItems, flat_masked: torch.Tensor, row_t: torch.Tensor,
                     seq_len: int) -> ChunkTargets:
        active = items.active.nonzero().squeeze(1)
        rows = items.row[active]
        token_index, chunk_of_token = chunk_token_index(
            flat_masked, rows, items.start[active], items.end[active], seq_len)
        return ChunkTargets(token_index=token_index, chunk_of_token=chunk_of_token,
                            teacher_logprob=items.teacher_logprob[active], t=row_t.float()[rows])


def train_pipeline(manifest: Manifest, cache_dir: str | os.PathLike[str] | None = None,
                   teacher_targets: str = "auto") -> SharedPipeline | CrossPipeline:
    """The training view of a cache's pipeline, from its manifest; for a shared cache with exact targets,
    ``teacher_targets`` picks them or the sparse ones (:func:`stages.train.exact_pipeline.use_exact`), and the
    exact ones need the cache directory ``cache_dir`` (the LM-head file)."""
    if manifest.pipeline != PIPELINE_SHARED:
        return CrossPipeline()
    from stages.train.exact_pipeline import exact_pipeline, use_exact  # it builds on this module's VocabItems

    if use_exact(manifest, teacher_targets):
        return exact_pipeline(manifest, cache_dir)
    return SharedPipeline(codec=codec_for(manifest), temperatures=tuple(float(t) for t in manifest.targets.temperatures))
