"""Synthetic caches for tests and benchmarks: real format v1 shards built from in-memory teacher outputs.

The teacher here is whatever produced the tensors handed in (tests keep a random "teacher-like" logits
tensor, the benchmark a tiny model); this module only turns them into cache rows with the same code
paths stage one uses — :func:`tide.targets.sparse_targets` for top-k targets, ``cache_schema`` for the
schema, shard writer and manifest.

Rows of a "shared" cache take ``teacher_logits``: {pass: (n_targets, V_teacher) tensor at the row's
``target_positions``}. Rows of a "cross" cache take ``chunk_logprob``: {pass: (C,) float array}.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cache_schema.directory import shard_file_name, write_manifest
from cache_schema.manifest import Manifest, NoiseInfo, StudentInfo, TargetsInfo, TeacherInfo
from cache_schema.schemas import PIPELINE_CROSS, PIPELINE_SHARED, schema_for, table_from_rows
from cache_schema.writer import write_shard
from tide.targets import sparse_targets


@dataclass
class SyntheticRow:
    """One (sample, replica) row before its teacher targets are compressed.

    input_ids, maskable, masked: (L,) arrays (masked ⊆ maskable); t in (0, 1]; target_positions (n,)
    (shared); chunk_start/end/in_prompt (C,) (cross; a chunk is masked iff any of its tokens is masked);
    teacher_logits / chunk_logprob: per pass, as in the module docstring; compdemo_group: per item."""

    sample_id: str
    sample_key: int
    replica: int
    t: float
    input_ids: np.ndarray
    maskable: np.ndarray
    masked: np.ndarray
    target_positions: np.ndarray | None = None
    teacher_logits: Mapping[str, torch.Tensor] = field(default_factory=dict)
    chunk_start: np.ndarray | None = None
    chunk_end: np.ndarray | None = None
    chunk_in_prompt: np.ndarray | None = None
    chunk_logprob: Mapping[str, np.ndarray] = field(default_factory=dict)
    compdemo_group: np.ndarray | None = None


@dataclass
class SyntheticCacheSpec:
    """Manifest-level facts of a synthetic cache."""

    pipeline: str
    student_fingerprint: str
    mask_token_id: int
    eos_token_id: int
    block_size: int
    max_length: int
    student_vocab_size: int
    replicas: int
    passes: tuple[str, ...] = ("plain",)
    k: int | None = None
    shared_vocab_size: int | None = None
    teacher_vocab_size: int = 0
    temperatures: tuple[float, ...] = (1.0,)
    value_dtype: str = "float32"
    row_group_rows: int = 4
    rows_per_shard: int = 8
    noise_seed: int = 0
    format_version: int = 1


def _row_columns(row: SyntheticRow, spec: SyntheticCacheSpec) -> dict[str, Any]:
    masked_positions = np.flatnonzero(np.asarray(row.masked)).astype(np.int32)
    out: dict[str, Any] = {
        "sample_id": row.sample_id,
        "sample_key": int(row.sample_key),
        "replica": int(row.replica),
        "t": float(row.t),
        "input_ids": np.asarray(row.input_ids, dtype=np.int32),
        "maskable": np.asarray(row.maskable, dtype=bool),
        "masked_positions": masked_positions,
        "teacher_input_ids": np.asarray(row.input_ids, dtype=np.int32),
    }
    if spec.pipeline == PIPELINE_SHARED:
        positions = np.asarray(row.target_positions, dtype=np.int32)
        n_items = len(positions)
        out["target_positions"] = positions
        out["target_teacher_positions"] = positions
        gold = torch.as_tensor(np.asarray(row.input_ids)[positions], dtype=torch.long)
        for name in spec.passes:
            logits = row.teacher_logits[name]
            if logits.shape[0] != n_items:
                raise ValueError(f"{row.sample_id}: {name} teacher logits have {logits.shape[0]} rows, "
                                 f"expected one per target position ({n_items})")
            targets = sparse_targets(logits.float(), gold, k=spec.k, shared_vocab_size=spec.shared_vocab_size,
                                     temperatures=spec.temperatures)
            out[f"{name}_topk_ids"] = targets.topk_ids.numpy()
            out[f"{name}_topk_values"] = targets.topk_values.numpy().astype(spec.value_dtype)
            out[f"{name}_log_partitions"] = targets.log_partitions.numpy()
            out[f"{name}_gold_logprob"] = targets.gold_logprob.numpy()
    else:
        start = np.asarray(row.chunk_start, dtype=np.int32)
        end = np.asarray(row.chunk_end, dtype=np.int32)
        n_items = len(start)
        masked = np.asarray(row.masked, dtype=bool)
        chunk_masked = np.array([bool(masked[s:e].any()) for s, e in zip(start, end, strict=True)], dtype=bool)
        out["chunk_student_start"] = start
        out["chunk_student_end"] = end
        out["chunk_teacher_start"] = start
        out["chunk_teacher_end"] = end
        out["chunk_masked"] = chunk_masked
        out["chunk_in_prompt"] = np.asarray(row.chunk_in_prompt, dtype=bool)
        for name in spec.passes:
            values = np.asarray(row.chunk_logprob[name], dtype=np.float32).copy()
            values[~chunk_masked] = np.nan
            out[f"{name}_chunk_logprob"] = values
    if "compdemo" in spec.passes:
        group = row.compdemo_group if row.compdemo_group is not None else np.zeros(n_items, dtype=np.uint8)
        out["compdemo_group"] = np.asarray(group, dtype=np.uint8)
    else:
        out["compdemo_group"] = np.zeros(0, dtype=np.uint8)
    return out


def write_synthetic_cache(
    out_dir: str | os.PathLike, rows: Sequence[SyntheticRow], spec: SyntheticCacheSpec
) -> Path:
    """Write ``rows`` as shards of ``spec.rows_per_shard`` rows plus a manifest; returns the directory."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if spec.pipeline not in (PIPELINE_SHARED, PIPELINE_CROSS):
        raise ValueError(f"unknown pipeline {spec.pipeline!r}")
    schema = schema_for(spec.pipeline, passes=spec.passes, k=spec.k, value_dtype=spec.value_dtype,
                        num_temperatures=len(spec.temperatures))
    groups = [rows[i : i + spec.rows_per_shard] for i in range(0, len(rows), spec.rows_per_shard)]
    shards = []
    for index, group in enumerate(groups):
        table = table_from_rows([_row_columns(row, spec) for row in group], schema)
        shards.append(write_shard(out_dir, shard_file_name(index, len(groups)), table, schema=schema,
                                  row_group_rows=spec.row_group_rows, overwrite=True))
    shared = spec.pipeline == PIPELINE_SHARED
    manifest = Manifest(
        pipeline=spec.pipeline,
        teacher=TeacherInfo(
            name="synthetic-teacher", revision=None, weights_fingerprint=None, model_type="synthetic",
            regime="paper", mask_token_id=max(spec.teacher_vocab_size - 1, 0),
            vocab_size=max(spec.teacher_vocab_size, 1), shared_vocab_size=spec.shared_vocab_size if shared else None,
        ),
        student=StudentInfo(
            tokenizer_fingerprint=spec.student_fingerprint, mask_token_id=spec.mask_token_id,
            eos_token_id=spec.eos_token_id, block_size=spec.block_size, max_length=spec.max_length,
            vocab_size=spec.student_vocab_size,
        ),
        teacher_tokenizer_fingerprint="synthetic",
        targets=TargetsInfo(passes=list(spec.passes), value_dtype=spec.value_dtype,
                            temperatures=[float(t) for t in spec.temperatures], k=spec.k if shared else None),
        noise=NoiseInfo(seed=spec.noise_seed, replicas=spec.replicas, eps=1e-3, schedule="linear",
                        demo_ratio=0.5, chunk_consistent=not shared),
        build={"synthetic": True},
        shards=shards,
    )
    write_manifest(out_dir, manifest)
    return out_dir


def random_base_rows(
    *,
    num_samples: int,
    replicas: int,
    seq_len: int,
    block_size: int,
    vocab_size: int,
    eos_token_id: int,
    prompt_len: int,
    seed: int = 0,
) -> list[SyntheticRow]:
    """Rows with random ids below ``vocab_size`` and random plain noise; prompt tokens are not maskable.

    Targets are not filled in. Every row has at least one masked position."""
    if seq_len % block_size:
        raise ValueError(f"seq_len {seq_len} is not a multiple of block_size {block_size}")
    gen = np.random.default_rng(seed)
    rows = []
    for sample in range(num_samples):
        ids = gen.integers(0, vocab_size, size=seq_len)
        content = int(gen.integers(prompt_len + 2, seq_len + 1))
        ids[content:] = eos_token_id
        maskable = np.arange(seq_len) >= prompt_len
        for replica in range(replicas):
            t = float(gen.uniform(0.05, 1.0))
            masked = maskable & (gen.uniform(size=seq_len) < t)
            if not masked.any():
                masked[prompt_len] = True
            rows.append(SyntheticRow(
                sample_id=f"synthetic:{sample}", sample_key=sample * 7919 + 1, replica=replica, t=t,
                input_ids=ids.copy(), maskable=maskable, masked=masked,
            ))
    return rows
