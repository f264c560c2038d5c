"""``validate_cache`` and the ``validate`` / ``inspect`` commands on intact and damaged caches."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cache_schema import Manifest, validate_cache
from cache_schema.cli import main
from tide.testing.synthetic_cache import (
    SHARED_VOCAB,
    STUDENT_VOCAB,
    cross_rows,
    format_test_spec,
    shared_rows,
    write_cache_rows,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def shared_cache(tmp_path):
    directory = tmp_path / "shared"
    manifest = write_cache_rows(directory, shared_rows(14, seed=21), format_test_spec("shared", rows_per_shard=6, row_group_rows=4))
    return directory, manifest


@pytest.fixture
def cross_cache(tmp_path):
    directory = tmp_path / "cross"
    manifest = write_cache_rows(directory, cross_rows(10, seed=22), format_test_spec("cross", rows_per_shard=5, row_group_rows=2))
    return directory, manifest


def _messages(problems) -> list[str]:
    return [str(p) for p in problems]


def test_intact_caches_pass(shared_cache, cross_cache):
    assert validate_cache(shared_cache[0]) == []
    assert validate_cache(cross_cache[0]) == []


def test_flipped_byte_is_reported_with_both_checksums(shared_cache):
    directory, manifest = shared_cache
    entry = manifest.shards[1]
    shard = directory / entry.file
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0x01
    shard.write_bytes(bytes(data))
    problems = validate_cache(directory)
    assert problems, "a flipped byte must be reported"
    assert all(p.shard == entry.file for p in problems)
    first = str(problems[0])
    assert first.startswith(f"{entry.file}: sha256: expected {entry.sha256}, found ")
    assert "rebuild this shard" in first


def test_truncated_shard_is_reported(shared_cache):
    directory, manifest = shared_cache
    entry = manifest.shards[0]
    shard = directory / entry.file
    shard.write_bytes(shard.read_bytes()[: entry.bytes // 2])
    messages = _messages(validate_cache(directory))
    assert (
        f"{entry.file}: size: expected {entry.bytes} bytes, found {entry.bytes // 2} (truncated or overwritten)"
        in (messages[0])
    )
    assert any("not a readable Parquet file" in m for m in messages)


def test_missing_shard_is_reported(cross_cache):
    directory, manifest = cross_cache
    (directory / manifest.shards[1].file).unlink()
    problems = validate_cache(directory)
    assert len(problems) == 1
    assert str(problems[0]).startswith(f"{manifest.shards[1].file}: listed in the manifest but ")
    assert "does not exist" in str(problems[0])


def test_manifest_row_count_off_by_one_is_reported(shared_cache):
    directory, manifest = shared_cache
    manifest.shards[2].rows += 1
    manifest.save(directory)
    problems = validate_cache(directory)
    assert _messages(problems) == [
        f"{manifest.shards[2].file}: row count: manifest says {manifest.shards[2].rows} rows, the shard has "
        f"{manifest.shards[2].rows - 1}; rebuild this shard with `tide-cache build` or restore "
        "it from a good copy"
    ]


def test_unknown_format_version_is_reported(cross_cache):
    directory, _ = cross_cache
    path = directory / "manifest.json"
    data = json.loads(path.read_text())
    data["format_version"] = 3
    path.write_text(json.dumps(data))
    problems = validate_cache(directory)
    assert len(problems) == 1
    assert "format_version 3 is not supported by this library (supported: 1, 2)" in str(problems[0])


def test_out_of_vocabulary_id_is_reported_with_shard_row_and_field(tmp_path):
    rows = shared_rows(8, seed=5)
    rows[6]["input_ids"] = rows[6]["input_ids"].copy()
    rows[6]["input_ids"][2] = STUDENT_VOCAB + 7
    rows[3]["plain_topk_codes"] = rows[3]["plain_topk_codes"].copy()
    rows[3]["plain_topk_codes"][1] = (SHARED_VOCAB << 8) | (rows[3]["plain_topk_codes"][1] & 0xFF)
    manifest = write_cache_rows(tmp_path, rows, format_test_spec("shared", rows_per_shard=4))
    messages = _messages(validate_cache(tmp_path))
    assert (
        f"{manifest.shards[1].file}: row 2: field input_ids: values outside [0, student.vocab_size) "
        f"(item 2 holds {STUDENT_VOCAB + 7}, student.vocab_size is {STUDENT_VOCAB})"
    ) in messages
    assert (
        f"{manifest.shards[0].file}: row 3: field plain_topk_codes: ranks outside [0, teacher.shared_vocab_size="
        f"{SHARED_VOCAB}) (found {SHARED_VOCAB})"
    ) in messages
    assert len(messages) == 2


def test_content_invariants_shared(tmp_path):
    rows = shared_rows(7, seed=6)
    # Row 0: a target position beyond the sequence. Row 1: a first value step that is not 0. Row 2: one entry
    # more than the k ceiling. Row 3: t = 0. Row 4: maskable one short. Row 5: a log tail that falls with T.
    # Row 6: below the ceiling, yet the stored mass misses the policy's 0.9.
    rows[0]["target_positions"] = rows[0]["target_positions"].copy()
    rows[0]["target_positions"][-1] = len(rows[0]["input_ids"]) + 3
    rows[1]["plain_topk_codes"] = rows[1]["plain_topk_codes"].copy()
    rows[1]["plain_topk_codes"][0] |= 3
    counts, codes = rows[2]["compdemo_topk_counts"].copy(), rows[2]["compdemo_topk_codes"]
    extra = 8 + 1 - int(counts[0])
    counts[0] += extra
    rows[2]["compdemo_topk_counts"] = counts
    rows[2]["compdemo_topk_codes"] = np.concatenate([codes[:1], np.full(extra, codes[0] | 1, np.uint32), codes[1:]])
    rows[3]["t"] = 0.0
    rows[4]["maskable"] = rows[4]["maskable"][:-1]
    rows[5]["plain_log_tails"] = rows[5]["plain_log_tails"][:, ::-1].copy()
    short = int(np.flatnonzero(rows[6]["plain_topk_counts"] < 8)[0])
    rows[6]["plain_log_tails"] = rows[6]["plain_log_tails"].copy()
    rows[6]["plain_log_tails"][short] = [np.log(0.5), np.log(0.6)]
    write_cache_rows(tmp_path, rows, format_test_spec("shared", rows_per_shard=7))
    found = {(p.row, p.field) for p in validate_cache(tmp_path)}
    assert (0, "target_positions") in found
    assert (1, "plain_topk_codes") in found
    assert (2, "compdemo_topk_counts") in found
    assert (3, "t") in found
    assert (4, "maskable") in found
    assert (5, "plain_log_tails") in found
    assert (6, "plain_log_tails") in found
    assert {row for row, _ in found} == {0, 1, 2, 3, 4, 5, 6}


def test_content_invariants_of_exact_and_v1_caches(tmp_path):
    """Unsorted values are caught in the float32 encoding and in v1 (whose mass check stays)."""
    for name, spec in (("float32", format_test_spec("shared", encoding="float32", rows_per_shard=3)),
                       ("v1", format_test_spec("shared", format_version=1, rows_per_shard=3))):
        rows = shared_rows(3, seed=9, spec=spec)
        if name == "float32":
            rows[1]["plain_topk_values"] = rows[1]["plain_topk_values"][::-1].copy()
            rows[2]["plain_topk_ids"] = rows[2]["plain_topk_ids"].copy()
            rows[2]["plain_topk_ids"][1] = rows[2]["plain_topk_ids"][0]
            expected = {(1, "plain_topk_values"), (2, "plain_topk_ids")}
        else:
            rows[1]["plain_topk_values"] = rows[1]["plain_topk_values"][:, ::-1].copy()
            rows[2]["compdemo_topk_values"] = np.zeros_like(rows[2]["compdemo_topk_values"])
            expected = {(1, "plain_topk_values"), (2, "compdemo_log_partitions")}
        write_cache_rows(tmp_path / name, rows, spec)
        found = {(p.row, p.field) for p in validate_cache(tmp_path / name)}
        assert expected <= found, name
        assert {row for row, _ in found} == {1, 2}, name


def test_content_invariants_cross(tmp_path):
    rows = cross_rows(6, seed=7)
    # Row 0: teacher chunk end past the teacher sequence. Row 1: a chunk with start == end.
    # Row 2: a log-prob on an unmasked chunk. Row 3: a masked chunk whose tokens are not in masked_positions.
    rows[0]["chunk_teacher_end"] = rows[0]["chunk_teacher_end"].copy()
    rows[0]["chunk_teacher_end"][-1] = len(rows[0]["teacher_input_ids"]) + 1
    rows[1]["chunk_student_end"] = rows[1]["chunk_student_end"].copy()
    rows[1]["chunk_student_end"][0] = rows[1]["chunk_student_start"][0]
    unmasked = int(np.flatnonzero(~rows[2]["chunk_masked"])[0])
    rows[2]["plain_chunk_logprob"] = rows[2]["plain_chunk_logprob"].copy()
    rows[2]["plain_chunk_logprob"][unmasked] = -1.0
    masked_chunk = int(np.flatnonzero(rows[3]["chunk_masked"])[0])
    drop = rows[3]["chunk_student_start"][masked_chunk]
    rows[3]["masked_positions"] = rows[3]["masked_positions"][rows[3]["masked_positions"] != drop]
    write_cache_rows(tmp_path, rows, format_test_spec("cross", rows_per_shard=6))
    found = {(p.row, p.field) for p in validate_cache(tmp_path)}
    assert found == {
        (0, "chunk_teacher_start/end"),
        (1, "chunk_student_start/end"),
        (2, "plain_chunk_logprob"),
        (3, "chunk_masked"),
    }


def test_many_bad_rows_are_capped_and_counted(tmp_path):
    rows = shared_rows(9, seed=8)
    for row in rows:
        row["t"] = 1.5
    write_cache_rows(tmp_path, rows, format_test_spec("shared", rows_per_shard=9, row_group_rows=4))
    messages = _messages(validate_cache(tmp_path, max_rows_per_check=2))
    assert len(messages) == 3
    assert messages[-1].endswith("field t: t outside (0, 1] — and 7 more rows")


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------


def test_validate_command_exit_codes(shared_cache, capsys):
    directory, manifest = shared_cache
    assert main(["validate", str(directory)]) == 0
    assert capsys.readouterr().out.startswith(f"OK: {directory} (14 rows in 3 shards)")
    (directory / manifest.shards[0].file).unlink()
    assert main(["validate", str(directory)]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(f"{manifest.shards[0].file}: listed in the manifest but")


def test_inspect_command_prints_summary_and_rows(shared_cache, capsys):
    directory, manifest = shared_cache
    assert main(["inspect", str(directory), "--rows", "2"]) == 0
    out = capsys.readouterr().out
    per_target = manifest.num_bytes / manifest.num_targets
    assert f"{per_target:.1f} per target item" in out
    for entry in manifest.shards:
        assert entry.file in out
    assert "[data/shard-00000-of-00003.parquet row 0] synthetic:0 replica 0" in out
    assert "plain    k=" in out and "compdemo k=" in out and "top ids:p [" in out
    assert "encoding rank24-delta8, id table 5 ids, value step 0.125" in out
    assert "pass plain" in out and "bytes per target item" in out


def test_module_entry_point_runs_without_torch(cross_cache):
    directory, _ = cross_cache
    code = (
        "import sys; from cache_schema.cli import main; rc = main(['validate', sys.argv[1]]); "
        "assert 'torch' not in sys.modules, 'the validate command imported torch'; "
        "assert not {m.split('.')[0] for m in sys.modules} & {'tide', 'stages'}, 'model code imported'; "
        "sys.exit(rc)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(directory)], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK:")
    assert Manifest.load(directory).num_rows == 10


def test_directory_leftovers_and_a_disagreeing_journal_are_reported(cross_cache):
    """Files besides the listed shards count too: a killed writer's temp file, a journal record whose
    shard entry is not the manifest's, an unreadable build_config.json."""
    from dataclasses import replace

    from cache_schema.directory import CacheDirectory

    directory, manifest = cross_cache
    cache = CacheDirectory(directory)
    shard = directory / manifest.shards[0].file
    (shard.parent / f".{shard.name}.dead.tmp").write_bytes(b"partial")
    cache.write_record(1, replace(manifest.shards[1], sha256="0" * 64), {})
    (directory / "build_config.json").write_text("{not json")
    messages = _messages(validate_cache(directory))
    assert any("temporary file left by a killed writer" in m for m in messages)
    assert any(m.startswith(f"{manifest.shards[1].file}: field journal: journal record") for m in messages)
    assert any("build_config.json: not readable JSON" in m for m in messages)
    cache.write_record(1, manifest.shards[1], {})  # a record that agrees is fine
    assert not any("journal" in m for m in _messages(validate_cache(directory)))


def test_inspect_counts_the_active_chunks_in_the_calm_clamp(tmp_path, capsys):
    """Active chunks get log-probs cycling through five values; at T = 5 the clamp changes ℓ = 0 and
    ℓ = −1e−7 (p rounds to 1 in fp32) and ℓ = −100 (p = e^−20 < 1e−7); at T = 1, ℓ = −1e−7 gives
    p = fp32(1 − 1e−7), the bound itself (not clamped), and ℓ = −50 falls below 1e−7 as well."""
    from cache_schema.cli import CALM_CLAMP as INSPECT_CLAMP
    from cache_schema.cli import CALM_TEMPERATURE
    from tide.losses.calm import CALM_CLAMP, DEFAULT_CHUNK_TEMPERATURE

    assert (INSPECT_CLAMP, CALM_TEMPERATURE) == (CALM_CLAMP, DEFAULT_CHUNK_TEMPERATURE)
    values = [0.0, -1e-7, -1e-5, -100.0, -50.0]
    rows, used = cross_rows(10, seed=22), []
    for row in rows:
        active = np.flatnonzero(row["chunk_masked"] & ~row["chunk_in_prompt"])
        chosen = [values[(len(used) + i) % len(values)] for i in range(len(active))]
        used += chosen
        for name in ("plain", "compdemo"):
            row[f"{name}_chunk_logprob"][active] = chosen if name == "plain" else -1.0
    directory = tmp_path / "clamp"
    write_cache_rows(directory, rows, format_test_spec("cross", rows_per_shard=5, row_group_rows=2))
    assert validate_cache(directory) == []
    assert main(["inspect", str(directory), "--calm-temperature", "5", "--calm-temperature", "1"]) == 0
    out = capsys.readouterr().out
    n, count = len(used), used.count
    assert n >= 10
    high5, low5, high1, low1 = count(0.0) + count(-1e-7), count(-100.0), count(0.0), count(-100.0) + count(-50.0)
    assert f"plain at T=5: {high5 + low5} of {n} active chunks" in out
    assert f"CALM clamp: {high5} above 1 - 1e-07, {low5} below 1e-07" in out
    assert f"plain at T=1: {high1 + low1} of {n} active chunks" in out and f"{high1} above" in out
    assert f"compdemo at T=5: 0 of {n} active chunks" in out
