# ruff: noqa: F811  (pytest fixtures imported from another test module are arguments here)
"""Every corruption of issue 16 (8) ends in lines naming the file at fault — never a traceback — through
``tide-cache validate``, ``tide-cache inspect`` and ``tide-train``.

The cases: a flipped byte, a truncated, deleted or swapped shard, the manifest's row count, SHA-256, byte
count, target count, k ceiling, temperatures or format version edited, a ``../`` shard name, a manifest that is not JSON or lacks
a field, no manifest, and a column whose pages no longer decode (the manifest's checksum updated to
match, as a file damaged after it was listed)."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest
from test_train_loop import make_cache, student_dir  # noqa: F401  (module fixtures)

from cache_schema.files import sha256_of_file
from stages.cli import tide_cache_main
from stages.train.cli import main as train_main


@pytest.fixture(scope="module")
def intact(tmp_path_factory, student_tokenizer):
    return make_cache(tmp_path_factory.mktemp("intact"), student_tokenizer)


def _manifest(d):
    return json.loads((d / "manifest.json").read_text())


def _edit(fn):
    def apply(d):
        data = _manifest(d)
        fn(data)
        (d / "manifest.json").write_text(json.dumps(data))
    return apply


def _shard(d, index):
    return d / _manifest(d)["shards"][index]["file"]


def _flip(d):
    data = bytearray(_shard(d, 1).read_bytes())
    data[len(data) // 3] ^= 0x01
    _shard(d, 1).write_bytes(bytes(data))


def _truncate(d):
    _shard(d, 0).write_bytes(_shard(d, 0).read_bytes()[:2000])


def _swap(d):
    a, b, spare = _shard(d, 0), _shard(d, 1), d / "spare"
    a.rename(spare)
    b.rename(a)
    spare.rename(b)


def _undecodable_column(d):
    """Scramble one column chunk's page bytes of the last row group, then list the new checksum (a column
    every run reads, so a ``ce`` run over both replicas meets it)."""
    shard = _shard(d, 1)
    meta = pq.ParquetFile(shard).metadata
    group = meta.row_group(meta.num_row_groups - 1)
    column = next(group.column(i) for i in range(group.num_columns)
                  if group.column(i).path_in_schema.startswith("input_ids"))
    data = bytearray(shard.read_bytes())
    for offset in range(column.data_page_offset + 40, column.data_page_offset + column.total_compressed_size - 4):
        data[offset] ^= 0x5A
    shard.write_bytes(bytes(data))
    _edit(lambda m: m["shards"][1].update(sha256=sha256_of_file(shard), bytes=shard.stat().st_size))(d)


def _set_shard(field, value):
    return _edit(lambda m: m["shards"][0].__setitem__(field, value))


SHARD0, SHARD1 = "shard-00000-of-00002.parquet", "shard-00001-of-00002.parquet"
# case: (damage, the file every message names, whether tide-train refuses it)
CASES = {
    "flipped_byte": (_flip, SHARD1, True),
    "truncated": (_truncate, SHARD0, True),
    "deleted": (lambda d: _shard(d, 1).unlink(), SHARD1, True),
    "swapped": (_swap, SHARD0, True),
    "rows": (_set_shard("rows", 99), SHARD0, True),
    "sha256": (_set_shard("sha256", "0" * 64), SHARD0, True),
    "bytes": (_set_shard("bytes", 5), SHARD0, True),
    "num_targets": (_set_shard("num_targets", 1), SHARD0, False),  # a count training never reads
    # the shards record the k policy and temperatures they were built with: a different manifest is refused
    "k": (_edit(lambda m: m["targets"]["sparse"]["k_policy"].__setitem__("ceiling", 4)), SHARD0, True),
    "temperatures": (_edit(lambda m: m["targets"].__setitem__("temperatures", [1.0, 4.0])), SHARD0, True),
    "format_version": (_edit(lambda m: m.__setitem__("format_version", 99)), "manifest.json", True),
    "dotdot_name": (_set_shard("file", "../outside.parquet"), "manifest.json", True),
    "not_json": (lambda d: (d / "manifest.json").write_text("{not json"), "manifest.json", True),
    "missing_field": (_edit(lambda m: m.pop("targets")), "manifest.json", True),
    "no_manifest": (lambda d: (d / "manifest.json").unlink(), "manifest.json", True),
    "undecodable_column": (_undecodable_column, SHARD1, True),  # read mid-run: the row group's read names it
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_corruption_is_reported_in_lines_naming_the_file(case, intact, tmp_path, student_dir, capfd):
    damage, named, train_refuses = CASES[case]
    cache = tmp_path / "cache"
    shutil.copytree(intact, cache)
    damage(cache)
    capfd.readouterr()

    assert tide_cache_main(["validate", str(cache)]) == 1
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    lines = out.strip().splitlines()
    assert lines and any(named in line for line in lines), out
    assert all(any(name in line for name in (SHARD0, SHARD1, "manifest.json")) for line in lines), out

    rc = tide_cache_main(["inspect", str(cache), "--rows", "20"])
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    errors = [line for line in err.splitlines() if "error" in line]
    if rc != 0:
        assert len(errors) == 1 and named in errors[0], err
    else:  # inspect reads no checksums nor shard facts: a summary of a shard that still decodes is fine
        assert not errors and case in ("flipped_byte", "swapped", "rows", "sha256", "bytes", "num_targets", "k",
                                       "temperatures"), err

    if train_refuses:
        assert train_main(["--cache", str(cache), "--student", str(student_dir), "--output", str(tmp_path / "out"),
                           "--mode", "ce", "--epochs", "2", "--batch-size", "2", "--no-progress"]) == 1
        err = capfd.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("tide-train: error:")]
        assert "Traceback" not in err and len(lines) == 1 and named.split(".")[0] in lines[0], err
