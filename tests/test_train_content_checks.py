# ruff: noqa: F811  (pytest fixtures imported from another test module are arguments here)
"""Training reads only what validates (docs/reliability.md, "Reader-side content checks").

Each scenario damages one cell of one row of a shard (the manifest's sha256 and bytes updated, so every
file-level check passes, as for a shard damaged before it was listed) and reads the cache the way training
does (its columns, with content checks on): the refusal names the shard, the row group, the row and what is
wrong. ``tide-train`` itself is run on two of them (one line on stderr, exit 1, nothing saved)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_train_loop import make_cache, student_dir  # noqa: F401  (module fixtures)

from cache_schema.errors import ContentError, ShardError
from cache_schema.files import sha256_of_file
from cache_schema.reader import CacheReader
from cache_schema.shard_facts import FACTS_KEY
from cache_schema.validate import validate_cache
from stages.train.cli import main as train_main
from stages.train.data import columns_for
from stages.train.pipelines import train_pipeline

SHARD1 = "shard-00001-of-00002.parquet"
ROWS_PER_GROUP = 3  # make_cache's row groups


@pytest.fixture(scope="module")
def packed(tmp_path_factory, student_tokenizer):
    """Format v2, rank24-delta8 words (the default encoding)."""
    return make_cache(tmp_path_factory.mktemp("packed"), student_tokenizer)


@pytest.fixture(scope="module")
def float32(tmp_path_factory, student_tokenizer):
    """Format v2, float32 ids and values (the encoding that can hold a NaN value)."""
    return make_cache(tmp_path_factory.mktemp("float32"), student_tokenizer, encoding="float32")


@pytest.fixture(scope="module")
def v1(tmp_path_factory, student_tokenizer):
    """Format v1: fixed k, log-partitions."""
    return make_cache(tmp_path_factory.mktemp("v1"), student_tokenizer, format_version=1)


def _manifest(cache):
    return json.loads((cache / "manifest.json").read_text())


def _write_manifest(cache, data):
    (cache / "manifest.json").write_text(json.dumps(data))


def _relist(cache, index):
    """Give shard ``index``'s manifest entry the file's current sha256 and size."""
    data = _manifest(cache)
    shard = cache / data["shards"][index]["file"]
    data["shards"][index].update(sha256=sha256_of_file(shard), bytes=shard.stat().st_size)
    _write_manifest(cache, data)


def _edit_cell(cache, column, row, change, shard_index=1):
    """Replace one cell (shard row ``row``) of ``column`` in shard ``shard_index`` by ``change(value)``."""
    path = cache / _manifest(cache)["shards"][shard_index]["file"]
    table = pq.read_table(path)
    values = table.column(column).to_pylist()
    values[row] = change(values[row])
    field = table.schema.field(column)
    table = table.set_column(table.schema.get_field_index(column), field, pa.array(values, type=field.type))
    pq.write_table(table, path, row_group_size=ROWS_PER_GROUP, compression="zstd")
    _relist(cache, shard_index)


def _copy(source, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(source, cache)
    return cache


def _read_as_training(cache, target_pass="plain"):
    """Every row group, with the columns a vocabulary-mode run reads and the reader's content checks on."""
    with CacheReader(cache, content_checks=True, read_ahead=0) as reader:
        columns = columns_for(train_pipeline(reader.manifest), target_pass)
        for unit in range(reader.num_units):
            reader.read_row_group(unit, columns)


def _set_item(index, value):
    def change(items):
        items = list(items)
        items[index] = value
        return items
    return change


def _first_tail_inf(items):
    items = [list(t) for t in items]
    items[0][1] = float("inf")
    return items


def _nan_second_value(values):
    values = list(values)
    values[1] = float("nan")
    return values


def _lower_partitions(partitions):
    return [[z - 12.0 for z in item] for item in partitions]


def _inf_partition(partitions):
    partitions = [list(z) for z in partitions]
    partitions[0][0] = float("inf")
    return partitions


# scenario: (cache fixture, column, shard row, change, the field named, what is wrong)
SCENARIOS = {
    "nan_topk_value": ("float32", "plain_topk_values", 4, _nan_second_value, "plain_topk_values",
                       "a top-k value is NaN"),
    "inf_log_tail": ("packed", "plain_log_tails", 4, _first_tail_inf, "plain_log_tails", "log tails must be ≤ 0"),
    "inf_log_partition_v1": ("v1", "plain_log_partitions", 4, _inf_partition, "plain_log_partitions",
                             "log-partitions are not finite"),
    "partitions_lowered_v1": ("v1", "plain_log_partitions", 4, _lower_partitions, "plain_log_partitions",
                              "top-k probability mass exceeds 1"),
    "masked_position_minus_one": ("packed", "masked_positions", 4, _set_item(0, -1), "masked_positions",
                                  "values outside [0, len(input_ids))"),
    "input_id_past_student_vocab": ("packed", "input_ids", 4, _set_item(0, 151_936), "input_ids",
                                    "values outside [0, student.vocab_size)"),
}


@pytest.mark.parametrize("case", sorted(SCENARIOS))
def test_a_damaged_row_is_refused_naming_shard_row_group_row_and_what_is_wrong(case, request, tmp_path):
    fixture, column, row, change, field, wrong = SCENARIOS[case]
    cache = _copy(request.getfixturevalue(fixture), tmp_path)
    _edit_cell(cache, column, row, change)
    with pytest.raises(ContentError) as info:
        _read_as_training(cache)
    text = str(info.value)
    group, local = divmod(row, ROWS_PER_GROUP)
    assert text.startswith(f"data/{SHARD1} row group {group} row {local}: {field}: {wrong}"), text
    assert "rather than skip" in text and text.endswith(f"run tide-cache validate {cache}"), text
    assert "\n" not in text
    # validate reports the same row (numbered within the shard) and field
    problems = [p for p in validate_cache(cache) if p.row == row and p.field == field]
    assert problems and any(wrong in p.message for p in problems), problems


def test_validate_names_a_nan_top_k_value_as_nan_not_as_unsorted(float32, tmp_path):
    cache = _copy(float32, tmp_path)
    _edit_cell(cache, "plain_topk_values", 4, _nan_second_value)
    messages = [p.message for p in validate_cache(cache) if p.field == "plain_topk_values"]
    assert messages == ["a top-k value is NaN"], messages


def test_a_repeated_sample_id_and_replica_is_refused_across_shards(packed, tmp_path):
    cache = _copy(packed, tmp_path)
    first = pq.read_table(cache / _manifest(cache)["shards"][0]["file"], columns=["sample_id", "replica"])
    replica = pq.read_table(cache / _manifest(cache)["shards"][1]["file"], columns=["replica"]).column(0)[4].as_py()
    twin = first.column("sample_id")[first.column("replica").to_pylist().index(replica)].as_py()
    _edit_cell(cache, "sample_id", 4, lambda _: twin)
    with pytest.raises(ContentError) as info:
        _read_as_training(cache)
    assert str(info.value).startswith(
        f"data/{SHARD1} row group 1 row 1: sample_id: another row has the same (sample_id, replica)"), info.value
    assert repr(twin) in str(info.value)
    assert any(p.shard == f"data/{SHARD1}" and p.row == 4 and "same (sample_id, replica)" in p.message
               for p in validate_cache(cache))


def test_rows_sharing_a_sample_key_are_accepted_as_duplicates_kept(packed, tmp_path):
    """``--duplicates keep`` writes repeated conversations under one sample key and their own sample ids."""
    cache = _copy(packed, tmp_path)
    key = pq.read_table(cache / _manifest(cache)["shards"][0]["file"], columns=["sample_key"]).column(0)[0].as_py()
    _edit_cell(cache, "sample_key", 4, lambda _: key)
    _read_as_training(cache)
    assert validate_cache(cache) == []


def test_reading_a_row_group_again_does_not_count_its_rows_twice(packed):
    with CacheReader(packed, content_checks=True, read_ahead=2) as reader:
        for unit in range(reader.num_units):  # held-out validation first reads sample_key alone
            assert reader.read_row_group(unit, ["sample_key"]).num_rows
        for _ in range(2):
            for table in reader.iter_batches(["sample_id", "replica", "t", "input_ids", "maskable",
                                              "masked_positions"]):
                assert table.num_rows
        assert reader._guard.checked == reader.num_units


def test_edited_manifest_temperatures_are_refused_naming_the_shard_and_both_values(packed, tmp_path):
    cache = _copy(packed, tmp_path)
    data = _manifest(cache)
    data["targets"]["temperatures"] = [1.0, 4.0]
    _write_manifest(cache, data)
    with pytest.raises(ShardError) as info:
        CacheReader(cache)
    text = str(info.value)
    assert text.startswith("shard data/shard-00000-of-00002.parquet: temperatures: "), text
    assert "the manifest says [1.0, 4.0], the shard was written with [1.0, 2.0]" in text


def test_shards_without_recorded_facts_stay_readable(packed, v1, tmp_path):
    """v1 shards never record them; v2 shards from before this release lack them too."""
    assert FACTS_KEY.encode() not in pq.read_metadata(v1 / _manifest(v1)["shards"][0]["file"]).metadata
    _read_as_training(v1)
    cache = _copy(packed, tmp_path)
    for index, shard in enumerate(_manifest(cache)["shards"]):
        path = cache / shard["file"]
        table = pq.read_table(path)
        metadata = {k: v for k, v in table.schema.metadata.items() if k != FACTS_KEY.encode()}
        pq.write_table(table.replace_schema_metadata(metadata), path, row_group_size=ROWS_PER_GROUP,
                       compression="zstd")
        _relist(cache, index)
    assert FACTS_KEY.encode() not in pq.read_metadata(cache / _manifest(cache)["shards"][0]["file"]).metadata
    _read_as_training(cache)


def _scramble_pages(cache, column_prefix):
    """XOR the page bytes of one column chunk in shard 1's last row group, then relist the shard."""
    shard = cache / _manifest(cache)["shards"][1]["file"]
    meta = pq.ParquetFile(shard).metadata
    group = meta.row_group(meta.num_row_groups - 1)
    column = next(group.column(i) for i in range(group.num_columns)
                  if group.column(i).path_in_schema.startswith(column_prefix))
    data = bytearray(shard.read_bytes())
    for offset in range(column.data_page_offset + 40, column.data_page_offset + column.total_compressed_size - 4):
        data[offset] ^= 0x5A
    shard.write_bytes(bytes(data))
    _relist(cache, 1)


def test_a_column_that_does_not_decode_names_the_shard_and_row_group(packed, tmp_path):
    cache = _copy(packed, tmp_path)
    _scramble_pages(cache, "input_ids")
    with CacheReader(cache, read_ahead=0) as reader:  # with or without content checks
        with pytest.raises(ContentError) as info:
            for unit in range(reader.num_units):
                reader.read_row_group(unit)
    assert str(info.value).startswith(f"data/{SHARD1} row group 1: its columns do not decode ("), info.value


def _train(cache, student, output, *extra):
    return train_main(["--cache", str(cache), "--student", str(student), "--output", str(output), "--epochs", "2",
                       "--batch-size", "2", "--grad-accum", "1", "--no-progress", *extra])


@pytest.mark.parametrize("case", ["masked_position_minus_one", "inf_log_tail"])
def test_tide_train_stops_with_one_line_and_saves_nothing(case, packed, tmp_path, student_dir, capfd):
    _, column, row, change, field, wrong = SCENARIOS[case]
    cache = _copy(packed, tmp_path)
    _edit_cell(cache, column, row, change)
    capfd.readouterr()
    mode = ["--mode", "ce"] if column == "masked_positions" else ["--mode", "kl", "--temperature", "1"]
    output = tmp_path / "out"
    assert _train(cache, student_dir, output, *mode) == 1
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("tide-train: error:")]
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith(f"tide-train: error: data/{SHARD1} row group 1 row 1: {field}: {wrong}"), lines[0]
    assert not (output / "model.safetensors").exists()


def test_collate_refuses_a_negative_masked_position():
    from stages.train.collate import CollateSpec, collate_rows

    row = {"sample_id": "s", "t": 0.5, "input_ids": np.zeros(4, dtype=np.int32), "maskable": np.ones(4, dtype=bool),
           "masked_positions": np.array([-1, 2])}
    with pytest.raises(ValueError, match="s: masked position -1 is negative"):
        collate_rows([row], CollateSpec(pad_token_id=0, block_size=4))
