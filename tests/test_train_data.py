"""Data order and collation over synthetic caches: deterministic (seed, epoch) shuffling through a hash (a
full permutation of the epoch's rows by default, windows of row groups as the option), replica per epoch
and the warning when epochs replay replicas, disjoint ranks that cover every row, and exact mid-epoch
resume from the cursor."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from cache_schema.codec import SparseArrays, SparseCodec, V1Codec
from cache_schema.reader import CacheReader
from stages.train.collate import CollateSpec, collate_rows
from stages.train.data import CacheStream, StreamConfig, columns_for
from stages.train.loader import CacheBatches, batch_loader
from stages.train.order import DataCursor, first_replayed_epoch, mix, permutation, replica_for_epoch
from stages.train.pipelines import CrossPipeline, SharedPipeline
from tide.testing.synthetic_cache import SyntheticCacheSpec, random_base_rows, write_synthetic_cache

EOS, MASK, BLOCK, SEQ = 3, 95, 4, 8


def _cross_cache(path, *, num_samples, replicas, seed, rows_per_shard):
    """A chunk cache whose every token is its own chunk; row groups of 4 rows, sample-major."""
    rows = random_base_rows(num_samples=num_samples, replicas=replicas, seq_len=SEQ, block_size=BLOCK, vocab_size=90,
                            eos_token_id=EOS, prompt_len=2, seed=seed)
    spec = SyntheticCacheSpec(pipeline="cross", student_fingerprint="sha256:x", mask_token_id=MASK, eos_token_id=EOS,
                              block_size=BLOCK, max_length=SEQ, student_vocab_size=96, replicas=replicas,
                              teacher_vocab_size=96, row_group_rows=4, rows_per_shard=rows_per_shard)
    for row in rows:
        row.chunk_start, row.chunk_end = np.arange(SEQ), np.arange(SEQ) + 1
        row.chunk_in_prompt = np.arange(SEQ) < 2
        row.chunk_logprob = {"plain": -np.ones(SEQ)}
    return write_synthetic_cache(path, rows, spec)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return _cross_cache(tmp_path_factory.mktemp("data"), num_samples=11, replicas=3, seed=1, rows_per_shard=10)


def stream(cache, **kwargs):
    reader = CacheReader(cache)
    spec = CollateSpec(pad_token_id=EOS, block_size=BLOCK)
    return CacheStream(reader, spec, columns_for(None, "plain"), StreamConfig(**kwargs))


def test_mix_is_a_hash_not_a_sum():
    assert mix(0, 1) != mix(1, 0)
    assert permutation(50, mix(0, 1)).tolist() != permutation(50, mix(1, 0)).tolist()
    assert sorted(permutation(50, 7).tolist()) == list(range(50))
    assert permutation(50, 7).tolist() == permutation(50, 7).tolist()


def test_replica_per_epoch_and_configured_cycle():
    assert [replica_for_epoch(e, 3) for e in range(5)] == [0, 1, 2, 0, 1]
    assert [replica_for_epoch(e, 3, (2, 0)) for e in range(4)] == [2, 0, 2, 0]
    with pytest.raises(ValueError, match="outside the cache's replicas"):
        replica_for_epoch(0, 3, (3,))


def test_epoch_order_deterministic_per_seed_and_epoch(cache):
    s = stream(cache, seed=4, batch_size=2, shuffle_window=2)
    again = stream(cache, seed=4, batch_size=2, shuffle_window=2)
    np.testing.assert_array_equal(s.order(0), again.order(0))
    assert not np.array_equal(s.order(0), s.order(3))  # same replica (3 mod 3 = 0), other shuffle
    other_seed = stream(cache, seed=5, batch_size=2, shuffle_window=2)
    assert not np.array_equal(s.order(0), other_seed.order(0))
    # each epoch visits exactly the rows of its replica, each once
    for epoch in range(3):
        pairs = s.order(epoch)
        replicas = [int(s._replicas[u][r]) for u, r in pairs]
        assert set(replicas) == {epoch} and len(pairs) == 11
        assert len({tuple(p) for p in pairs.tolist()}) == 11


def test_rows_of_the_epoch_match_the_stored_replica(cache):
    s = stream(cache, seed=0, batch_size=4)
    reader = CacheReader(cache)
    table = reader.read_all(["sample_id", "replica", "t"]).to_pandas()
    seen = []
    for unit, row in s.order(1):
        got = s.rows(np.array([[unit, row]]))[0]
        seen.append(got["sample_id"])
        assert got["replica"] == 1
        expected_t = table[(table.sample_id == got["sample_id"]) & (table.replica == 1)].t.item()
        assert got["t"] == expected_t  # the stored noise is used as is
    assert sorted(seen) == sorted(f"synthetic:{i}" for i in range(11))


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_are_disjoint_and_cover_the_epoch(cache, world_size):
    per_rank = []
    for rank in range(world_size):
        s = stream(cache, seed=9, batch_size=2, rank=rank, world_size=world_size)
        rows, steps = [], 0
        for batch, _ in s.batches(s.start_cursor(0), epochs=1):
            steps += 1
            rows.extend(batch.input_ids.tolist())
        per_rank.append((steps, rows))
    assert len({steps for steps, _ in per_rank}) == 1  # equal step counts on every rank
    order = stream(cache, seed=9, batch_size=2).order(0)
    # full global batches, then the last partial one trimmed to a multiple of world_size (< W rows dropped)
    full, rest = divmod(11, 2 * world_size)
    covered = full * 2 * world_size + rest - rest % world_size
    assert 11 - covered < world_size
    flat = [tuple(r) for _, rows in per_rank for r in rows]
    assert len(flat) == covered
    reader_rows = stream(cache, seed=9, batch_size=2).rows(order[:covered])
    assert sorted(flat) == sorted(tuple(int(x) for x in r["input_ids"]) for r in reader_rows)


@pytest.mark.parametrize("window", [0, 3])  # the full permutation (default) and windows of 3 row groups
def test_mid_epoch_cursor_resume_gives_the_same_sequence(cache, window):
    s = stream(cache, seed=2, batch_size=3, shuffle_window=window)
    full = [(b.input_ids.tolist(), c) for b, c in s.batches(s.start_cursor(0), epochs=2)]
    cut = 2  # stop after two batches of epoch 0, resume from the saved JSON cursor
    saved = DataCursor.from_json(full[cut - 1][1].to_json())
    assert saved.epoch == 0 and saved.position == 6
    fresh = stream(cache, seed=2, batch_size=3, shuffle_window=window)
    rest = [(b.input_ids.tolist(), c) for b, c in fresh.batches(saved, epochs=2)]
    assert rest == full[cut:]
    with pytest.raises(ValueError, match="seed 2 but this run uses seed 7"):
        list(stream(cache, seed=7, batch_size=3).batches(saved, epochs=1))


@pytest.mark.parametrize("workers", [1, 3])
def test_dataloader_workers_hand_out_the_stream_in_its_order(cache, workers):
    """Workers each collate every W-th micro-batch; the DataLoader restores the sequence, cursors included,
    and a worker's error reaches the training process as it was raised."""
    s = stream(cache, seed=2, batch_size=3)
    expected = [(b.input_ids.tolist(), c) for b, c in s.batches(s.start_cursor(0), epochs=2)]
    got = [(b.input_ids.tolist(), c) for b, c in batch_loader(stream(cache, seed=2, batch_size=3),
                                                              s.start_cursor(0), epochs=2, workers=workers)]
    assert got == expected and len(got) > workers
    dataset = CacheBatches(stream(cache, seed=2, batch_size=3), s.start_cursor(0), epochs=2)
    dataset.load_state_dict({"cursor": expected[1][1].to_json()})
    assert [(b.input_ids.tolist(), c) for b, c in dataset] == expected[2:]
    assert DataCursor.from_json(dataset.state_dict()["cursor"]) == expected[1][1]
    broken = stream(cache, seed=2, batch_size=3)
    broken.spec = CollateSpec(pad_token_id=EOS, block_size=3)  # rows of 8 tokens are not blocks of 3
    with pytest.raises(ValueError, match=r"^\S+: input_ids length 8 is not a multiple of the block size 3$"):
        list(batch_loader(broken, s.start_cursor(0), epochs=1, workers=workers))


def _runs(order):
    """Maximal stretches of consecutive rows from one row group."""
    groups = order[:, 0]
    return 1 + int((groups[1:] != groups[:-1]).sum())


def test_default_order_is_a_full_permutation_of_the_epoch(tmp_path):
    """Windows of one row group visit each of the 10 row groups in one stretch; the full permutation keeps
    coming back to row groups it visited before."""
    path = _cross_cache(tmp_path, num_samples=40, replicas=1, seed=3, rows_per_shard=20)
    for seed in range(3):
        full, windowed = stream(path, seed=seed).order(0), stream(path, seed=seed, shuffle_window=1).order(0)
        assert sorted(map(tuple, full.tolist())) == sorted(map(tuple, windowed.tolist()))  # the same 40 rows
        assert len(full) == 40 and _runs(windowed) == 10
        assert _runs(full) > 25, seed  # a random order of 40 rows in groups of 4 has ~31 stretches
    orders = {tuple(map(tuple, stream(path, seed=1).order(e).tolist())) for e in (0, 1)}
    assert len(orders) == 2  # a new permutation every epoch


def test_replayed_replicas_are_warned_once(cache, caplog):
    assert first_replayed_epoch(3) == 3 and first_replayed_epoch(3, (2, 0)) == 2
    assert first_replayed_epoch(3, (1, 1, 0)) == 1
    s = stream(cache, seed=0, batch_size=4)
    with caplog.at_level(logging.WARNING, logger="stages.train.data"):
        list(s.batches(s.start_cursor(0), epochs=3))  # three epochs, three replicas: fresh noise throughout
        assert not caplog.records
        list(s.batches(s.start_cursor(0), epochs=5))
    [record] = caplog.records
    assert "epoch 3 trains on replica 0 again" in record.getMessage() and "--replicas" in record.getMessage()


def test_collate_pads_truncates_and_builds_chunk_tables():
    rows = [
        {"sample_id": "a", "t": 0.5, "input_ids": np.arange(8), "maskable": np.ones(8, bool),
         "masked_positions": np.array([1, 2, 6, 7]), "chunk_student_start": np.array([0, 1, 6]),
         "chunk_student_end": np.array([1, 3, 8]), "chunk_masked": np.array([False, True, True]),
         "chunk_in_prompt": np.array([True, False, False]), "plain_chunk_logprob": np.array([np.nan, -1.0, -2.0])},
        {"sample_id": "b", "t": 0.25, "input_ids": np.arange(4), "maskable": np.array([0, 1, 1, 1], bool),
         "masked_positions": np.array([3]), "chunk_student_start": np.array([3]),
         "chunk_student_end": np.array([4]), "chunk_masked": np.array([True]),
         "chunk_in_prompt": np.array([False]), "plain_chunk_logprob": np.array([-0.5])},
    ]
    batch = collate_rows(rows, CollateSpec(pad_token_id=EOS, block_size=4, pipeline=CrossPipeline()))
    assert batch.input_ids.tolist() == [list(range(8)), [0, 1, 2, 3, EOS, EOS, EOS, EOS]]
    assert batch.masked.nonzero().tolist() == [[0, 1], [0, 2], [0, 6], [0, 7], [1, 3]]
    assert batch.masked_index.tolist() == [1, 2, 6, 7, 11] and batch.num_maskable == 11
    assert batch.targets.token_index.tolist() == [0, 1, 2, 3, 4]  # chunks [1, 3), [6, 8) and row b's [3, 4)
    assert batch.targets.chunk_of_token.tolist() == [0, 0, 1, 1, 2]
    assert batch.maskable[1].tolist() == [False, True, True, True, False, False, False, False]
    assert batch.chunks.row.tolist() == [0, 0, 0, 1] and batch.chunks.active.tolist() == [False, True, True, True]
    short = collate_rows(rows, CollateSpec(pad_token_id=EOS, block_size=4, pipeline=CrossPipeline(), max_length=4))
    assert short.input_ids.shape == (2, 4) and short.chunks.start.tolist() == [0, 1, 3]
    bad = [dict(rows[1], plain_chunk_logprob=np.array([np.nan]))]
    with pytest.raises(ValueError, match="b: plain_chunk_logprob is not finite"):
        collate_rows(bad, CollateSpec(pad_token_id=EOS, block_size=4, pipeline=CrossPipeline()))


def test_a_row_without_target_items_collates_with_the_others():
    """A small t can mask no aligned position: that row has zero vocabulary items and must still collate; the
    other row's ragged targets decode to padded tensors (v2 and v1 columns alike)."""
    length = 8
    base = {"input_ids": np.arange(length, dtype=np.int32), "maskable": np.ones(length, dtype=bool),
            "masked_positions": np.array([1, 5], dtype=np.int32), "t": 0.5,
            "target_positions": np.array([1, 5], dtype=np.int32)}
    codec = SparseCodec("rank24-delta8", num_temperatures=2, id_table=[7, 4], vocab_size=10)
    encoded = codec.encode(SparseArrays(counts=np.array([3, 1]), ids=np.array([4, 2, 1, 7]),
                                        values=np.array([0.0, -1.0, -2.0, 0.0], np.float32),
                                        log_tails=np.array([[-2.0, -1.0], [-3.0, -2.5]], np.float32),
                                        gold_logprob=np.array([-0.5, -0.1], np.float32)), "plain")
    v1 = {"plain_topk_ids": np.array([[4, 2, 1], [7, 0, 3]], dtype=np.int32),
          "plain_topk_values": np.array([[0.0, -1.0, -2.0], [0.0, -0.5, -3.0]], dtype=np.float16),
          "plain_log_partitions": np.array([[0.4, 0.9], [0.3, 0.8]], dtype=np.float32),
          "plain_gold_logprob": np.array([-0.5, -0.1], dtype=np.float32)}
    for pipeline, columns, width in ((SharedPipeline(codec=codec, temperatures=(1.0, 2.0)), encoded, 3),
                                     (SharedPipeline(codec=V1Codec(3, (1.0, 2.0)), temperatures=(1.0, 2.0)), v1, 3)):
        full = {**base, **columns}
        # What a Parquet row with empty list (of fixed_size_list) columns turns into: 1-D empty arrays.
        empty = {**full, "masked_positions": np.zeros(0, dtype=np.int32), "t": 0.01,
                 "target_positions": np.zeros(0, dtype=np.int32),
                 **{name: np.zeros(0, dtype=np.asarray(value).dtype) for name, value in columns.items()}}
        spec = CollateSpec(pad_token_id=EOS, block_size=4, pipeline=pipeline)
        batch = collate_rows([empty, full], spec)
        assert batch.vocab.row.tolist() == [1, 1]
        assert batch.vocab.position.tolist() == [1, 5]
        teacher = batch.vocab.teacher
        assert tuple(teacher.topk_ids.shape) == (2, width) and tuple(teacher.log_tails.shape) == (2, 2)
        if pipeline.codec is codec:
            assert teacher.counts.tolist() == [3, 1]
            assert teacher.topk_ids.tolist() == [[4, 2, 1], [7, 7, 7]]
            assert teacher.topk_values[0].tolist() == [0.0, -1.0, -2.0]
            np.testing.assert_allclose(teacher.log_tails.numpy(), [[-2.0, -1.0], [-3.0, -2.5]], atol=2e-3)
        only_empty = collate_rows([empty], spec)
        assert only_empty.vocab.teacher.num_positions == 0
        short = collate_rows([full], CollateSpec(pad_token_id=EOS, block_size=4, pipeline=pipeline, max_length=4))
        assert short.vocab.position.tolist() == [1] and short.vocab.teacher.num_positions == 1


def test_collation_refuses_a_bad_row_by_name():
    """Collation checks a batch's rows together; each refusal still names the row at fault (here the second,
    or the first when two rows trade stored entries, which the batch's totals alone would not show)."""
    codec = SparseCodec("rank24-delta8", num_temperatures=2, id_table=[7, 4], vocab_size=10)
    spec = CollateSpec(pad_token_id=EOS, block_size=4, pipeline=SharedPipeline(codec=codec, temperatures=(1.0, 2.0)))

    def row(name: str) -> dict:
        encoded = codec.encode(SparseArrays(counts=np.array([2, 1]), ids=np.array([4, 2, 7]),
                                            values=np.array([0.0, -1.0, 0.0], np.float32),
                                            log_tails=np.full((2, 2), -2.0, np.float32),
                                            gold_logprob=np.array([-0.5, -0.1], np.float32)), "plain")
        return {"sample_id": name, "input_ids": np.arange(8, dtype=np.int32), "maskable": np.ones(8, dtype=bool),
                "masked_positions": np.array([1, 5], dtype=np.int32), "t": 0.5,
                "target_positions": np.array([1, 5], dtype=np.int32), **encoded}

    a, b = row("a"), row("b")
    assert collate_rows([a, b], spec).vocab.row.tolist() == [0, 0, 1, 1]
    cases = [
        (dict(b, maskable=np.array([1, 0, 1, 1, 1, 1, 1, 1], bool)), "b: masked_positions include positions that "
         "are not maskable"),
        (dict(b, t=1.5), r"b: timestep t=1.5 is outside \(0, 1\]"),
        (dict(b, maskable=np.ones(4, bool)), "b: maskable has 4 entries for 8 input_ids"),
        (dict(b, masked_positions=np.array([-1, 5], np.int32)), "b: masked position -1 is negative"),
        (dict(b, target_positions=np.array([1, 5, 6], np.int32)), "b: 2 plain target items for 3 target positions"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=f"^{message}$"):
            collate_rows([a, bad], spec)
    codes = "plain_topk_codes"
    traded = [dict(a, **{codes: np.concatenate([a[codes], b[codes][-1:]])}), dict(b, **{codes: b[codes][:-1]})]
    with pytest.raises(ValueError, match="^a: pass 'plain': 4 stored entries but the counts add up to 3$"):
        collate_rows(traded, spec)
    capped = SparseCodec("rank24-delta8", num_temperatures=2, id_table=[7, 4], vocab_size=10, max_entries=1)
    with pytest.raises(ValueError, match="^a: pass 'plain': an item keeps 2 entries but the manifest's k ceiling is 1$"):
        collate_rows([a, b], CollateSpec(pad_token_id=EOS, block_size=4,
                                         pipeline=SharedPipeline(codec=capped, temperatures=(1.0, 2.0))))
