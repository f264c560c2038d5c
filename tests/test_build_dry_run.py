"""``tide-cache build --dry-run`` counts what the real build then does, for both pipelines, without loading
the teacher or writing anything; its byte estimate is within a factor of the real cache's size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stages.cache_build.config import BuildConfig
from stages.cache_build.dry_run import dry_run
from stages.cache_build.run import run_build
from stages.cli import tide_cache_main

COMMON = dict(max_length=128, teacher_max_length=160, block_size=32, replicas=2, rows_per_shard=4,
              rows_per_row_group=2, seed=3, progress=False, device="cpu")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tokenizer_dir, student_tokenizer, wedlm_tokenizer, llama3_tokenizer):
    from tide.testing.chat_data import humaneval_chat, write_chat_jsonl
    from tide.testing.tiny_models import build_tiny_model

    root = tmp_path_factory.mktemp("dry")
    return {
        # the first HumanEval prompt is longer than 128 tokens: a skip the dry run must count too
        "sources": write_chat_jsonl(root / "chat.jsonl", humaneval_chat(2, 3)),
        "student": tokenizer_dir / "student",
        "shared": build_tiny_model("wedlm", root / "wedlm", tokenizer=wedlm_tokenizer),
        "cross": build_tiny_model("llada2", root / "llada2", tokenizer=llama3_tokenizer),
    }


def _journal_totals(cache: Path, key: str) -> int:
    return sum(json.loads(p.read_text())["stats"][key] for p in sorted((cache / "progress").glob("shard-*.json")))


@pytest.mark.parametrize("pipeline", ["shared", "cross"])
def test_dry_run_figures_match_the_real_build(tmp_path, inputs, pipeline):
    config = BuildConfig(**COMMON, teacher=str(inputs[pipeline]), student_tokenizer=str(inputs["student"]),
                         sources=str(inputs["sources"]), output=str(tmp_path / "cache"), k=8)
    report = dry_run(config)
    assert not (tmp_path / "cache").exists()
    run_build(config)
    stats = json.loads((tmp_path / "cache" / "manifest.json").read_text())["build"]["stats"]
    assert report.samples == stats["samples"] > 0
    assert report.skipped == stats["skipped"] and sum(report.skipped.values()) >= 1
    assert report.alignment_yield == pytest.approx(stats["alignment_yield"])
    assert report.rows == stats["rows"] == 2 * stats["samples"]
    assert report.masked_positions == stats["masked_positions"]
    assert report.targets == stats["targets"]
    assert report.teacher_forwards == stats["teacher_forwards"]
    assert report.teacher_tokens == _journal_totals(tmp_path / "cache", "real_tokens")
    assert report.teacher_parameters and report.teacher_flops == pytest.approx(
        2 * report.teacher_parameters * report.teacher_tokens * (2 if pipeline == "shared" else 1))
    ratio = report.cache_bytes / stats["bytes"]
    print(f"{pipeline}: estimated {report.cache_bytes:.0f} B, built {stats['bytes']} B (ratio {ratio:.2f}); "
          f"{stats['bytes'] / stats['masked_positions']:.1f} B per masked position")
    assert 0.25 < ratio < 4.0


def test_dry_run_command_prints_the_table_and_writes_nothing(tmp_path, inputs, capsys):
    rc = tide_cache_main(["build", "--dry-run", "--teacher", str(inputs["shared"]), "--student-tokenizer",
                          str(inputs["student"]), "--sources", str(inputs["sources"]), "--output",
                          str(tmp_path / "cache"), "--max-length", "128", "--block-size", "32", "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0
    for label in ("samples kept", "samples skipped", "alignment yield", "rows", "masked positions",
                  "teacher forwards", "teacher tokens", "teacher FLOPs", "cache bytes"):
        assert label in out, label
    assert not (tmp_path / "cache").exists()
