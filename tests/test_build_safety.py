"""Builds own their output, resume checks its inputs, and the build refuses what would put bad data in a cache.

The exact scenarios of issue 16: a foreign cache (no build journal) and a foreign shard-named file in
``--output``; the data edited, and the teacher weights replaced, between a kill and the resume; an empty
or all-invalid input; an out-of-vocabulary token id; a NaN teacher in each pipeline; the temporary files a
killed build leaves. Each asserts the refusal (with the one-line error of the command line) and that
nothing already there was touched.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from cache_schema.validate import validate_cache
from stages.cache_build.config import BuildConfig
from stages.cache_build.input_check import InputsChangedError
from stages.cache_build.ownership import OutputOwnershipError
from stages.cache_build.run import BuildHooks, run_build
from stages.cache_build.skips import NoSamplesError
from stages.cache_build.unit_checks import TeacherOutputError, TokenIdError
from stages.cli import tide_cache_main
from tide.testing.chat_data import humaneval_chat, write_chat_jsonl
from tide.testing.synthetic_cache import format_test_spec, shared_rows, write_cache_rows
from tide.testing.tiny_models import build_tiny_model

SMALL = dict(max_length=128, teacher_max_length=160, block_size=32, replicas=1, rows_per_shard=2,
             rows_per_row_group=2, passes=["plain"], k=4, seed=3, progress=False, device="cpu", dtype="float32")


class Stop(RuntimeError):
    """The injected kill of a build (after its first shard)."""


def _stop_after_first_shard(shard: int) -> None:
    raise Stop(f"killed after shard {shard}")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tokenizer_dir, student_tokenizer, wedlm_tokenizer, llama3_tokenizer):
    root = tmp_path_factory.mktemp("inputs")
    return {
        "student": tokenizer_dir / "student",
        "wedlm": build_tiny_model("wedlm", root / "wedlm", tokenizer=wedlm_tokenizer),
        "llada2": build_tiny_model("llada2", root / "llada2", tokenizer=llama3_tokenizer),
        "conversations": humaneval_chat(3, 4),  # 6 usable samples (the first HumanEval prompt is too long)
    }


def _config(inputs, tmp_path, teacher="wedlm", **kw) -> BuildConfig:
    sources = kw.pop("sources", None)
    if sources is None:
        sources = write_chat_jsonl(tmp_path / "chat.jsonl", inputs["conversations"])
    values = dict(SMALL, sources=str(sources), teacher=str(kw.pop("teacher_path", inputs[teacher])),
                  student_tokenizer=str(inputs["student"]), output=str(tmp_path / "cache"))
    values.update(kw)
    return BuildConfig(**values)


def _argv(config: BuildConfig) -> list[str]:
    return ["build", "--teacher", config.teacher, "--student-tokenizer", config.student_tokenizer, "--sources",
            config.sources, "--output", config.output, "--max-length", str(config.max_length),
            "--teacher-max-length", str(config.teacher_max_length), "--replicas", str(config.replicas),
            "--rows-per-shard", str(config.rows_per_shard), "--rows-per-row-group", str(config.rows_per_row_group),
            "--passes", ",".join(config.passes), "--k",
            str(config.k), "--seed", str(config.seed), "--device", "cpu", "--dtype", "float32", "--no-progress",
            *(["--teacher-tokenizer", config.teacher_tokenizer] if config.teacher_tokenizer else [])]


def _hashes(directory) -> dict[str, str]:
    return {p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(directory).rglob("*")) if p.is_file()}


def _one_error(capfd, *needles: str) -> str:
    err = capfd.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("tide-cache build: error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------------------- builds own their output


def test_a_cache_without_build_journal_is_refused_and_kept_then_overwritten(inputs, tmp_path, capfd):
    """Issue 16 (2): building into a directory holding another cache without build_config.json replaced all
    its shards (pipeline shared → cross, 14 rows → fewer)."""
    config = _config(inputs, tmp_path, teacher="llada2")
    foreign = write_cache_rows(config.output, shared_rows(14, seed=5), format_test_spec("shared"))
    before = _hashes(config.output)
    with pytest.raises(OutputOwnershipError, match="a cache without a build journal"):
        run_build(config)
    assert tide_cache_main(_argv(config)) == 1
    _one_error(capfd, config.output, "--overwrite")
    assert _hashes(config.output) == before and foreign.pipeline == "shared"
    run_build(dataclasses.replace(config, overwrite=True))
    manifest = json.loads((Path(config.output) / "manifest.json").read_text())
    assert manifest["pipeline"] == "cross" and manifest["build"]["stats"]["rows"] == 6
    assert validate_cache(config.output) == []


def test_a_foreign_file_named_like_a_shard_is_refused_and_kept(inputs, tmp_path):
    """Issue 16 (2): an unrelated file named like a shard was replaced."""
    config = _config(inputs, tmp_path)
    output = Path(config.output)
    output.mkdir()
    (output / "shard-00000-of-00003.parquet").write_bytes(b"my own data, not a cache shard")
    with pytest.raises(OutputOwnershipError, match=r"files no build wrote \(shard-00000-of-00003.parquet\)"):
        run_build(config)
    assert (output / "shard-00000-of-00003.parquet").read_bytes() == b"my own data, not a cache shard"
    assert sorted(p.name for p in output.iterdir()) == ["shard-00000-of-00003.parquet"]


def test_a_stray_shard_in_an_owned_directory_is_refused(inputs, tmp_path):
    config = _config(inputs, tmp_path)
    with pytest.raises(Stop):
        run_build(config, hooks=BuildHooks(after_shard=_stop_after_first_shard))
    stray = Path(config.output) / "data" / "shard-00007-of-00009.parquet"
    stray.write_bytes(b"not this build's")
    with pytest.raises(OutputOwnershipError, match="shard files that are not this build's"):
        run_build(config)
    assert stray.read_bytes() == b"not this build's"


def test_overwrite_never_deletes_what_a_cache_does_not_hold(inputs, tmp_path):
    config = dataclasses.replace(_config(inputs, tmp_path), overwrite=True)
    output = Path(config.output)
    output.mkdir()
    (output / "notes.txt").write_text("keep me")
    (output / "manifest.json").write_text("{}")
    with pytest.raises(OutputOwnershipError, match=r"not part of a cache \(notes.txt\)"):
        run_build(config)
    assert (output / "notes.txt").read_text() == "keep me" and (output / "manifest.json").is_file()


def test_killed_builds_temporary_files_are_removed_on_resume(inputs, tmp_path):
    """Issue 16 (8): the manifest temp file of a killed build was never cleaned up."""
    config = _config(inputs, tmp_path)
    run_build(config)
    output = Path(config.output)
    reference = {name: digest for name, digest in _hashes(output).items() if name.startswith("data/shard-")}
    (output / "manifest.json").unlink()  # killed while writing the manifest: its temp file is all there is
    leftovers = [output / ".manifest.json.0badc0de.tmp", output / "progress" / ".shard-00001.json.12345678.tmp",
                 output / "data" / ".shard-00002-of-00003.parquet.87654321.tmp"]
    for path in leftovers:
        path.write_bytes(b"half written")
    run_build(config)
    assert not [p for p in leftovers if p.exists()] and not list(output.rglob(".*.tmp"))
    assert {n: d for n, d in _hashes(output).items() if n.startswith("data/shard-")} == reference
    assert validate_cache(output) == []


def test_a_full_disk_fails_in_one_line_and_resumes_to_the_uninterrupted_cache(inputs, tmp_path, monkeypatch,
                                                                              capfd):
    """The disk fills up while the second shard is written: one line naming the shard and the cause, no
    partial shard, no journal record for it; once there is space again the same command finishes the cache
    byte-identical to an uninterrupted build."""
    import cache_schema.writer as writer

    config = _config(inputs, tmp_path)
    reference = dataclasses.replace(config, output=str(tmp_path / "reference"))
    run_build(reference)
    opened, real_open = [], writer._open_writer

    class FullDisk:
        def __init__(self, inner):
            self.inner = inner

        def write_table(self, *args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.inner, name)

    def open_writer(*args, **kwargs):
        opened.append(args[0])
        inner = real_open(*args, **kwargs)
        return FullDisk(inner) if len(opened) == 2 else inner

    monkeypatch.setattr(writer, "_open_writer", open_writer)
    assert tide_cache_main(_argv(config)) == 1
    _one_error(capfd, "shard-00001-of-00003.parquet", "No space left on device")
    output = Path(config.output)
    assert sorted(p.name for p in output.glob("data/shard-*")) == ["shard-00000-of-00003.parquet"]
    assert not list(output.rglob(".*.tmp")) and not (output / "progress" / "shard-00001.json").exists()
    monkeypatch.setattr(writer, "_open_writer", real_open)
    assert tide_cache_main(_argv(config)) == 0
    shards = {n: d for n, d in _hashes(output).items() if n.startswith("data/shard-")}
    assert shards == {n: d for n, d in _hashes(reference.output).items() if n.startswith("data/shard-")}
    assert validate_cache(output) == []


# --------------------------------------------------------------------------------- resume checks its inputs


def test_data_edited_between_kill_and_resume_is_refused(inputs, tmp_path, capfd):
    """Issue 16 (3): with the data file edited between kill and resume, 1 of 8 shards came from the new data."""
    config = _config(inputs, tmp_path)
    with pytest.raises(Stop):
        run_build(config, hooks=BuildHooks(after_shard=_stop_after_first_shard))
    before = _hashes(config.output)
    edited = [list(map(dict, c)) for c in inputs["conversations"]]
    edited[-1][-1]["content"] += " (edited)"
    write_chat_jsonl(config.sources, edited)
    with pytest.raises(InputsChangedError, match=f"data source {config.sources}: its content changed"):
        run_build(config)
    assert tide_cache_main(_argv(config)) == 1
    _one_error(capfd, "refusing to resume", f"data source {config.sources}", "--overwrite")
    assert _hashes(config.output) == before  # no shard built from the new data
    run_build(dataclasses.replace(config, overwrite=True))  # the way forward the message names
    assert validate_cache(config.output) == []


def test_teacher_replaced_between_kill_and_resume_is_refused(inputs, tmp_path, wedlm_tokenizer, capfd):
    """Issue 16 (3): with the teacher weights replaced in place, 6 of 8 shards came from the new weights
    while the manifest kept the old weights fingerprint."""
    teacher = build_tiny_model("wedlm", tmp_path / "teacher", tokenizer=wedlm_tokenizer, seed=0)
    config = _config(inputs, tmp_path, teacher_path=teacher)
    with pytest.raises(Stop):
        run_build(config, hooks=BuildHooks(after_shard=_stop_after_first_shard))
    before = _hashes(config.output)
    build_tiny_model("wedlm", teacher, tokenizer=wedlm_tokenizer, seed=1)  # same files, new weights
    with pytest.raises(InputsChangedError, match=f"teacher weights {teacher}: changed since the build started"):
        run_build(config)
    assert tide_cache_main(_argv(config)) == 1
    line = _one_error(capfd, "teacher weights")
    assert "data source" not in line  # only what changed is named
    assert _hashes(config.output) == before


# ------------------------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("content", ["", "not json\n{\"broken\": \n[1, 2]\n"])
def test_an_empty_or_all_invalid_input_is_refused_with_the_skip_table(inputs, tmp_path, content, capfd):
    """Issue 16 (6): an empty or all-invalid input produced a "valid" 0-row cache and exit 0."""
    data = tmp_path / "data.jsonl"
    data.write_text(content)
    config = _config(inputs, tmp_path, sources=data)
    expected = "no rows at all" if not content else "bad_row_type 1, invalid_json 2"
    with pytest.raises(NoSamplesError, match="no usable sample") as refused:
        run_build(config)
    assert expected in str(refused.value)
    assert tide_cache_main(_argv(config)) == 1
    _one_error(capfd, f"--sources {data}", expected)
    assert not (Path(config.output) / "manifest.json").exists()
    assert not (Path(config.output) / "progress" / "survey.json").exists()


def test_an_out_of_vocabulary_token_id_is_refused_naming_the_row(inputs, tmp_path, capfd):
    """Issue 16 (8): an out-of-vocabulary input id gave ``IndexError: index out of range in self``. Here the
    Llama-3-vocabulary teacher is given the Qwen tokenizer, whose ChatML ids (151,644 ...) lie past its
    embedding."""
    config = _config(inputs, tmp_path, teacher="llada2", teacher_tokenizer=str(inputs["student"]))
    with pytest.raises(TokenIdError, match=r"shard-00000-of-00003.parquet: sample .*chat.jsonl:1: teacher token id "
                                           r"151644 at position 0 is outside the teacher vocabulary \[0, \d+\)"):
        run_build(config)
    assert tide_cache_main(_argv(config)) == 1
    _one_error(capfd, "chat.jsonl:1", "outside the teacher vocabulary", "--teacher-tokenizer")
    assert not list(Path(config.output).glob("shard-*.parquet"))


def _poison(teacher: Path) -> Path:
    """Every floating weight of the checkpoint set to NaN."""
    for path in teacher.glob("*.safetensors"):
        tensors = load_file(path)
        save_file({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in tensors.items()},
                  path, metadata={"format": "pt"})
    return teacher


@pytest.mark.parametrize("kind, tokenizer, what", [
    ("llada2", "llama3_tokenizer", "returned non-finite gold_logprob"),  # the chunk log-probs
    ("wedlm", "wedlm_tokenizer", "logits over the shared slice must be finite"),  # the top-k targets' refusal
])
def test_a_nan_teacher_is_refused_naming_the_sample(inputs, tmp_path, kind, tokenizer, what, request, capfd):
    """Issue 16 (8): a NaN teacher in the cross pipeline said "internal error: a teacher forward is
    missing"; in the shared pipeline NaN targets reached the cache."""
    teacher = _poison(build_tiny_model(kind, tmp_path / "nan", tokenizer=request.getfixturevalue(tokenizer)))
    config = _config(inputs, tmp_path, teacher_path=teacher)
    with pytest.raises(TeacherOutputError, match=r"shard-00000-of-00003.parquet: .*sample .*chat.jsonl:1 replica 0") as refused:
        run_build(config)
    assert what in str(refused.value) and str(teacher) in str(refused.value)
    assert tide_cache_main(_argv(config)) == 1
    line = _one_error(capfd, what, "chat.jsonl:1", "--dtype float32")
    assert "internal error" not in line
    assert not list(Path(config.output).glob("shard-*.parquet"))
