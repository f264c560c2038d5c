"""The synthetic-cache generator obeys the invariants the validator checks, and both of its row kinds
write caches that validate and read back."""

from __future__ import annotations

import numpy as np
import torch

from cache_schema import CacheReader, validate_cache
from tide.testing.synthetic_cache import (
    SHARED_VOCAB,
    TEMPERATURES,
    SyntheticCacheSpec,
    cross_rows,
    format_test_spec,
    logsumexp,
    random_base_rows,
    shared_rows,
    shared_targets,
    write_cache_rows,
    write_synthetic_cache,
)


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


def test_format_rows_write_a_valid_cache_named_as_a_build_names_it(tmp_path):
    for pipeline, rows in (("shared", shared_rows(7, seed=2)), ("cross", cross_rows(7, seed=2))):
        directory = tmp_path / pipeline
        manifest = write_cache_rows(directory, rows, format_test_spec(pipeline, rows_per_shard=3))
        assert validate_cache(directory) == []
        assert [s.file for s in manifest.shards] == [f"data/shard-{i:05d}-of-00003.parquet" for i in range(3)]
        assert [s.rows for s in manifest.shards] == [3, 3, 1]
        assert not any(name.startswith("_") for name in manifest.arrow_schema().names)


def test_training_rows_get_targets_from_the_teacher_logits(tmp_path):
    """A shared cache from training-shaped rows: the stored top-1 id of every target is the argmax of the
    logits handed in, and its gold log-prob is the log-softmax at the row's own token (direct formulas)."""
    rows = random_base_rows(num_samples=3, replicas=2, seq_len=16, block_size=8, vocab_size=50,
                            eos_token_id=49, prompt_len=3, seed=1)
    gen = torch.Generator().manual_seed(0)
    for row in rows:
        row.target_positions = np.flatnonzero(row.masked)
        row.teacher_logits = {"plain": torch.randn(len(row.target_positions), 60, generator=gen)}
    spec = SyntheticCacheSpec(pipeline="shared", student_fingerprint="fp", mask_token_id=59, eos_token_id=49,
                              block_size=8, max_length=16, student_vocab_size=60, replicas=2, k=4,
                              shared_vocab_size=60, teacher_vocab_size=60, rows_per_shard=4)
    directory = write_synthetic_cache(tmp_path / "cache", rows, spec)
    assert validate_cache(directory) == []
    table = CacheReader(directory).read_all(columns=["plain_topk_ids", "plain_gold_logprob"]).to_pylist()
    assert len(table) == 6
    for row, stored in zip(rows, table, strict=True):
        logits = row.teacher_logits["plain"]
        top1 = np.array([ids[0] for ids in stored["plain_topk_ids"]])
        np.testing.assert_array_equal(top1, logits.argmax(dim=1).numpy())
        gold = torch.as_tensor(row.input_ids[row.target_positions], dtype=torch.long)
        expected = torch.log_softmax(logits, dim=1)[torch.arange(len(gold)), gold].numpy()
        np.testing.assert_allclose(np.asarray(stored["plain_gold_logprob"]), expected, atol=1e-5)
