"""The cache directory as other tools see it: shards under data/, a dataset card that lists them, pandas /
pyarrow / datasets / duckdb / polars opening it without options, file permissions under umask 022, push to
file:// and to a Hub repository (a stand-in API), and the conversion of the earlier layout."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pds
import pytest

from cache_schema.card import card_data_files, is_generated
from cache_schema.directory import CacheDirectory, LegacyLayoutError
from cache_schema.manifest import Manifest
from cache_schema.reader import CacheReader
from cache_schema.store import open_store
from cache_schema.transfer import TransferError, copy_cache
from cache_schema.validate import validate_cache
from tide.testing.synthetic_cache import cross_rows, format_test_spec, shared_rows, strip, write_cache_rows


@pytest.fixture
def cache(tmp_path):
    directory = tmp_path / "cache"
    rows = shared_rows(7, seed=3)
    manifest = write_cache_rows(directory, rows, format_test_spec("shared", rows_per_shard=3))
    (directory / "build_config.json").write_text(json.dumps({"seed": 0}) + "\n")  # what a build leaves too
    CacheDirectory(directory).write_record(0, manifest.shards[0], {"rows": 3})
    return directory, manifest, strip(rows)


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_puts_only_shards_under_data_and_the_card_lists_them(cache):
    directory, manifest, _ = cache
    assert sorted(p.name for p in directory.iterdir()) == ["README.md", "build_config.json", "data", "manifest.json",
                                                          "progress"]
    assert [f"data/{p.name}" for p in sorted((directory / "data").iterdir())] == [s.file for s in manifest.shards]
    card = (directory / "README.md").read_text()
    assert is_generated(card)
    assert card_data_files(card) == [s.file for s in manifest.shards]
    for shard in manifest.shards:
        assert f"`{shard.file}` | {shard.rows} | {shard.bytes} |" in card and shard.sha256 in card
    for column in manifest.arrow_schema().names:
        assert f"`{column}`" in card
    assert f"| sparse.k_policy.ceiling | {manifest.targets.sparse.k_policy.ceiling} |" in card and f"| seed | {manifest.noise.seed} |" in card
    assert manifest.teacher.name in card


def test_ecosystem_readers_open_the_directory_without_options(cache):
    directory, manifest, rows = cache
    ids = [r["sample_id"] for r in rows]
    frame = pd.read_parquet(directory / "data")
    assert frame["sample_id"].tolist() == ids
    table = pds.dataset(directory / "data").to_table()
    assert table.num_rows == len(rows) and sorted(table.column("sample_id").to_pylist()) == sorted(ids)
    np.testing.assert_array_equal(np.concatenate(frame["input_ids"].tolist()),
                                  np.concatenate([r["input_ids"] for r in rows]))

    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset(str(directory), split="train")
    assert loaded.num_rows == len(rows) and loaded["sample_id"] == ids
    assert [list(v) for v in loaded["masked_positions"]] == [list(r["masked_positions"]) for r in rows]

    duckdb = pytest.importorskip("duckdb")
    count, keys = duckdb.connect().execute(f"SELECT count(*), sum(sample_key) FROM '{directory}/data/*.parquet'").fetchone()
    assert count == len(rows) and int(keys) == sum(int(r["sample_key"]) for r in rows)


def test_polars_reads_the_data_folder(cache):
    polars = pytest.importorskip("polars")
    directory, _, rows = cache
    frame = polars.read_parquet(f"{directory}/data/*.parquet")
    assert frame["sample_id"].to_list() == [r["sample_id"] for r in rows]


def test_files_are_group_and_world_readable_under_umask_022(tmp_path):
    old = os.umask(0o022)
    try:
        directory = tmp_path / "cache"
        manifest = write_cache_rows(directory, cross_rows(4, seed=1), format_test_spec("cross", rows_per_shard=2))
        CacheDirectory(directory).write_record(0, manifest.shards[0], {})
        CacheDirectory(directory).write_build_config({"seed": 0})
        copy_cache(open_store(directory), open_store(tmp_path / "pulled"))
    finally:
        os.umask(old)
    for root in (directory, tmp_path / "pulled"):
        paths = [root, *sorted(root.rglob("*"))]
        assert {p.name for p in paths} >= {"manifest.json", "README.md", "data", "progress", "build_config.json"}
        for path in paths:
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))


def test_push_to_a_file_url_round_trips_byte_identically_and_resumes(cache, tmp_path):
    directory, manifest, _ = cache
    target = tmp_path / "elsewhere"
    report = copy_cache(open_store(directory), open_store(f"file://{target}"))
    assert _tree(target) == _tree(directory)
    assert report.copied[-1] == "manifest.json" and report.verified == len(_tree(directory))
    assert card_data_files((target / "README.md").read_text()) == [s.file for s in manifest.shards]
    # a lost shard and manifest at the target: the rerun copies just those, manifest last
    (target / manifest.shards[1].file).unlink()
    (target / "manifest.json").unlink()
    again = copy_cache(open_store(directory), open_store(f"file://{target}"))
    assert again.copied == [manifest.shards[1].file, "manifest.json"]
    assert _tree(target) == _tree(directory)
    back = tmp_path / "back"
    copy_cache(open_store(f"file://{target}"), open_store(back))
    assert _tree(back) == _tree(directory)


def test_only_finished_caches_are_pushed(cache, tmp_path):
    directory, _, _ = cache
    (directory / "manifest.json").unlink()
    with pytest.raises(TransferError, match="only a finished cache can be copied"):
        copy_cache(open_store(directory), open_store(tmp_path / "x"))


class FakeHub:
    """A stand-in for huggingface_hub.HfApi over a dict of committed files: create_repo, list_repo_tree
    (RepoFile entries with LFS info for .parquet files, as the Hub stores them) and create_commit."""

    def __init__(self, corrupt: str | None = None) -> None:
        self.files: dict[str, bytes] = {}
        self.commits: list[list[str]] = []
        self.corrupt = corrupt

    def create_repo(self, repo_id, repo_type, private, exist_ok):
        assert repo_type == "dataset" and exist_ok

    def list_repo_tree(self, repo_id, path, recursive, repo_type, revision):
        from huggingface_hub.hf_api import RepoFile

        for name, data in sorted(self.files.items()):
            if path is None or name.startswith(path + "/"):
                lfs = ({"size": len(data), "oid": hashlib.sha256(data).hexdigest(), "pointerSize": 134}
                       if name.endswith(".parquet") else None)
                blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
                yield RepoFile(path=name, size=len(data), oid=blob, lfs=lfs)

    def create_commit(self, repo_id, operations, commit_message, repo_type, revision):
        self.commits.append([op.path_in_repo for op in operations])
        for op in operations:
            data = Path(op.path_or_fileobj).read_bytes()
            if op.path_in_repo.endswith(self.corrupt or "\0"):
                data = data[:-1] + bytes([data[-1] ^ 1])
            self.files[op.path_in_repo] = data


def test_hub_push_commits_shards_then_the_rest_then_the_manifest_and_resumes(cache):
    pytest.importorskip("huggingface_hub")
    from cache_schema.hub import push_to_repo

    directory, manifest, _ = cache
    hub = FakeHub()
    report = push_to_repo(open_store(directory), "me/cache", path_in_repo="v1", api=hub, batch_files=2)
    shards = [f"v1/{s.file}" for s in manifest.shards]
    assert hub.commits[:2] == [shards[:2], shards[2:]]
    assert sorted(hub.commits[2]) == sorted(f"v1/{n}" for n in ("README.md", "build_config.json",
                                                                "progress/shard-00000.json"))
    assert hub.commits[3] == ["v1/manifest.json"]
    assert {name[3:]: data for name, data in hub.files.items()} == _tree(directory)
    assert report.verified == len(_tree(directory))
    hub.commits.clear()
    again = push_to_repo(open_store(directory), "me/cache", path_in_repo="v1", api=hub)
    assert hub.commits == [] and len(again.skipped) == len(_tree(directory))  # nothing to do twice


def test_hub_push_refuses_a_file_the_hub_holds_otherwise(cache):
    pytest.importorskip("huggingface_hub")
    from cache_schema.hub import push_to_repo

    directory, manifest, _ = cache
    hub = FakeHub(corrupt=manifest.shards[1].file)
    with pytest.raises(TransferError, match=r"1 file\(s\) do not match the local cache after the push"):
        push_to_repo(open_store(directory), "me/cache", api=hub)
    assert "manifest.json" not in hub.files  # never a manifest over unverified shards


def test_hub_targets_are_told_from_paths_and_urls(tmp_path, monkeypatch):
    from cache_schema.transfer_cli import hub_target

    monkeypatch.chdir(tmp_path)
    assert hub_target("me/cache") == ("me/cache", "")
    assert hub_target("hf://datasets/me/cache/v2/x") == ("me/cache", "v2/x")
    assert hub_target("s3://bucket/x") is None and hub_target("./me/cache") is None
    (tmp_path / "me" / "cache").mkdir(parents=True)
    with pytest.raises(TransferError, match="both a local path and a Hub repository id"):
        hub_target("me/cache")


def _to_earlier_layout(directory: Path, manifest: Manifest) -> None:
    """What a cache written before data/ looked like: shards and plain names at the top, no card."""
    for shard in manifest.shards:
        shutil.move(directory / shard.file, directory / Path(shard.file).name)
    (directory / "data").rmdir()
    (directory / "README.md").unlink()
    data = json.loads((directory / "manifest.json").read_text())
    for entry in data["shards"]:
        entry["file"] = Path(entry["file"]).name
    (directory / "manifest.json").write_text(json.dumps(data))
    record = directory / "progress" / "shard-00000.json"
    payload = json.loads(record.read_text())
    payload["info"]["file"] = Path(payload["info"]["file"]).name
    record.write_text(json.dumps(payload))


def test_earlier_layout_is_read_refused_for_builds_and_converted(cache):
    directory, manifest, rows = cache
    _to_earlier_layout(directory, manifest)
    before = CacheReader(directory).read_all()
    assert validate_cache(directory) == []
    with pytest.raises(LegacyLayoutError, match=f"run `tide-cache relayout {directory}`"):
        CacheDirectory(directory).refuse_legacy_layout()
    with pytest.raises(LegacyLayoutError):
        copy_cache(open_store(directory), open_store(directory.parent / "copy"))

    from cache_schema.cli import main

    assert main(["relayout", str(directory)]) == 0
    assert Manifest.load(directory).shards == manifest.shards
    assert sorted(p.name for p in directory.glob("*.parquet")) == []
    assert CacheReader(directory).read_all().equals(before)
    assert validate_cache(directory) == []
    assert card_data_files((directory / "README.md").read_text()) == [s.file for s in manifest.shards]
    assert json.loads((directory / "progress" / "shard-00000.json").read_text())["info"]["file"] == \
        manifest.shards[0].file
    assert pds.dataset(directory / "data").to_table().num_rows == len(rows)
    assert main(["relayout", str(directory)]) == 0  # already converted: nothing to do


def test_a_user_readme_is_left_alone(cache, caplog):
    directory, manifest, _ = cache
    (directory / "README.md").write_text("# my notes\n")
    CacheDirectory(directory).write_manifest(manifest)
    assert (directory / "README.md").read_text() == "# my notes\n"
    assert "is not a tide-cache dataset card" in caplog.text


def test_lazy_checksums_are_checked_on_the_first_read_of_each_shard(cache):
    directory, manifest, _ = cache
    shard = directory / manifest.shards[1].file
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF  # a data page: size, row count and footer stay right
    shard.write_bytes(bytes(data))
    reader = CacheReader(directory)
    units = {unit.shard_index: index for index, unit in reversed(list(enumerate(reader.units)))}
    assert reader.read_row_group(units[0]).num_rows > 0
    assert reader.read_row_group(units[2]).num_rows > 0
    with pytest.raises(Exception, match=f"shard {manifest.shards[1].file}: sha256: expected"):
        reader.read_row_group(units[1])
    with pytest.raises(Exception, match="sha256"):
        CacheReader(directory, checksums="open")
    assert isinstance(CacheReader(directory, checksums="off").read_row_group(units[0]), pa.Table)
