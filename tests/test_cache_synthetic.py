"""Synthetic cache rows for the cache-format tests (imported by the other ``test_cache_*`` files).

Rows follow the format's invariants by construction: peaked teacher distributions over a small vocabulary,
top-k taken from the full logits, log-partitions from all shared-vocabulary logits, chunk-consistent masks.
The full logits are kept next to each row (``_logits`` keys, stripped before writing) so tests can compare
decoded probabilities with an independent softmax.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from cache_schema import (
    Manifest,
    NoiseInfo,
    StudentInfo,
    TargetsInfo,
    TeacherInfo,
    cross_schema,
    shared_schema,
    table_from_rows,
    write_manifest,
    write_shard,
)

STUDENT_VOCAB = 300
TEACHER_VOCAB = 320
SHARED_VOCAB = 280
BLOCK = 8
TEMPERATURES = [1.0, 2.0]
TEACHER_PREFIX = 3  # teacher sequences carry 3 extra template tokens in front


def logsumexp(x: np.ndarray, axis: int = -1) -> np.ndarray:
    top = x.max(axis=axis, keepdims=True)
    return (top + np.log(np.exp(x - top).sum(axis=axis, keepdims=True))).squeeze(axis)


def _sequence(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    length = BLOCK * int(rng.integers(2, 5))
    prompt = int(rng.integers(2, length // 2))
    ids = rng.integers(0, SHARED_VOCAB, size=length).astype(np.int32)
    maskable = np.arange(length) >= prompt
    return ids, maskable, prompt


def shared_targets(
    rng: np.random.Generator, gold: np.ndarray, k: int, value_dtype: str
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Top-k targets of peaked logits (n, SHARED_VOCAB) whose peak sits on the gold id most of the time."""
    n = gold.shape[0]
    logits = rng.normal(0.0, 2.0, size=(n, SHARED_VOCAB))
    peak = np.where(rng.random(n) < 0.7, gold, rng.integers(0, SHARED_VOCAB, size=n))
    logits[np.arange(n), peak] += 8.0
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    shifted = logits - logits.max(axis=1, keepdims=True)
    values = np.take_along_axis(shifted, order, axis=1)
    log_z = np.stack([logsumexp(shifted / t, axis=1) for t in TEMPERATURES], axis=1)
    gold_lp = shifted[np.arange(n), gold] - log_z[:, 0]
    out = {
        "topk_ids": order.astype(np.int32),
        "topk_values": values.astype(value_dtype),
        "log_partitions": log_z.astype(np.float32),
        "gold_logprob": gold_lp.astype(np.float32),
    }
    return out, logits


def shared_rows(
    n: int,
    *,
    seed: int = 0,
    k: int = 8,
    value_dtype: str = "float16",
    passes: tuple[str, ...] = ("plain", "compdemo"),
) -> list[dict]:
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
            parts, logits = shared_targets(rng, ids[targets].astype(np.int64), k, value_dtype)
            for key, value in parts.items():
                row[f"{pass_name}_{key}"] = value
            row[f"_logits_{pass_name}"] = logits
        rows.append(row)
    return rows


def cross_rows(n: int, *, seed: int = 0, passes: tuple[str, ...] = ("plain", "compdemo")) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(n):
        ids, maskable, prompt = _sequence(rng)
        length = ids.size
        content_end = length - int(rng.integers(0, BLOCK))  # the rest is EOS padding
        t = float(rng.uniform(0.05, 1.0))
        # Chunks of 1-3 student tokens over [0, content_end); each maps to 1-2 teacher tokens.
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
        s_start_a, s_end_a = np.array(s_start, np.int32), np.array(s_end, np.int32)
        in_prompt_a = np.array(in_prompt, bool)
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
            "chunk_student_start": s_start_a,
            "chunk_student_end": s_end_a,
            "chunk_teacher_start": np.array(t_start, np.int32),
            "chunk_teacher_end": np.array(t_end, np.int32),
            "chunk_masked": chunk_masked,
            "chunk_in_prompt": in_prompt_a,
        }
        for pass_name in passes:
            logp = np.where(chunk_masked, -np.abs(rng.normal(0, 3, size=len(s_start))), np.nan)
            row[f"{pass_name}_chunk_logprob"] = logp.astype(np.float32)
        rows.append(row)
    return rows


def strip(rows: list[dict]) -> list[dict]:
    """Rows without the test-only ``_logits_*`` keys."""
    return [{k: v for k, v in row.items() if not k.startswith("_")} for row in rows]


def make_manifest(
    pipeline: str,
    *,
    k: int = 8,
    value_dtype: str = "float16",
    passes: tuple[str, ...] = ("plain", "compdemo"),
) -> Manifest:
    return Manifest(
        pipeline=pipeline,
        teacher=TeacherInfo(
            name="synthetic-teacher",
            revision="0" * 40,
            weights_fingerprint="f" * 16,
            model_type="qwen3" if pipeline == "shared" else "llada2_moe",
            regime="paper",
            mask_token_id=TEACHER_VOCAB - 1,
            vocab_size=TEACHER_VOCAB,
            shared_vocab_size=SHARED_VOCAB if pipeline == "shared" else None,
        ),
        student=StudentInfo(
            tokenizer_fingerprint="s" * 16,
            mask_token_id=STUDENT_VOCAB - 1,
            eos_token_id=SHARED_VOCAB - 1,
            block_size=BLOCK,
            max_length=64,
            vocab_size=STUDENT_VOCAB,
        ),
        teacher_tokenizer_fingerprint="t" * 16,
        targets=TargetsInfo(
            passes=list(passes),
            value_dtype=value_dtype,
            temperatures=list(TEMPERATURES),
            k=k if pipeline == "shared" else None,
        ),
        noise=NoiseInfo(
            seed=1234,
            replicas=2,
            eps=1e-3,
            schedule="linear",
            demo_ratio=0.5,
            chunk_consistent=pipeline == "cross",
        ),
        build={"purpose": "tests"},
    )


def schema_for_manifest(manifest: Manifest) -> pa.Schema:
    if manifest.pipeline == "shared":
        return shared_schema(
            k=manifest.targets.k,
            value_dtype=manifest.targets.value_dtype,
            num_temperatures=len(manifest.targets.temperatures),
            passes=manifest.targets.passes,
        )
    return cross_schema(passes=manifest.targets.passes)


def write_cache(
    directory: Path,
    pipeline: str,
    rows: list[dict],
    *,
    rows_per_shard: int = 6,
    row_group_rows: int = 4,
    **manifest_options,
) -> Manifest:
    """Write ``rows`` as a finished cache (shards + manifest) and return its manifest."""
    manifest = make_manifest(pipeline, **manifest_options)
    schema = schema_for_manifest(manifest)
    clean = strip(rows)
    total = -(-len(clean) // rows_per_shard)
    for index in range(total):
        part = clean[index * rows_per_shard : (index + 1) * rows_per_shard]
        table = table_from_rows(part, schema)
        name = f"shard-{index:05d}-of-{total:05d}.parquet"
        manifest.shards.append(
            write_shard(directory, name, table, schema=schema, row_group_rows=row_group_rows)
        )
    write_manifest(directory, manifest)
    return manifest


# ---------------------------------------------------------------------------------------------------------
# The generator itself obeys the invariants the validator checks.
# ---------------------------------------------------------------------------------------------------------


def test_shared_targets_are_a_sub_distribution_and_exact_at_full_k():
    rng = np.random.default_rng(3)
    gold = rng.integers(0, SHARED_VOCAB, size=50)
    small, logits = shared_targets(rng, gold, 8, "float32")
    probs = np.exp(small["topk_values"].astype(np.float64) - small["log_partitions"][:, :1])
    assert (probs.sum(axis=1) < 1.0).all()
    assert np.all(small["topk_values"][:, 0] == 0.0)
    # With k = the whole slice the top-k mass is 1 at every temperature (fp32 rounding only).
    full, _ = shared_targets(rng, gold, SHARED_VOCAB, "float32")
    for i, temperature in enumerate(TEMPERATURES):
        mass = np.exp(
            full["topk_values"].astype(np.float64) / temperature - full["log_partitions"][:, i : i + 1]
        )
        np.testing.assert_allclose(mass.sum(axis=1), 1.0, atol=1e-5)
    # Gold log-prob equals log-softmax of the raw logits.
    expected = logits[np.arange(50), gold] - logsumexp(logits, axis=1)
    np.testing.assert_allclose(small["gold_logprob"], expected, atol=1e-4)


def test_cross_rows_are_chunk_consistent():
    for row in cross_rows(10, seed=5):
        masked = set(row["masked_positions"].tolist())
        for a, b, flag in zip(
            row["chunk_student_start"], row["chunk_student_end"], row["chunk_masked"], strict=True
        ):
            covered = [p in masked for p in range(a, b)]
            assert all(covered) if flag else not any(covered)
