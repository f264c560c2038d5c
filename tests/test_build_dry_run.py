# ruff: noqa: F811  (pytest fixtures imported from another test module are arguments here)
"""``tide-cache build --dry-run`` counts what the real build then does, for both pipelines, without loading
the teacher or writing anything; its byte estimate is within a factor of the real cache's size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_build_run import COMMON, models  # noqa: F401  (the tiny teachers and data of the build tests)

from stages.cache_build.config import BuildConfig
from stages.cache_build.dry_run import dry_run
from stages.cache_build.run import run_build
from stages.cli import tide_cache_main

TEACHERS = {"shared": "wedlm", "cross": "llada2"}


def _journal_totals(cache: Path, key: str) -> int:
    return sum(json.loads(p.read_text())["stats"][key] for p in sorted((cache / "progress").glob("shard-*.json")))


@pytest.mark.parametrize("pipeline", ["shared", "cross"])
def test_dry_run_figures_match_the_real_build(tmp_path, models, pipeline):  # noqa: F811
    config = BuildConfig(**COMMON, teacher=str(models[TEACHERS[pipeline]]), student_tokenizer=str(models["student"]),
                         sources=str(models["sources"]), output=str(tmp_path / "cache"), k=8)
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


def test_dry_run_command_prints_the_table_and_writes_nothing(tmp_path, models, capsys):  # noqa: F811
    rc = tide_cache_main(["build", "--dry-run", "--teacher", str(models["wedlm"]), "--student-tokenizer",
                          str(models["student"]), "--sources", str(models["sources"]), "--output",
                          str(tmp_path / "cache"), "--max-length", "128", "--block-size", "32", "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0
    for label in ("samples kept", "samples skipped", "alignment yield", "rows", "masked positions",
                  "teacher forwards", "teacher tokens", "teacher FLOPs", "cache bytes"):
        assert label in out, label
    assert not (tmp_path / "cache").exists()
