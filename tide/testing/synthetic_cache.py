"""Synthetic caches for tests and benchmarks: real cache directories (shards + manifest) from generated rows.

One spec (:class:`SyntheticCacheSpec`: the manifest-level facts), one writer (:func:`write_cache_rows`: rows of
column values → shards named as a build names them, then the manifest, through ``cache_schema``), and two
sources of rows:

* training-shaped rows, :class:`SyntheticRow`: ids, noise and the teacher's *full* outputs handed in (tests
  keep a random "teacher-like" logits tensor, benchmarks a tiny model); :func:`write_synthetic_cache` turns
  them into targets with :func:`tide.targets.sparse_targets` and the cache's codec, the code stage one uses
  (or into format-v1 columns for a ``format_version=1`` spec, to test the v1 read path). A "shared" row takes
  ``teacher_logits``: {pass: (n_targets, V_teacher) tensor at the row's ``target_positions``}; a "cross" row
  ``chunk_logprob``: {pass: (C,) float array}. :func:`random_base_rows` draws the ids and noise.
* format-shaped rows, :func:`shared_rows` / :func:`cross_rows`: complete column rows over a small vocabulary
  whose sparse targets are computed here with numpy, independently of :mod:`tide.targets`, following the
  format's invariants by construction (peaked teacher distributions, a ragged k reaching 90% of the mass,
  log tails over the unstored ids, chunk-consistent masks, teacher sequences offset by a template prefix),
  then encoded with :mod:`cache_schema.codec`. The full logits stay next to each
  row (``_logits_<pass>`` keys, removed by :func:`strip` and by the writer) so format tests can compare decoded
  probabilities with an independent softmax. :func:`format_test_spec` is the spec those rows belong to.

This module is the one place of :mod:`tide` that imports ``cache_schema`` (declared in the import contract):
it writes caches, and only tests and benchmarks import it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cache_schema.codec import SparseArrays, SparseCodec
from cache_schema.directory import shard_entry, shard_file_name, write_manifest
from cache_schema.manifest import (
    EncodingInfo,
    KPolicyInfo,
    Manifest,
    NoiseInfo,
    SparseInfo,
    StudentInfo,
    TargetsInfo,
    TeacherInfo,
)
from cache_schema.schemas import ENCODING_PACKED, PIPELINE_CROSS, PIPELINE_SHARED, table_from_rows
from cache_schema.shard_facts import manifest_facts
from cache_schema.writer import write_shard
from tide.targets import KPolicy, sparse_targets

# ------------------------------------------------------------------------------------------------ the spec


@dataclass
class SyntheticCacheSpec:
    """Manifest-level facts of a synthetic cache, and how its rows are cut into shards and row groups.

    ``k`` is the fixed k, or with ``k_policy`` the policy (its ceiling must be ``k``); ``encoding`` and
    ``id_table`` are format 2's, ``value_dtype`` format 1's (``format_version=1`` writes a v1 cache).
    ``teacher_mask_token_id`` None = the last teacher id."""

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
    k_policy: KPolicy | None = None
    encoding: str = ENCODING_PACKED
    id_table: tuple[int, ...] = ()
    format_version: int = 2
    row_group_rows: int = 4
    rows_per_shard: int = 8
    noise_seed: int = 0
    teacher_model_type: str = "synthetic"
    teacher_revision: str | None = None
    teacher_weights_fingerprint: str | None = None
    teacher_mask_token_id: int | None = None
    teacher_tokenizer_fingerprint: str = "synthetic"
    build: dict[str, Any] = field(default_factory=lambda: {"synthetic": True})

    def manifest(self) -> Manifest:
        """The cache's manifest, without shards."""
        if self.pipeline not in (PIPELINE_SHARED, PIPELINE_CROSS):
            raise ValueError(f"unknown pipeline {self.pipeline!r}")
        shared = self.pipeline == PIPELINE_SHARED
        teacher_mask = self.teacher_mask_token_id
        return Manifest(
            pipeline=self.pipeline,
            teacher=TeacherInfo(
                name="synthetic-teacher", revision=self.teacher_revision,
                weights_fingerprint=self.teacher_weights_fingerprint, model_type=self.teacher_model_type,
                regime="paper", mask_token_id=max(self.teacher_vocab_size - 1, 0) if teacher_mask is None else teacher_mask,
                vocab_size=max(self.teacher_vocab_size, 1), shared_vocab_size=self.shared_vocab_size if shared else None,
            ),
            student=StudentInfo(
                tokenizer_fingerprint=self.student_fingerprint, mask_token_id=self.mask_token_id,
                eos_token_id=self.eos_token_id, block_size=self.block_size, max_length=self.max_length,
                vocab_size=self.student_vocab_size,
            ),
            teacher_tokenizer_fingerprint=self.teacher_tokenizer_fingerprint,
            targets=self._targets_info(),
            noise=NoiseInfo(seed=self.noise_seed, replicas=self.replicas, eps=1e-3, schedule="linear",
                            demo_ratio=0.5, chunk_consistent=not shared),
            build=dict(self.build),
            format_version=self.format_version,
        )

    @property
    def policy(self) -> KPolicy:
        policy = self.k_policy or KPolicy.fixed(int(self.k))
        if policy.ceiling != self.k:
            raise ValueError(f"k={self.k} must equal the k policy's ceiling {policy.ceiling}")
        return policy

    def codec(self) -> SparseCodec:
        return SparseCodec(self.encoding, num_temperatures=len(self.temperatures), id_table=self.id_table,
                           vocab_size=self.shared_vocab_size)

    def _targets_info(self) -> TargetsInfo:
        temperatures = [float(t) for t in self.temperatures]
        if self.pipeline != PIPELINE_SHARED:
            return (TargetsInfo(passes=list(self.passes), temperatures=temperatures, value_dtype=self.value_dtype)
                    if self.format_version == 1 else TargetsInfo(passes=list(self.passes), temperatures=temperatures))
        if self.format_version == 1:
            return TargetsInfo(passes=list(self.passes), temperatures=temperatures, value_dtype=self.value_dtype,
                               k=self.k)
        policy = self.policy
        mass = policy.kind == "mass"
        packed = self.encoding == ENCODING_PACKED
        return TargetsInfo(passes=list(self.passes), temperatures=temperatures, sparse=SparseInfo(
            k_policy=KPolicyInfo(kind=policy.kind, ceiling=policy.ceiling, mass=policy.mass if mass else None,
                                 temperature=policy.temperature if mass else None,
                                 floor=policy.floor if mass else None),
            encoding=EncodingInfo(name=self.encoding, value_step=self.codec().value_step if packed else None,
                                  id_table=list(self.id_table) if packed else None)))


def write_cache_rows(out_dir: str | os.PathLike, rows: Sequence[Mapping[str, Any]], spec: SyntheticCacheSpec) -> Manifest:
    """Write rows of column values (keys starting with ``_`` are left out) as shards of
    ``spec.rows_per_shard`` rows, ``data/shard-IIIII-of-NNNNN.parquet``, then the card and the manifest; returns
    the manifest."""
    clean = strip(rows)
    groups = [clean[i : i + spec.rows_per_shard] for i in range(0, len(clean), spec.rows_per_shard)]
    return write_cache_shards(out_dir, groups, spec, len(groups))


def write_cache_shards(out_dir: str | os.PathLike, shards: Iterable[Sequence[Mapping[str, Any]]],
                       spec: SyntheticCacheSpec, num_shards: int) -> Manifest:
    """:func:`write_cache_rows` with the rows already cut into ``num_shards`` shards and made one shard at a
    time (memory holds one shard: caches larger than memory, for benchmarks); returns the manifest."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = spec.manifest()
    schema = manifest.arrow_schema()
    facts = manifest_facts(manifest) if manifest.format_version >= 2 else None  # as a v1 build wrote them: none
    for index, group in enumerate(shards):
        table = table_from_rows(strip(group), schema)
        manifest.shards.append(write_shard(out_dir, shard_entry(shard_file_name(index, num_shards)), table,
                                           schema=schema, row_group_rows=spec.row_group_rows, overwrite=True,
                                           facts=facts))
    if len(manifest.shards) != num_shards:
        raise ValueError(f"{len(manifest.shards)} shards given, {num_shards} announced")
    write_manifest(out_dir, manifest)
    return manifest


def strip(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows without the generator-only keys (those starting with ``_``, e.g. ``_logits_plain``)."""
    return [{k: v for k, v in row.items() if not k.startswith("_")} for row in rows]


# ------------------------------------------------------------------------------------ training-shaped rows


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
            out.update(_pass_columns(name, logits.float(), gold, spec))
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


def _pass_columns(name: str, logits: torch.Tensor, gold: torch.Tensor, spec: SyntheticCacheSpec) -> dict[str, Any]:
    """One pass's target columns from the teacher logits at a row's target positions, as stage one writes them."""
    if spec.format_version == 1:
        targets = sparse_targets(logits, gold, k=spec.k, shared_vocab_size=spec.shared_vocab_size,
                                 temperatures=spec.temperatures)
        values = logits[:, : spec.shared_vocab_size] - logits[:, : spec.shared_vocab_size].max(1, keepdim=True).values
        log_z = torch.stack([torch.logsumexp(values / t, dim=1) for t in spec.temperatures], dim=1)
        return {f"{name}_topk_ids": targets.topk_ids.numpy(),
                f"{name}_topk_values": targets.topk_values.numpy().astype(spec.value_dtype),
                f"{name}_log_partitions": log_z.numpy(), f"{name}_gold_logprob": targets.gold_logprob.numpy()}
    targets = sparse_targets(logits, gold, k=spec.k, shared_vocab_size=spec.shared_vocab_size,
                             temperatures=spec.temperatures, policy=spec.policy)
    valid = targets.valid().numpy()
    arrays = SparseArrays(targets.counts.numpy().astype(np.int64), targets.topk_ids.numpy()[valid].astype(np.int64),
                          targets.topk_values.numpy()[valid], targets.log_tails.numpy(),
                          targets.gold_logprob.numpy())
    return spec.codec().encode(arrays, name)


def write_synthetic_cache(
    out_dir: str | os.PathLike, rows: Sequence[SyntheticRow], spec: SyntheticCacheSpec
) -> Path:
    """Write training-shaped ``rows`` (targets from their teacher outputs) as a cache; returns the directory."""
    if spec.pipeline not in (PIPELINE_SHARED, PIPELINE_CROSS):
        raise ValueError(f"unknown pipeline {spec.pipeline!r}")
    write_cache_rows(out_dir, [_row_columns(row, spec) for row in rows], spec)
    return Path(out_dir)


def write_synthetic_shards(out_dir: str | os.PathLike, shards: Iterable[Sequence[SyntheticRow]],
                           spec: SyntheticCacheSpec, num_shards: int) -> Path:
    """:func:`write_synthetic_cache` one shard of rows at a time (see :func:`write_cache_shards`)."""
    write_cache_shards(out_dir, ([_row_columns(row, spec) for row in shard] for shard in shards), spec, num_shards)
    return Path(out_dir)


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


# -------------------------------------------------------------------------------------- format-shaped rows

STUDENT_VOCAB = 300
TEACHER_VOCAB = 320
SHARED_VOCAB = 280
BLOCK = 8
TEMPERATURES = (1.0, 2.0)
TEACHER_PREFIX = 3  # teacher sequences carry 3 extra template tokens in front


FORMAT_MASS = 0.9  # the ragged k of format-shaped rows: the fewest ids holding 90% of the mass at T = 1
FORMAT_FLOOR = 2
FORMAT_ID_TABLE = (7, 3, 250, 11, 0)  # a few frequent ids, so ranks differ from ids


def format_test_spec(
    pipeline: str,
    *,
    k: int = 8,
    value_dtype: str = "float16",
    encoding: str = ENCODING_PACKED,
    format_version: int = 2,
    passes: tuple[str, ...] = ("plain", "compdemo"),
    rows_per_shard: int = 6,
    row_group_rows: int = 4,
) -> SyntheticCacheSpec:
    """The spec of :func:`shared_rows` / :func:`cross_rows` caches (their vocabularies, block, temperatures,
    k policy and id table); ``format_version=1`` for v1 rows (fixed k, ``value_dtype`` values)."""
    shared = pipeline == PIPELINE_SHARED
    policy = KPolicy(kind="mass", ceiling=k, mass=FORMAT_MASS, temperature=1.0, floor=min(FORMAT_FLOOR, k))
    return SyntheticCacheSpec(
        k_policy=policy if format_version == 2 else None, encoding=encoding, format_version=format_version,
        id_table=FORMAT_ID_TABLE if encoding == ENCODING_PACKED else (),
        pipeline=pipeline, student_fingerprint="s" * 16, mask_token_id=STUDENT_VOCAB - 1,
        eos_token_id=SHARED_VOCAB - 1, block_size=BLOCK, max_length=64, student_vocab_size=STUDENT_VOCAB,
        replicas=2, passes=tuple(passes), k=k, shared_vocab_size=SHARED_VOCAB, teacher_vocab_size=TEACHER_VOCAB,
        temperatures=TEMPERATURES, value_dtype=value_dtype, row_group_rows=row_group_rows,
        rows_per_shard=rows_per_shard, noise_seed=1234, teacher_model_type="qwen3" if shared else "llada2_moe",
        teacher_revision="0" * 40, teacher_weights_fingerprint="f" * 16, teacher_tokenizer_fingerprint="t" * 16,
        build={"purpose": "tests"},
    )


def logsumexp(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """log Σ exp(x) along ``axis``; −inf for an all −inf slice."""
    top = x.max(axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return (top + np.log(np.exp(x - top).sum(axis=axis, keepdims=True))).squeeze(axis)


def _sequence(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    length = BLOCK * int(rng.integers(2, 5))
    prompt = int(rng.integers(2, length // 2))
    ids = rng.integers(0, SHARED_VOCAB, size=length).astype(np.int32)
    maskable = np.arange(length) >= prompt
    return ids, maskable, prompt


def shared_logits(rng: np.random.Generator, gold: np.ndarray) -> np.ndarray:
    """Peaked teacher logits (n, SHARED_VOCAB) whose peak sits on the gold id most of the time."""
    n = gold.shape[0]
    logits = rng.normal(0.0, 2.0, size=(n, SHARED_VOCAB))
    peak = np.where(rng.random(n) < 0.7, gold, rng.integers(0, SHARED_VOCAB, size=n))
    logits[np.arange(n), peak] += 8.0
    return logits


def shared_targets(logits: np.ndarray, gold: np.ndarray, k: int, *, ragged: bool = True) -> SparseArrays:
    """Sparse targets of ``logits`` (n, SHARED_VOCAB) in numpy: the top ids by logit, as many as reach
    :data:`FORMAT_MASS` at T = 1 within [:data:`FORMAT_FLOOR`, k] (``ragged``) or k; log tails over the
    unstored ids at every temperature of :data:`TEMPERATURES`; gold log-probs at T = 1."""
    n = gold.shape[0]
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    shifted = logits - logits.max(axis=1, keepdims=True)
    values = np.take_along_axis(shifted, order, axis=1)
    log_z = np.stack([logsumexp(shifted / t, axis=1) for t in TEMPERATURES], axis=1)
    if ragged:
        cumulative = np.cumsum(np.exp(values - log_z[:, :1]), axis=1)
        counts = np.clip(1 + (cumulative < FORMAT_MASS).sum(axis=1), min(FORMAT_FLOOR, k), k)
    else:
        counts = np.full(n, k)
    stored = np.arange(k)[None, :] < counts[:, None]
    unstored = shifted.copy()
    unstored[np.repeat(np.arange(n), counts), order[stored]] = -np.inf
    with np.errstate(divide="ignore"):
        tails = np.stack([logsumexp(unstored / t, axis=1) for t in TEMPERATURES], axis=1) - log_z
    gold_lp = shifted[np.arange(n), gold] - log_z[:, 0]
    return SparseArrays(counts.astype(np.int64), order[stored].astype(np.int64), values[stored].astype(np.float32),
                        tails.astype(np.float32), gold_lp.astype(np.float32))


def v1_columns(logits: np.ndarray, gold: np.ndarray, k: int, value_dtype: str) -> dict[str, np.ndarray]:
    """Format-v1 target columns of ``logits`` (fixed k, log-partitions over the slice), in numpy."""
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_z = np.stack([logsumexp(shifted / t, axis=1) for t in TEMPERATURES], axis=1)
    return {"topk_ids": order.astype(np.int32),
            "topk_values": np.take_along_axis(shifted, order, axis=1).astype(value_dtype),
            "log_partitions": log_z.astype(np.float32),
            "gold_logprob": (shifted[np.arange(gold.shape[0]), gold] - log_z[:, 0]).astype(np.float32)}


def shared_rows(n: int, *, seed: int = 0, spec: SyntheticCacheSpec | None = None) -> list[dict]:
    """``n`` pipeline-``shared`` rows of ``spec`` (default :func:`format_test_spec`), some masked positions
    dropped as alignment does; the full logits stay under ``_logits_<pass>``."""
    spec = spec or format_test_spec(PIPELINE_SHARED)
    passes, k = spec.passes, int(spec.k)
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(n):
        ids, maskable, _ = _sequence(rng)
        t = float(rng.uniform(0.05, 1.0))
        masked = np.flatnonzero(maskable & (rng.random(ids.size) < t)).astype(np.int32)
        if masked.size == 0:
            masked = np.flatnonzero(maskable)[:1].astype(np.int32)
        targets = masked[np.arange(masked.size) % 4 != 3]  # some positions dropped by alignment
        teacher_ids = np.concatenate([np.array([SHARED_VOCAB + 1, 5, 6], dtype=np.int32), ids])
        row = {
            "sample_id": f"synthetic:{index}",
            "sample_key": int(rng.integers(0, 2**63 - 1)),
            "replica": index % 2,
            "t": t,
            "input_ids": ids,
            "maskable": maskable,
            "masked_positions": masked,
            "teacher_input_ids": teacher_ids,
            "compdemo_group": (rng.random(targets.size) < 0.5).astype(np.uint8)
            if "compdemo" in passes
            else np.zeros(0, np.uint8),
            "target_positions": targets,
            "target_teacher_positions": (targets + TEACHER_PREFIX).astype(np.int32),
        }
        for pass_name in passes:
            gold = ids[targets].astype(np.int64)
            logits = shared_logits(rng, gold)
            if spec.format_version == 1:
                for key, value in v1_columns(logits, gold, k, spec.value_dtype).items():
                    row[f"{pass_name}_{key}"] = value
            else:
                row.update(spec.codec().encode(shared_targets(logits, gold, k), pass_name))
            row[f"_logits_{pass_name}"] = logits
        rows.append(row)
    return rows


def cross_rows(n: int, *, seed: int = 0, passes: tuple[str, ...] = ("plain", "compdemo")) -> list[dict]:
    """``n`` pipeline-``cross`` rows: chunks of 1-3 student tokens mapped to 1-2 teacher tokens each."""
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(n):
        ids, maskable, prompt = _sequence(rng)
        length = ids.size
        content_end = length - int(rng.integers(0, BLOCK))  # the rest is EOS padding
        t = float(rng.uniform(0.05, 1.0))
        s_start, s_end, t_start, t_end, in_prompt = [], [], [], [], []
        s_pos, t_pos = 0, TEACHER_PREFIX
        while s_pos < content_end:
            size = int(rng.integers(1, 4))
            stop = min(s_pos + size, content_end)
            if s_pos < prompt < stop:
                stop = prompt  # chunks never straddle the prompt/response boundary
            t_size = int(rng.integers(1, 3))
            s_start.append(s_pos)
            s_end.append(stop)
            t_start.append(t_pos)
            t_end.append(t_pos + t_size)
            in_prompt.append(stop <= prompt)
            s_pos, t_pos = stop, t_pos + t_size
        teacher_ids = rng.integers(0, TEACHER_VOCAB, size=t_pos).astype(np.int32)
        drawn = maskable & (rng.random(length) < t)
        mask = drawn.copy()
        chunk_masked = np.zeros(len(s_start), bool)
        for c, (a, b) in enumerate(zip(s_start, s_end, strict=True)):
            if drawn[a:b].any():
                mask[a:b] = True
                chunk_masked[c] = True
        row = {
            "sample_id": f"synthetic:{index}",
            "sample_key": int(rng.integers(0, 2**63 - 1)),
            "replica": index % 2,
            "t": t,
            "input_ids": ids,
            "maskable": maskable,
            "masked_positions": np.flatnonzero(mask).astype(np.int32),
            "teacher_input_ids": teacher_ids,
            "compdemo_group": (rng.random(len(s_start)) < 0.5).astype(np.uint8)
            if "compdemo" in passes
            else np.zeros(0, np.uint8),
            "chunk_student_start": np.array(s_start, np.int32),
            "chunk_student_end": np.array(s_end, np.int32),
            "chunk_teacher_start": np.array(t_start, np.int32),
            "chunk_teacher_end": np.array(t_end, np.int32),
            "chunk_masked": chunk_masked,
            "chunk_in_prompt": np.array(in_prompt, bool),
        }
        for pass_name in passes:
            logp = np.where(chunk_masked, -np.abs(rng.normal(0, 3, size=len(s_start))), np.nan)
            row[f"{pass_name}_chunk_logprob"] = logp.astype(np.float32)
        rows.append(row)
    return rows
