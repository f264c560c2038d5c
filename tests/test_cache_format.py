"""Schemas, table builder, atomic writer, manifest and the torch reader of the cache format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from cache_schema import (
    AsyncShardWriter,
    CacheReader,
    Manifest,
    ManifestError,
    Ragged,
    RowError,
    SchemaError,
    ShardError,
    ShardWriteError,
    UnknownFormatVersionError,
    cross_schema,
    pad_ragged,
    shared_schema,
    table_from_rows,
    table_to_torch,
    write_shard,
)
from cache_schema.codec import codec_for
from cache_schema.schemas import shared_schema_v1
from tide.testing.synthetic_cache import (
    TEMPERATURES,
    format_test_spec,
    logsumexp,
    shared_rows,
    strip,
    write_cache_rows,
)
from tide.testing.synthetic_cache import cross_rows as make_cross_rows


def _visible(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ---------------------------------------------------------------------------------------------------------
# Schemas and the builder
# ---------------------------------------------------------------------------------------------------------


_COMMON_TYPES = {
    "sample_id": pa.string(),
    "sample_key": pa.int64(),
    "replica": pa.int32(),
    "t": pa.float64(),
    "input_ids": pa.list_(pa.int32()),
    "maskable": pa.list_(pa.bool_()),
    "masked_positions": pa.list_(pa.int32()),
    "teacher_input_ids": pa.list_(pa.int32()),
    "compdemo_group": pa.list_(pa.uint8()),
    "target_positions": pa.list_(pa.int32()),
    "target_teacher_positions": pa.list_(pa.int32()),
}


def _check_schema(schema: pa.Schema, expected: dict[str, pa.DataType]) -> None:
    assert schema.names == list(expected)
    for name, type_ in expected.items():
        assert schema.field(name).type.equals(type_), name
        assert not schema.field(name).nullable


def test_shared_schema_columns_and_types():
    expected = dict(_COMMON_TYPES)
    exact = dict(_COMMON_TYPES)
    for p in ("plain", "compdemo"):  # schema order follows (plain, compdemo) whatever order is given
        expected[f"{p}_topk_counts"] = pa.list_(pa.uint32())
        expected[f"{p}_topk_codes"] = pa.list_(pa.uint32())
        expected[f"{p}_log_tails"] = pa.list_(pa.list_(pa.float16(), 2))
        expected[f"{p}_gold_logprob"] = pa.list_(pa.float16())
        exact[f"{p}_topk_counts"] = pa.list_(pa.uint32())
        exact[f"{p}_topk_ids"] = pa.list_(pa.int32())
        exact[f"{p}_topk_values"] = pa.list_(pa.float32())
        exact[f"{p}_log_tails"] = pa.list_(pa.list_(pa.float32(), 2))
        exact[f"{p}_gold_logprob"] = pa.list_(pa.float32())
    _check_schema(shared_schema(num_temperatures=2, passes=["compdemo", "plain"]), expected)
    _check_schema(shared_schema(encoding="float32", num_temperatures=2, passes=["compdemo", "plain"]), exact)
    with pytest.raises(SchemaError, match="unknown sparse-target encoding 'int8'"):
        shared_schema(encoding="int8", num_temperatures=2, passes=["plain"])


def test_v1_shared_schema_is_kept_for_reading():
    expected = dict(_COMMON_TYPES)
    for p in ("plain", "compdemo"):
        expected[f"{p}_topk_ids"] = pa.list_(pa.list_(pa.int32(), 64))
        expected[f"{p}_topk_values"] = pa.list_(pa.list_(pa.float16(), 64))
        expected[f"{p}_log_partitions"] = pa.list_(pa.list_(pa.float32(), 2))
        expected[f"{p}_gold_logprob"] = pa.list_(pa.float32())
    _check_schema(shared_schema_v1(k=64, value_dtype="float16", num_temperatures=2, passes=["compdemo", "plain"]),
                  expected)
    assert format_test_spec("shared", format_version=1).manifest().arrow_schema().equals(
        shared_schema_v1(k=8, value_dtype="float16", num_temperatures=2, passes=["plain", "compdemo"]))


def test_cross_schema_columns_and_types():
    schema = cross_schema(passes=["plain"])
    assert schema.names[9:] == [
        "chunk_student_start",
        "chunk_student_end",
        "chunk_teacher_start",
        "chunk_teacher_end",
        "chunk_masked",
        "chunk_in_prompt",
        "plain_chunk_logprob",
    ]
    assert schema.field("chunk_masked").type.equals(pa.list_(pa.bool_()))
    assert schema.field("plain_chunk_logprob").type.equals(pa.list_(pa.float32()))


def test_table_from_rows_matches_python_lists():
    spec = format_test_spec("shared", k=4)
    rows = strip(shared_rows(5, seed=1, spec=spec))
    schema = spec.manifest().arrow_schema()
    table = table_from_rows(rows, schema)
    assert table.schema.equals(schema)
    # Independent expectation: pyarrow's own conversion of nested Python lists.
    for name in ("input_ids", "maskable", "plain_topk_codes", "compdemo_log_tails", "sample_id", "t"):
        python = [r[name].tolist() if isinstance(r[name], np.ndarray) else r[name] for r in rows]
        reference = pa.array(python, type=schema.field(name).type)
        assert table.column(name).combine_chunks().equals(reference), name


def test_table_from_rows_rejects_bad_rows():
    spec = format_test_spec("shared", k=4, passes=("plain",))
    schema = spec.manifest().arrow_schema()
    rows = strip(shared_rows(2, seed=2, spec=spec))
    wrong_width = [dict(rows[0]), rows[1]]
    wrong_width[0]["plain_log_tails"] = np.zeros((3, 5), np.float16)
    with pytest.raises(RowError, match=r"row 0: column 'plain_log_tails' needs a 2-D array of shape \(n, 2\)"):
        table_from_rows(wrong_width, schema)
    missing = [{k: v for k, v in rows[0].items() if k != "t"}]
    with pytest.raises(RowError, match=r"row 0: keys do not match the schema: missing \['t'\]"):
        table_from_rows(missing, schema)
    overflow = [dict(rows[0])]
    overflow[0]["input_ids"] = np.array([1, 2**40], dtype=np.int64)
    with pytest.raises(RowError, match="do not fit int32"):
        table_from_rows(overflow, schema)
    floats = [dict(rows[0])]
    floats[0]["masked_positions"] = np.array([1.5])
    with pytest.raises(RowError, match="needs integers"):
        table_from_rows(floats, schema)


# ---------------------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------------------


def _check_ragged(ragged: Ragged, expected: list[np.ndarray]) -> None:
    assert len(ragged) == len(expected)
    for i, value in enumerate(expected):
        np.testing.assert_array_equal(ragged.row(i).numpy(), np.asarray(value))


SPECS = {
    "rank24-delta8": {"encoding": "rank24-delta8"},
    "float32": {"encoding": "float32"},
    "v1 float16": {"format_version": 1, "value_dtype": "float16"},
    "v1 float32": {"format_version": 1, "value_dtype": "float32"},
}
# Largest error of a decoded probability: the 1/8-nat value step (≤ 1/16 nat on a logit at T = 1) and the
# float16 log tail; exact storage and v1 float32 round only in fp32; v1 float16 values round to 2^-11.
PROBABILITY_TOLERANCE = {"rank24-delta8": 0.04, "float32": 1e-5, "v1 float16": 5e-3, "v1 float32": 1e-5}


@pytest.mark.parametrize("name", list(SPECS))
def test_shared_round_trip_through_torch_reader(tmp_path, name):
    spec = format_test_spec("shared", rows_per_shard=6, row_group_rows=4, **SPECS[name])
    rows = shared_rows(14, seed=11, spec=spec)
    write_cache_rows(tmp_path, rows, spec)
    reader = CacheReader(tmp_path)
    assert reader.num_rows == 14 and len(reader) == 14
    # 3 shards of 6, 6, 2 rows; row groups of at most 4 rows.
    assert [(u.shard_index, u.row_group, u.rows, u.first_row) for u in reader.units] == [
        (0, 0, 4, 0),
        (0, 1, 2, 4),
        (1, 0, 4, 6),
        (1, 1, 2, 10),
        (2, 0, 2, 12),
    ]
    codec = codec_for(reader.manifest)
    seen = 0
    for unit, batch in zip(reader.units, reader.iter_torch(), strict=True):
        part = rows[unit.first_row : unit.first_row + unit.rows]
        assert batch["sample_id"] == [r["sample_id"] for r in part]
        assert batch["t"].dtype == torch.float64
        np.testing.assert_array_equal(batch["t"].numpy(), [r["t"] for r in part])
        np.testing.assert_array_equal(batch["sample_key"].numpy(), [r["sample_key"] for r in part])
        for column in ("input_ids", "maskable", "masked_positions", "target_positions", "compdemo_group",
                       *codec.columns("plain"), *codec.columns("compdemo")):
            _check_ragged(batch[column], [r[column] for r in part])
        assert batch["maskable"].values.dtype == torch.bool
        seen += unit.rows
    assert seen == 14

    # Decoded probabilities equal an independent softmax of the full logits at the stored ids.
    table = reader.read_row_group(0, columns=codec.columns("plain"))
    for i, stored in enumerate(table.to_pylist()):
        decoded = codec.decode({c: np.asarray(stored[c]).reshape(-1) for c in codec.columns("plain")}, "plain")
        logits = rows[i]["_logits_plain"]
        for j, temperature in enumerate(TEMPERATURES):
            expected = np.exp(logits / temperature - logsumexp(logits / temperature)[:, None])
            item = np.repeat(np.arange(decoded.counts.shape[0]), decoded.counts)
            scaled = decoded.values.astype(np.float64) / temperature
            within = np.exp(scaled - np.log(np.bincount(item, weights=np.exp(scaled)))[item])
            probs = -np.expm1(decoded.log_tails[item, j].astype(np.float64)) * within
            np.testing.assert_allclose(probs, expected[item, decoded.ids], atol=PROBABILITY_TOLERANCE[name])


def test_cross_round_trip_through_torch_reader(tmp_path):
    rows = make_cross_rows(9, seed=4)
    write_cache_rows(tmp_path, rows, format_test_spec("cross", rows_per_shard=5, row_group_rows=2))
    reader = CacheReader(tmp_path)
    assert reader.pipeline == "cross" and reader.num_rows == 9
    batches = list(reader.iter_torch(units=reversed(range(reader.num_units))))
    units = list(reversed(reader.units))
    for unit, batch in zip(units, batches, strict=True):
        part = rows[unit.first_row : unit.first_row + unit.rows]
        for name in (
            "chunk_student_start",
            "chunk_teacher_end",
            "chunk_masked",
            "chunk_in_prompt",
            "teacher_input_ids",
            "masked_positions",
        ):
            _check_ragged(batch[name], [r[name] for r in part])
        for name in ("plain_chunk_logprob", "compdemo_chunk_logprob"):
            for i, row in enumerate(part):
                np.testing.assert_array_equal(batch[name].row(i).numpy(), row[name])  # NaN == NaN here
    frame = reader.to_pandas(columns=["sample_id", "chunk_masked"])
    assert list(frame["sample_id"]) == [r["sample_id"] for r in rows]
    assert [int(x.sum()) for x in frame["chunk_masked"]] == [int(r["chunk_masked"].sum()) for r in rows]


def test_pandas_reads_a_shard_and_decodes_it_as_documented(tmp_path):
    """The numpy decoding of docs/cache-format.md (words → ranks → ids, 8-bit value steps, tails) applied to a
    pandas frame gives the teacher's probabilities of the full logits at the stored ids."""
    spec = format_test_spec("shared", rows_per_shard=6)
    rows = shared_rows(6, seed=8, spec=spec)
    manifest = write_cache_rows(tmp_path, rows, spec)
    shard = tmp_path / manifest.shards[0].file
    meta = pq.ParquetFile(shard).metadata
    encodings = {meta.row_group(0).column(c).path_in_schema: meta.row_group(0).column(c).encodings
                 for c in range(meta.num_columns)}
    assert "BYTE_STREAM_SPLIT" in encodings["plain_topk_codes.list.element"]  # the documented byte planes
    assert "BYTE_STREAM_SPLIT" not in encodings["input_ids.list.element"]
    frame = pd.read_parquet(shard)
    assert list(frame.columns) == manifest.arrow_schema().names
    assert list(frame["sample_id"]) == [r["sample_id"] for r in rows]
    encoding = manifest.targets.sparse.encoding
    listed = np.array(encoding.id_table, dtype=np.int64)
    rest = np.setdiff1d(np.arange(manifest.teacher.shared_vocab_size), listed)
    id_of_rank = np.concatenate([listed, rest])
    for i, row in enumerate(rows):
        np.testing.assert_array_equal(frame["input_ids"][i], row["input_ids"])
        counts = frame["plain_topk_counts"][i].astype(np.int64)
        words = frame["plain_topk_codes"][i].astype(np.uint32)
        ids = id_of_rank[words >> 8]
        steps = (words & 0xFF).astype(np.int64)
        starts = np.cumsum(counts) - counts
        running = np.cumsum(steps)
        values = -encoding.value_step * (running - np.repeat(running[starts] - steps[starts], counts))
        tails = np.stack(frame["plain_log_tails"][i]).astype(np.float64)  # (n_targets, n_T)
        item = np.repeat(np.arange(len(counts)), counts)
        within = np.exp(values) / np.bincount(item, weights=np.exp(values))[item]
        probs = (1 - np.exp(tails[item, 0])) * within  # T = 1
        logits = row["_logits_plain"]
        reference = np.exp(logits - logsumexp(logits)[:, None])
        np.testing.assert_allclose(probs, reference[item, ids], atol=0.04)


def test_pad_ragged_matches_a_python_loop():
    values = torch.arange(10, dtype=torch.int32)
    offsets = torch.tensor([0, 3, 3, 7, 10])
    ragged = Ragged(values, offsets)
    padded = pad_ragged(ragged, pad_value=-1)
    expected = torch.full((4, 4), -1, dtype=torch.int32)
    for i in range(4):
        row = values[offsets[i] : offsets[i + 1]]
        expected[i, : len(row)] = row
    assert torch.equal(padded, expected)
    assert pad_ragged(ragged, -1, max_len=6).shape == (4, 6)
    with pytest.raises(ValueError, match="more than max_len=3"):
        pad_ragged(ragged, -1, max_len=3)
    two_d = Ragged(torch.arange(12.0).reshape(6, 2), torch.tensor([0, 1, 6]))
    dense = two_d.pad(0.5)
    assert dense.shape == (2, 5, 2)
    assert torch.equal(dense[0, 0], torch.tensor([0.0, 1.0])) and torch.equal(
        dense[0, 1], torch.tensor([0.5, 0.5])
    )
    assert torch.equal(dense[1], torch.arange(2.0, 12.0).reshape(5, 2))


def test_table_to_torch_respects_sliced_tables(tmp_path):
    spec = format_test_spec("shared", k=4)
    rows = strip(shared_rows(5, seed=9, spec=spec))
    table = table_from_rows(rows, spec.manifest().arrow_schema()).slice(2, 2)
    tensors = table_to_torch(table, columns=["input_ids", "plain_topk_codes", "plain_log_tails"])
    _check_ragged(tensors["input_ids"], [rows[2]["input_ids"], rows[3]["input_ids"]])
    _check_ragged(tensors["plain_topk_codes"], [rows[2]["plain_topk_codes"], rows[3]["plain_topk_codes"]])
    _check_ragged(tensors["plain_log_tails"], [rows[2]["plain_log_tails"], rows[3]["plain_log_tails"]])


# ---------------------------------------------------------------------------------------------------------
# Writer: atomicity and the background writer
# ---------------------------------------------------------------------------------------------------------


def test_exception_mid_shard_leaves_no_visible_partial_shard(tmp_path):
    manifest = format_test_spec("shared").manifest()
    schema = manifest.arrow_schema()
    rows = strip(shared_rows(8, seed=3))

    def batches():
        yield table_from_rows(rows[:4], schema)
        raise RuntimeError("teacher crashed")

    with pytest.raises(RuntimeError, match="teacher crashed"):
        write_shard(tmp_path, "shard-00000-of-00001.parquet", batches(), schema=schema, row_group_rows=2)
    assert _visible(tmp_path) == []  # neither the shard nor its temporary file


def test_write_shard_streams_row_groups_and_reports_its_entry(tmp_path):
    manifest = format_test_spec("shared").manifest()
    schema = manifest.arrow_schema()
    rows = strip(shared_rows(7, seed=3))
    tables = [table_from_rows(rows[i : i + 2], schema) for i in range(0, 7, 2)]
    info = write_shard(tmp_path, "s.parquet", iter(tables), schema=schema, row_group_rows=3)
    parquet = pq.ParquetFile(tmp_path / "s.parquet")
    assert [parquet.metadata.row_group(i).num_rows for i in range(parquet.metadata.num_row_groups)] == [
        3,
        3,
        1,
    ]
    assert parquet.metadata.row_group(0).column(0).compression == "ZSTD"
    assert info.rows == 7 and info.bytes == (tmp_path / "s.parquet").stat().st_size
    assert info.num_targets == sum(len(r["target_positions"]) for r in rows)
    import hashlib

    assert info.sha256 == hashlib.sha256((tmp_path / "s.parquet").read_bytes()).hexdigest()
    with pytest.raises(ShardWriteError, match="already exists"):
        write_shard(tmp_path, "s.parquet", tables[0], schema=schema)


def test_async_writer_matches_synchronous_writes(tmp_path):
    manifest = format_test_spec("cross").manifest()
    schema = manifest.arrow_schema()
    rows = strip(make_cross_rows(9, seed=2))
    parts = [rows[0:4], rows[4:8], rows[8:9]]
    with AsyncShardWriter(tmp_path / "async", schema=schema, row_group_rows=2, max_pending=1) as writer:
        for i, part in enumerate(parts):
            # Rows (built into a table on the background thread) and tables are both accepted.
            writer.submit(f"shard-{i}.parquet", part if i % 2 else table_from_rows(part, schema))
    infos = writer.infos
    expected = [
        write_shard(
            tmp_path / "sync",
            f"shard-{i}.parquet",
            table_from_rows(p, schema),
            schema=schema,
            row_group_rows=2,
        )
        for i, p in enumerate(parts)
    ]
    assert [(i.file, i.rows, i.num_targets) for i in infos] == [
        (e.file, e.rows, e.num_targets) for e in expected
    ]
    assert [i.sha256 for i in infos] == [e.sha256 for e in expected]
    assert infos[0].num_targets == sum(int(r["chunk_masked"].sum()) for r in rows[0:4])


def test_async_writer_reraises_background_errors(tmp_path):
    manifest = format_test_spec("shared").manifest()
    schema = manifest.arrow_schema()
    rows = strip(shared_rows(2, seed=3))
    writer = AsyncShardWriter(tmp_path, schema=schema)
    bad = table_from_rows(rows, schema).drop_columns(["t"])
    writer.submit("bad.parquet", bad)
    with pytest.raises(
        ShardWriteError, match=r"background write of shard bad.parquet failed: .*missing columns \['t'\]"
    ):
        writer.close()
    assert _visible(tmp_path) == []


# ---------------------------------------------------------------------------------------------------------
# Manifest and reader refusals
# ---------------------------------------------------------------------------------------------------------


def test_manifest_round_trip_and_unknown_version(tmp_path):
    manifest = format_test_spec("shared", k=16).manifest()
    manifest.save(tmp_path)
    text = json.loads((tmp_path / "manifest.json").read_text())
    assert text["format"] == "tide-cache" and text["format_version"] == 2
    assert text["targets"] == {
        "passes": ["plain", "compdemo"],
        "temperatures": [1.0, 2.0],
        "sparse": {"k_policy": {"kind": "mass", "ceiling": 16, "mass": 0.9, "temperature": 1.0, "floor": 2},
                   "encoding": {"name": "rank24-delta8", "value_step": 0.125, "id_table": [7, 3, 250, 11, 0]}},
    }
    assert Manifest.load(tmp_path) == manifest
    text["format_version"] = 7
    (tmp_path / "manifest.json").write_text(json.dumps(text))
    with pytest.raises(UnknownFormatVersionError, match=r"format_version 7 is not supported .*supported: 1, 2"):
        Manifest.load(tmp_path)
    text["format_version"] = 2
    del text["noise"]["seed"]
    (tmp_path / "manifest.json").write_text(json.dumps(text))
    with pytest.raises(ManifestError, match=r"'noise' lacks required keys \['seed'\]"):
        Manifest.load(tmp_path)


def test_v1_manifest_still_loads(tmp_path):
    manifest = format_test_spec("shared", k=16, format_version=1).manifest()
    manifest.save(tmp_path)
    text = json.loads((tmp_path / "manifest.json").read_text())
    assert text["format_version"] == 1
    assert text["targets"] == {"passes": ["plain", "compdemo"], "temperatures": [1.0, 2.0], "value_dtype": "float16",
                               "k": 16}
    loaded = Manifest.load(tmp_path)
    assert loaded == manifest and loaded.targets.width == 16


@pytest.mark.parametrize("change, message", [
    (lambda t: t["sparse"]["k_policy"].update(floor=40), "floor 40 exceeds ceiling 16"),
    (lambda t: t["sparse"]["k_policy"].update(kind="fixed"), "a fixed policy has no"),
    (lambda t: t["sparse"]["k_policy"].update(mass=1.5), r"k_policy.mass' must lie in \(0, 1\]"),
    (lambda t: t["sparse"]["encoding"].update(name="int4"), "encoding.name' must be one of"),
    (lambda t: t["sparse"]["encoding"].update(id_table=[1, 1]), "lists an id twice"),
    (lambda t: t["sparse"]["encoding"].update(id_table=[280]), "holds ids outside"),
    (lambda t: t.update(k=16), "belongs to format 1"),
    (lambda t: t.pop("sparse"), "'targets.sparse' is required for pipeline 'shared'"),
])
def test_manifest_refuses_bad_sparse_sections(tmp_path, change, message):
    format_test_spec("shared", k=16).manifest().save(tmp_path)
    text = json.loads((tmp_path / "manifest.json").read_text())
    change(text["targets"])
    (tmp_path / "manifest.json").write_text(json.dumps(text))
    with pytest.raises(ManifestError, match=message):
        Manifest.load(tmp_path)


def test_reader_refuses_checksum_and_row_count_mismatches(tmp_path):
    manifest = write_cache_rows(tmp_path, shared_rows(6, seed=1), format_test_spec("shared"))
    shard = tmp_path / manifest.shards[0].file
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(
        ShardError, match=rf"shard {manifest.shards[0].file}: sha256: expected {manifest.shards[0].sha256}, found "
    ):
        CacheReader(tmp_path, checksums="open")
    shard.write_bytes(
        bytes(data[: len(data) // 2] + bytearray([data[len(data) // 2] ^ 0xFF]) + data[len(data) // 2 + 1 :])
    )
    CacheReader(tmp_path, checksums="open")  # restored
    manifest.shards[0].rows += 1
    manifest.save(tmp_path)
    with pytest.raises(
        ShardError, match=rf"shard {manifest.shards[0].file}: row count: manifest says 7 rows, the shard has 6; rebuild"
    ):
        CacheReader(tmp_path, checksums="off")


def test_write_manifest_refuses_entries_that_disagree_with_the_files(tmp_path):
    from cache_schema import write_manifest
    from cache_schema.directory import shard_file_name

    assert shard_file_name(3, 10) == "shard-00003-of-00010.parquet"
    manifest = write_cache_rows(tmp_path, make_cross_rows(4, seed=1), format_test_spec("cross", rows_per_shard=4))
    (tmp_path / "manifest.json").unlink()
    manifest.shards[0].bytes += 1
    with pytest.raises(
        ShardError, match=rf"shard {manifest.shards[0].file}: manifest entry says .* bytes but the file has"
    ):
        write_manifest(tmp_path, manifest)
    manifest.shards[0].bytes -= 1
    manifest.shards.append(type(manifest.shards[0])("shard-9.parquet", 1, 10, "0" * 64, 0))
    with pytest.raises(ShardError, match="manifest lists shard shard-9.parquet but .* does not exist"):
        write_manifest(tmp_path, manifest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "data"]  # no manifest, no temp file
    assert [f"data/{p.name}" for p in (tmp_path / "data").iterdir()] == [manifest.shards[0].file]
