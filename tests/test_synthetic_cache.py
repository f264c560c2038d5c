"""The synthetic-cache generator obeys the invariants the validator checks, and both of its row kinds
write caches that validate and read back."""

from __future__ import annotations

import numpy as np
import torch

from cache_schema import CacheReader, validate_cache
from cache_schema.codec import codec_for
from tide.testing.synthetic_cache import (
    FORMAT_FLOOR,
    FORMAT_MASS,
    SHARED_VOCAB,
    TEMPERATURES,
    SyntheticCacheSpec,
    cross_rows,
    format_test_spec,
    logsumexp,
    random_base_rows,
    shared_logits,
    shared_rows,
    shared_targets,
    write_cache_rows,
    write_synthetic_cache,
)


def test_shared_targets_are_a_ragged_sub_distribution_and_exact_at_full_k():
    """The numpy generator's targets: ragged k reaching the mass policy, log tails equal to the mass outside the
    stored ids (direct softmax), −inf with every id stored, gold log-prob = log-softmax at the gold id."""
    rng = np.random.default_rng(3)
    gold = rng.integers(0, SHARED_VOCAB, size=50)
    logits = shared_logits(rng, gold)
    small = shared_targets(logits, gold, 8)
    assert len(set(small.counts.tolist())) > 1 and small.counts.min() >= FORMAT_FLOOR and small.counts.max() <= 8
    for i, temperature in enumerate(TEMPERATURES):
        probs = np.exp(logits / temperature - logsumexp(logits / temperature, axis=1)[:, None])
        item = np.repeat(np.arange(50), small.counts)
        stored = np.zeros_like(probs)
        stored[item, small.ids] = probs[item, small.ids]
        np.testing.assert_allclose(np.exp(small.log_tails[:, i]), 1.0 - stored.sum(axis=1), rtol=1e-4, atol=1e-6)
    mass_t1 = -np.expm1(small.log_tails[:, 0])
    assert np.all((mass_t1 >= FORMAT_MASS - 1e-6) | (small.counts == 8))
    full = shared_targets(logits, gold, SHARED_VOCAB, ragged=False)
    assert np.isneginf(full.log_tails).all()
    expected = logits[np.arange(50), gold] - logsumexp(logits, axis=1)
    np.testing.assert_allclose(small.gold_logprob, expected, atol=1e-4)


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
    reader = CacheReader(directory)
    codec = codec_for(reader.manifest)
    table = reader.read_all(columns=codec.columns("plain")).to_pylist()
    assert len(table) == 6
    for row, stored in zip(rows, table, strict=True):
        logits = row.teacher_logits["plain"]
        decoded = codec.decode({name: np.asarray(stored[name]) for name in codec.columns("plain")}, "plain")
        np.testing.assert_array_equal(decoded.counts, np.full(len(row.target_positions), 4))
        np.testing.assert_array_equal(decoded.ids[decoded.starts], logits.argmax(dim=1).numpy())
        stored["plain_gold_logprob"] = decoded.gold_logprob
        gold = torch.as_tensor(row.input_ids[row.target_positions], dtype=torch.long)
        expected = torch.log_softmax(logits, dim=1)[torch.arange(len(gold)), gold].numpy()
        np.testing.assert_allclose(np.asarray(stored["plain_gold_logprob"]), expected, atol=2e-3)  # float16
