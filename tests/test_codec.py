"""The sparse-target codec of format v2 (cache_schema/codec.py): the rank24-delta8 round trip within its
documented bound, the padded decode training consumes, v1's tails, the id table and the byte figures."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from cache_schema.codec import (
    VALUE_STEP,
    IdRanks,
    PaddedArrays,
    SparseArrays,
    SparseCodec,
    V1Codec,
    dequantise_values,
    id_table_from_counts,
    item_bytes,
    quantise_values,
)
from cache_schema.errors import SchemaError
from cache_schema.schemas import shared_schema, table_from_rows

VOCAB = 1000


def _targets(n: int, seed: int, *, max_count: int = 12, gap: float = 0.6) -> SparseArrays:
    """Random ragged targets: descending values from 0 with exponential gaps, distinct ids per item."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, max_count + 1, n)
    values, ids = [], []
    for count in counts:
        values.append(np.concatenate([[0.0], -np.cumsum(rng.exponential(gap, count - 1))]))
        ids.append(rng.choice(VOCAB, count, replace=False))
    tails = -rng.exponential(2.0, (n, 2))
    return SparseArrays(counts.astype(np.int64), np.concatenate(ids).astype(np.int64),
                        np.concatenate(values).astype(np.float32), tails.astype(np.float32),
                        -rng.exponential(1.0, n).astype(np.float32))


def _packed(table: list[int] | None = None) -> SparseCodec:
    return SparseCodec("rank24-delta8", num_temperatures=2, id_table=table if table is not None else [5, 9, 1],
                       vocab_size=VOCAB)


def test_rank24_delta8_round_trip_within_half_a_step():
    arrays = _targets(300, seed=1)
    codec = _packed()
    decoded = codec.decode(codec.encode(arrays, "plain"), "plain")
    np.testing.assert_array_equal(decoded.counts, arrays.counts)
    np.testing.assert_array_equal(decoded.ids, arrays.ids)
    assert np.abs(decoded.values - arrays.values).max() <= VALUE_STEP / 2 + 1e-6
    assert (decoded.values[np.cumsum(arrays.counts) - arrays.counts] == 0).all()
    # float16 tails and gold log-probs: relative rounding of 2^-11
    np.testing.assert_allclose(decoded.log_tails, arrays.log_tails, rtol=2.0**-11, atol=0)
    np.testing.assert_allclose(decoded.gold_logprob, arrays.gold_logprob, rtol=2.0**-11, atol=0)


def test_rounding_is_fed_back_so_errors_do_not_accumulate():
    """Forty gaps of 0.06 nats each round to 0 one by one; fed back, the decoded values still track the true
    ones to half a step (2.4 nats down, not 0)."""
    values = -0.06 * np.arange(41, dtype=np.float32)
    counts = np.array([41])
    decoded = dequantise_values(quantise_values(values, counts), counts)
    assert np.abs(decoded - values).max() <= VALUE_STEP / 2 + 1e-6
    assert decoded[-1] == pytest.approx(-2.375)


def test_a_gap_wider_than_255_steps_clamps_and_the_next_entries_recover():
    """An entry 40 nats below its predecessor (320 steps) decodes 255 steps down; the encoder feeds the
    shortfall back, so the entries after it are again within half a step once they are within reach."""
    values = np.array([0.0, -40.0, -41.0, -80.0], dtype=np.float32)
    counts = np.array([4])
    decoded = dequantise_values(quantise_values(values, counts), counts)
    assert decoded[1] == pytest.approx(-255 * VALUE_STEP)
    assert decoded[2] == pytest.approx(-41.0, abs=VALUE_STEP / 2)
    assert decoded[3] == pytest.approx(-41.0 - 255 * VALUE_STEP)


def test_quantiser_refuses_values_that_do_not_start_at_the_row_max():
    with pytest.raises(SchemaError, match="sorted descending with the first value 0"):
        quantise_values(np.array([0.5, 0.0], dtype=np.float32), np.array([2]))


def test_id_table_orders_ids_by_count_and_ranks_are_a_bijection():
    counts = np.zeros(VOCAB, dtype=np.int64)
    counts[[7, 3, 250, 11]] = [5, 9, 5, 1]
    table = id_table_from_counts(counts)
    assert table == [3, 7, 250, 11]  # by count, ties by id
    assert id_table_from_counts(counts, limit=2) == [3, 7]
    ranks = IdRanks(table, VOCAB)
    assert ranks.id_of[:4].tolist() == [3, 7, 250, 11] and ranks.id_of[4:7].tolist() == [0, 1, 2]
    np.testing.assert_array_equal(ranks.id_of[ranks.rank_of], np.arange(VOCAB))
    with pytest.raises(SchemaError, match="lists an id twice"):
        IdRanks([3, 3], VOCAB)
    with pytest.raises(SchemaError, match="outside"):
        IdRanks([VOCAB], VOCAB)


@pytest.mark.parametrize("encoding", ["rank24-delta8", "float32"])
def test_padded_decode_matches_a_python_loop(encoding):
    arrays = _targets(40, seed=2)
    codec = SparseCodec(encoding, num_temperatures=2, id_table=[5, 9, 1], vocab_size=VOCAB)
    columns = codec.encode(arrays, "plain")
    flat = codec.decode(columns, "plain")
    padded = codec.decode_padded(columns, "plain")
    width = int(arrays.counts.max())
    assert padded.ids.shape == padded.values.shape == (40, width) and padded.ids.dtype == np.int32
    start = 0
    for i, count in enumerate(arrays.counts):
        ids = flat.ids[start:start + count]
        values = flat.values[start:start + count]
        assert padded.ids[i].tolist() == ids.tolist() + [ids[0]] * (width - count)
        assert padded.values[i].tolist() == values.tolist() + [-math.inf] * (width - count)
        start += count
    np.testing.assert_array_equal(padded.log_tails, flat.log_tails)
    kept = padded.select(np.arange(40) % 3 == 0)
    assert kept.counts.tolist() == arrays.counts[::3].tolist() and kept.ids.shape == (14, width)


def test_decode_refuses_inconsistent_columns():
    arrays = _targets(5, seed=3)
    codec = _packed()
    columns = codec.encode(arrays, "plain")
    short = {**columns, "plain_topk_codes": columns["plain_topk_codes"][:-1]}
    with pytest.raises(SchemaError, match="stored entries but the counts add up to"):
        codec.num_items(short, "plain")
    with pytest.raises(SchemaError, match="stored entries but the counts add up to"):
        codec.decode_padded(short, "plain")
    outside = {**columns, "plain_topk_codes": columns["plain_topk_codes"] | np.uint32(VOCAB << 8)}
    with pytest.raises(SchemaError, match="outside the 1000-id shared vocabulary"):
        codec.decode(outside, "plain")
    empty_item = {**columns, "plain_topk_counts": np.concatenate([[0], columns["plain_topk_counts"][1:]])}
    with pytest.raises(SchemaError, match="at least one stored entry"):
        PaddedArrays.from_flat(empty_item["plain_topk_counts"], np.zeros(int(arrays.counts[1:].sum()), np.int32),
                               np.zeros(int(arrays.counts[1:].sum()), np.float32), arrays.log_tails,
                               arrays.gold_logprob)
    assert codec.num_items(columns, "plain") == 5
    widest = int(arrays.counts.max())
    capped = SparseCodec("rank24-delta8", num_temperatures=2, id_table=[5, 9, 1], vocab_size=VOCAB,
                         max_entries=widest - 1)
    with pytest.raises(SchemaError, match=f"keeps {widest} entries but the manifest's k ceiling is {widest - 1}"):
        capped.num_items(columns, "plain")


def test_v1_tail_is_one_minus_the_top_mass_and_underflows_where_v2_does_not():
    rng = np.random.default_rng(7)
    logits = rng.normal(0, 1.5, (6, 30))
    centred = logits - logits.max(1, keepdims=True)
    order = np.argsort(-centred, axis=1)[:, :5]
    values = np.take_along_axis(centred, order, 1)
    log_z = np.stack([np.log(np.exp(centred / t).sum(1)) for t in (1.0, 2.0)], 1)
    columns = {"plain_topk_ids": order.astype(np.int32), "plain_topk_values": values.astype(np.float32),
               "plain_log_partitions": log_z.astype(np.float32), "plain_gold_logprob": np.zeros(6, np.float32)}
    decoded = V1Codec(5, (1.0, 2.0)).decode_padded(columns, "plain")
    for j, temp in enumerate((1.0, 2.0)):
        probs = np.exp(centred / temp) / np.exp(centred / temp).sum(1, keepdims=True)
        top = np.take_along_axis(probs, order, 1).sum(1)
        np.testing.assert_allclose(decoded.log_tails[:, j], np.log1p(-top), rtol=1e-4, atol=1e-5)
    # a tail of e^-60: the build's fp32 log-partition log(1 + e^-60) is exactly 0, so v1's tail 1 − Σ p is 0
    # (log −inf); v2 stores the log-sum-exp over the unstored ids instead (tests/test_targets.py)
    fp32_log_z = np.log(np.float32(1.0) + np.exp(np.float32(-60.0)))
    assert fp32_log_z == 0.0
    confident = {"plain_topk_ids": np.array([[0]], np.int32), "plain_topk_values": np.array([[0.0]], np.float32),
                 "plain_log_partitions": np.array([[fp32_log_z]], np.float32),
                 "plain_gold_logprob": np.zeros(1, np.float32)}
    assert V1Codec(1, (1.0,)).decode(confident, "plain").log_tails[0, 0] == -np.inf


@pytest.mark.parametrize("encoding", ["rank24-delta8", "float32"])
def test_item_bytes_are_the_arrow_buffers_of_the_pass_columns(encoding):
    """Bytes of one item's pass columns before compression, against the Arrow arrays' own buffer sizes (value
    buffers only: list offsets are per row)."""
    arrays = _targets(50, seed=4)
    codec = SparseCodec(encoding, num_temperatures=2, id_table=[5, 9, 1], vocab_size=VOCAB)
    schema = shared_schema(encoding=encoding, num_temperatures=2, passes=["plain"])
    columns = codec.encode(arrays, "plain")
    fields = pa.schema([schema.field(name) for name in columns])
    table = table_from_rows([columns], fields)
    value_bytes = 0
    for name in columns:
        array = table.column(name).chunk(0).flatten()
        while pa.types.is_fixed_size_list(array.type):
            array = array.flatten()
        value_bytes += array.nbytes
    mean_entries = float(arrays.counts.mean())
    assert item_bytes(encoding, mean_entries, 2) * 50 == pytest.approx(value_bytes)
    assert item_bytes("rank24-delta8", 64, 2) == 4 + 4 * 64 + 2 * 3  # hand count
    assert item_bytes("float32", 64, 2) == 4 + 8 * 64 + 4 * 3
