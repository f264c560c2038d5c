"""Caches on a real S3 server on loopback (moto in server mode, started and stopped here; nothing beyond
127.0.0.1): a build to s3://, killed once and resumed there, validated, trained from, and compared with the
same cache on local disk; push / pull round trips through S3 and the CLI."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

from cache_schema.errors import ShardError  # noqa: E402
from cache_schema.manifest import Manifest  # noqa: E402
from cache_schema.reader import CacheReader  # noqa: E402
from cache_schema.store import RemoteStore, open_store  # noqa: E402
from cache_schema.transfer import TransferError, copy_cache  # noqa: E402
from cache_schema.validate import validate_cache  # noqa: E402
from tide.testing.synthetic_cache import format_test_spec, shared_rows, write_cache_rows  # noqa: E402


@pytest.fixture(scope="module")
def s3_server():
    """A moto S3 server on an ephemeral loopback port, with credentials and endpoint in the environment
    (botocore and s3fs read AWS_ENDPOINT_URL), for this module only."""
    import logging

    import s3fs

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    saved = {key: os.environ.get(key) for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                                  "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        yield f"http://{host}:{port}"
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


@pytest.fixture
def bucket(s3_server, request):
    """A new, empty bucket per test."""
    import s3fs

    name = "t-" + hashlib.sha1(request.node.name.encode()).hexdigest()[:12]
    s3fs.S3FileSystem().mkdir(name)
    return name


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _remote_tree(url: str) -> dict[str, bytes]:
    store = open_store(url)
    fs, prefix = store.fs, store.root
    return {path[len(prefix) + 1:]: fs.cat_file(path) for path in sorted(fs.find(prefix))}


# ------------------------------------------------------------------------------------------ build and train


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, tokenizer_dir, student_tokenizer, wedlm_tokenizer):
    from tide.testing.chat_data import humaneval_chat, write_chat_jsonl
    from tide.testing.tiny_models import build_tiny_model

    root = tmp_path_factory.mktemp("remote-models")
    return {
        "sources": write_chat_jsonl(root / "chat.jsonl", humaneval_chat(0, 4)),
        "student_tokenizer": tokenizer_dir / "student",
        "teacher": build_tiny_model("wedlm", root / "wedlm", tokenizer=wedlm_tokenizer),
        "student": build_tiny_model("student", root / "student", tokenizer=student_tokenizer, hidden_size=16,
                                    num_layers=1),
    }


class _Killed(RuntimeError):
    pass


def test_s3_build_killed_resumed_validated_and_trained_like_local(tiny_models, bucket, tmp_path):
    """The done-when of the remote cache: build to s3://, kill after the first shard, resume there, validate
    there, train from s3:// and from a local copy of the same cache: the same losses, step by step."""
    from stages.cache_build.config import BuildConfig
    from stages.cache_build.run import BuildHooks, run_build
    from stages.train.config import TrainConfig
    from stages.train.loop import train
    from stages.train.metrics import read_metrics

    url = f"s3://{bucket}/cache"
    config = BuildConfig(sources=str(tiny_models["sources"]), teacher=str(tiny_models["teacher"]),
                         student_tokenizer=str(tiny_models["student_tokenizer"]), output=url, max_length=64,
                         teacher_max_length=96, block_size=16, replicas=2, rows_per_shard=2, rows_per_row_group=1,
                         k=8, k_policy="fixed", passes=["plain"], encoding="float32", seed=3, progress=False, device="cpu")

    def kill(shard):
        raise _Killed(f"killed after shard {shard}")

    with pytest.raises(_Killed):
        run_build(config, hooks=BuildHooks(after_shard=kill))
    store = open_store(url)
    assert not store.is_file("manifest.json")  # a killed build never has a manifest
    assert len(store.glob("progress/shard-*.json")) == 1
    assert store.glob("data/shard-*.parquet")  # the first shard is in, under data/
    run_build(config)
    manifest = Manifest.load(url)
    assert len(manifest.shards) == 4 and all(s.file.startswith("data/") for s in manifest.shards)
    assert validate_cache(url) == []

    local = tmp_path / "local"
    assert copy_cache(open_store(url), open_store(local)).verified == len(_remote_tree(url))
    assert _tree(local) == _remote_tree(url)

    def run(cache, out):
        train(TrainConfig(cache=cache, student=str(tiny_models["student"]), output=str(out), mode="kl",
                          temperature=1.0, batch_size=2, max_steps=3, log_every=1, save_every=0, warmup_steps=1,
                          lr=1e-3, mixed_precision="no", seed=1, keep_checkpoints=0, val_fraction=0.0))
        return [(r["step"], r["loss"]) for r in read_metrics(out / "logs" / "metrics.jsonl") if "loss" in r]

    remote_losses = run(url, tmp_path / "from-s3")
    local_losses = run(str(local), tmp_path / "from-disk")
    assert [step for step, _ in remote_losses] == [1, 2, 3]
    assert remote_losses == local_losses


# ------------------------------------------------------------------------------------------ push and pull


@pytest.fixture
def local_cache(tmp_path):
    directory = tmp_path / "cache"
    manifest = write_cache_rows(directory, shared_rows(9, seed=4), format_test_spec("shared", rows_per_shard=3))
    return directory, manifest


def test_push_to_s3_and_pull_back_are_byte_identical_and_resume(local_cache, bucket, tmp_path, monkeypatch):
    import cache_schema.transfer as transfer

    directory, manifest = local_cache
    url = f"s3://{bucket}/pushed"
    real_copy, calls = transfer.copy_file, []

    def dies_on_the_third(source, target, name):
        calls.append(name)
        if len(calls) == 3:
            raise _Killed("connection lost")
        real_copy(source, target, name)

    monkeypatch.setattr(transfer, "copy_file", dies_on_the_third)
    with pytest.raises(_Killed):
        copy_cache(open_store(directory), open_store(url))
    assert not open_store(url).is_file("manifest.json")  # a killed push never leaves a manifest
    monkeypatch.setattr(transfer, "copy_file", real_copy)
    report = copy_cache(open_store(directory), open_store(url))
    assert report.skipped[:2] == [s.file for s in manifest.shards[:2]]  # resumed, not redone
    assert report.copied[-1] == "manifest.json"
    assert _remote_tree(url) == _tree(directory)

    # a file changed at the target without changing size is found by the read-back and copied again
    store = open_store(url)
    shard = manifest.shards[2].file
    damaged = bytearray(store.read_bytes(shard))
    damaged[100] ^= 0xFF
    store.write_bytes(shard, bytes(damaged))
    report = copy_cache(open_store(directory), store)
    assert report.copied == [] and report.verified == len(_tree(directory))
    assert store.read_bytes(shard) == (directory / shard).read_bytes()

    pulled = tmp_path / "pulled"
    copy_cache(open_store(url), open_store(pulled))
    assert _tree(pulled) == _tree(directory)
    assert validate_cache(pulled) == []


def test_a_target_holding_another_cache_is_refused(local_cache, bucket, tmp_path):
    directory, _ = local_cache
    other = tmp_path / "other"
    write_cache_rows(other, shared_rows(4, seed=9), format_test_spec("shared", rows_per_shard=2))
    url = f"s3://{bucket}/taken"
    copy_cache(open_store(other), open_store(url))
    with pytest.raises(TransferError, match="already holds another cache"):
        copy_cache(open_store(directory), open_store(url))


def test_cli_push_inspect_validate_and_train_check_on_s3(local_cache, bucket, tmp_path, capsys):
    from cache_schema.cli import main
    from stages.train.preflight import InputPathError, cache_fingerprint, check_cache_path

    directory, manifest = local_cache
    url = f"s3://{bucket}/cli"
    assert main(["push", str(directory), url]) == 0
    assert "verified by sha256" in capsys.readouterr().out
    assert main(["validate", url]) == 0
    assert f"OK: {url} ({manifest.num_rows} rows in 3 shards)" in capsys.readouterr().out
    assert main(["inspect", url, "--rows", "1"]) == 0
    out = capsys.readouterr().out
    assert f"cache      {url}" in out and "[data/shard-00000-of-00003.parquet row 0]" in out
    assert check_cache_path(url) == url
    assert cache_fingerprint(url) == cache_fingerprint(directory)
    with pytest.raises(InputPathError, match="no manifest.json there"):
        check_cache_path(f"s3://{bucket}/nothing")
    assert main(["pull", url, str(tmp_path / "back")]) == 0
    assert _tree(tmp_path / "back") == _tree(directory)


def test_reading_from_s3_streams_row_groups_with_read_ahead_and_lazy_checksums(local_cache, bucket):
    directory, manifest = local_cache
    url = f"s3://{bucket}/stream"
    copy_cache(open_store(directory), open_store(url))
    local, remote = CacheReader(directory), CacheReader(url, read_ahead=3)
    assert isinstance(remote.store, RemoteStore) and remote.num_units == local.num_units
    assert remote.read_all().equals(local.read_all())
    remote.prefetch([2, 1], ["t", "input_ids"])
    assert remote.read_row_group(2, ["t", "input_ids"]).equals(local.read_row_group(2, ["t", "input_ids"]))
    assert [np.asarray(v).tolist() for v in remote.unit_column("replica")] == \
        [np.asarray(v).tolist() for v in local.unit_column("replica")]
    remote.close()

    store = open_store(url)
    shard = manifest.shards[1].file
    damaged = bytearray(store.read_bytes(shard))
    damaged[100] ^= 0xFF  # a data page, not the footer: the start-up checks cannot see it
    store.write_bytes(shard, bytes(damaged))
    lazy = CacheReader(url)
    lazy.read_row_group(0)  # shard 0 is intact
    first_unit_of_shard_one = next(u for u, unit in enumerate(lazy.units) if unit.shard_index == 1)
    with pytest.raises(ShardError, match=f"shard {shard}: sha256: expected {manifest.shards[1].sha256}"):
        lazy.read_row_group(first_unit_of_shard_one)
    with pytest.raises(ShardError, match="sha256"):
        CacheReader(url, checksums="open")
