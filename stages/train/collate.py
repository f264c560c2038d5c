"""Collation of cache rows into padded training tensors, one flat table of teacher-target items, and the
objective's targets.

Everything the step would otherwise have to ask the device about is settled here, on the host, once per
batch: the flat indices of the masked positions, the number of maskable tokens, the mapping of every target
item onto a masked position (and the refusal of one that is not masked). The training step then runs
without a host sync (docs/training.md#speed).

A row is a mapping from column name to a numpy value: scalars for ``t``/``replica``, 1-D arrays for list
columns and 2-D arrays (items, k) for list<fixed_size_list> columns. The stored noise is used as is. The
cache's pipeline (:mod:`stages.train.pipelines`) collates its own target items: top-k targets at target
positions (``shared``) or chunk tables (``cross``), for the selected teacher pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from stages.train.pipelines import ChunkItems, CrossPipeline, SharedPipeline, VocabItems, row_column
from tide.objective import Targets, VocabTargets, masked_positions_of


@dataclass
class Batch:
    """input_ids int64 (B, L) clean x0 (EOS-padded); maskable bool (B, L); masked bool (B, L) (the stored
    plain noise); t float32 (B,); vocab / chunks: teacher-target items of the selected pass, or None;
    targets: those items mapped onto the masked positions (what the objective reads), or None;
    masked_index: int64 (M,) ascending flat ``row · L + position`` of the masked positions; num_maskable:
    maskable tokens in the batch (a host int); provenance: where each row comes from (shard, row group,
    row), for messages."""

    input_ids: torch.Tensor
    maskable: torch.Tensor
    masked: torch.Tensor
    t: torch.Tensor
    vocab: VocabItems | None = None
    chunks: ChunkItems | None = None
    targets: Targets = None
    masked_index: torch.Tensor | None = None
    num_maskable: int = 0
    provenance: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.masked_index is None:  # a batch made by hand: derive what collation would have computed
            self.masked_index = masked_positions_of(self.masked)
            self.num_maskable = int(self.maskable.sum())

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())

    @property
    def items(self) -> VocabItems | ChunkItems | None:
        """The batch's teacher-target items, whichever pipeline they come from."""
        return self.vocab if self.vocab is not None else self.chunks

    def to(self, device: torch.device | str) -> Batch:
        targets = None if self.targets is None else self.targets.to(device)
        moved: dict[int, object] = {}  # the vocabulary items share their teacher with the targets: move it once
        if isinstance(targets, VocabTargets):
            moved[id(self.targets.teacher)] = targets.teacher

        def move(obj):
            if obj is None:
                return None
            values = {}
            for f in fields(obj):
                value = getattr(obj, f.name)
                values[f.name] = moved[id(value)] if id(value) in moved else value.to(device)
            return type(obj)(**values)

        return Batch(
            input_ids=self.input_ids.to(device),
            maskable=self.maskable.to(device),
            masked=self.masked.to(device),
            t=self.t.to(device),
            vocab=move(self.vocab),
            chunks=move(self.chunks),
            targets=targets,
            masked_index=self.masked_index.to(device),
            num_maskable=self.num_maskable,
            provenance=self.provenance,
        )

    def with_targets(self, pipeline: SharedPipeline | CrossPipeline) -> Batch:
        """This batch with its targets (re)computed from its items, e.g. after the items were replaced."""
        items = self.items
        if items is None or not isinstance(items, pipeline.items_class):
            raise ValueError(f"the batch has no {pipeline.target_kind} target items")
        return replace(self, targets=pipeline.loss_targets(items, self.masked_index, self.t, self.input_ids.shape[1]))


@dataclass(frozen=True)
class CollateSpec:
    """What to collate: ``pipeline`` (the cache's, see :func:`stages.train.pipelines.train_pipeline`) or
    None for no teacher targets; ``target_pass`` is "plain" or "compdemo"; ``max_length`` > 0 truncates
    rows (targets past it are dropped)."""

    pad_token_id: int
    block_size: int
    pipeline: SharedPipeline | CrossPipeline | None = None
    target_pass: str = "plain"
    max_length: int = 0


def collate_rows(rows: Sequence[Mapping[str, object]], spec: CollateSpec) -> Batch:
    """Pad ``rows`` to one batch (length = the longest row, a multiple of the block size).

    The rows' arrays are concatenated and checked once per batch, not row by row: a batch of 8 rows of 512
    tokens collates in well under a millisecond (docs/benchmarks.md, reader throughput)."""
    if not rows:
        raise ValueError("cannot collate an empty list of rows")
    if spec.max_length and spec.max_length % spec.block_size:
        raise ValueError(f"max_length {spec.max_length} is not a multiple of the block size {spec.block_size}")
    labels = [str(row.get("sample_id", f"row {i}")) for i, row in enumerate(rows)]
    ids = [row_column(row, "input_ids", label) for row, label in zip(rows, labels, strict=True)]
    full = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    _refuse_first(full % spec.block_size != 0, labels, lambda b: f"input_ids length {full[b]} is not a multiple of "
                  f"the block size {spec.block_size}")
    row_maskable = [row_column(row, "maskable", label) for row, label in zip(rows, labels, strict=True)]
    _refuse_first(np.fromiter((len(x) for x in row_maskable), dtype=np.int64, count=len(rows)) != full, labels,
                  lambda b: f"maskable has {len(row_maskable[b])} entries for {full[b]} input_ids")
    lengths = np.minimum(full, spec.max_length) if spec.max_length else full
    batch_size, length = len(rows), int(lengths.max())
    inside = np.arange(length)[None, :] < lengths[:, None]
    input_ids = np.full((batch_size, length), spec.pad_token_id, dtype=np.int64)
    input_ids[inside] = np.concatenate([x[:n] for x, n in zip(ids, lengths, strict=True)])
    maskable = np.zeros((batch_size, length), dtype=bool)
    maskable[inside] = np.concatenate([x[:n] for x, n in zip(row_maskable, lengths, strict=True)]).astype(bool)
    masked = _masked(rows, labels, lengths, maskable)
    t = np.array([float(row_column(row, "t", label)) for row, label in zip(rows, labels, strict=True)],
                 dtype=np.float32)
    _refuse_first(~((t > 0.0) & (t <= 1.0)), labels, lambda b: f"timestep t={t[b]} is outside (0, 1]")
    batch = Batch(
        input_ids=torch.from_numpy(input_ids),
        maskable=torch.from_numpy(maskable),
        masked=torch.from_numpy(masked),
        t=torch.from_numpy(t),
        masked_index=torch.from_numpy(np.flatnonzero(masked)),
        num_maskable=int(maskable.sum()),
    )
    if spec.pipeline is not None:
        parts = [spec.pipeline.row_items(row, label, b, int(n), spec.target_pass)
                 for b, (row, label, n) in enumerate(zip(rows, labels, lengths, strict=True))]
        items = spec.pipeline.concat_items(parts)
        if isinstance(items, VocabItems):
            batch.vocab = items
        else:
            batch.chunks = items
        batch = batch.with_targets(spec.pipeline)
    return batch


def _masked(rows: Sequence[Mapping[str, object]], labels: list[str], lengths: np.ndarray,
            maskable: np.ndarray) -> np.ndarray:
    """(B, L) bool: the rows' stored masked positions, those before each row's (truncated) length."""
    positions = [row_column(row, "masked_positions", label) for row, label in zip(rows, labels, strict=True)]
    counts = np.fromiter((len(p) for p in positions), dtype=np.int64, count=len(positions))
    flat = np.concatenate(positions).astype(np.int64)
    row_of = np.repeat(np.arange(len(rows)), counts)
    if flat.size and flat.min() < 0:  # a negative index would mark a position from the end
        b = int(row_of[np.argmax(flat < 0)])
        raise ValueError(f"{labels[b]}: masked position {int(flat[row_of == b].min())} is negative")
    keep = flat < lengths[row_of]
    masked = np.zeros(maskable.shape, dtype=bool)
    masked[row_of[keep], flat[keep]] = True
    _refuse_first((masked & ~maskable).any(axis=1), labels,
                  lambda b: "masked_positions include positions that are not maskable")
    return masked


def _refuse_first(bad: np.ndarray, labels: list[str], message: Callable[[int], str]) -> None:
    """ValueError ``"<label>: <message(b)>"`` for the first row ``b`` where ``bad`` (B,) is True."""
    if bad.any():
        b = int(np.argmax(bad))
        raise ValueError(f"{labels[b]}: {message(b)}")
