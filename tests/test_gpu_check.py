"""The GPU check (benchmarks/gpu_check.sh): end to end at the tiny shape on the CPU, and its guards."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks.gpu_check import run_part, summary
from benchmarks.gpu_check_common import PartRecord

ROOT = Path(__file__).resolve().parents[1]
TEACHERS = ("llada2_teacher", "wedlm_teacher")
STEP_VARIANTS = ("ce", "kl", "tidal_compdemo")


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory) -> dict:
    """One ``--tiny`` run of the shell entry point, as a user starts it (default tiny budget)."""
    out = tmp_path_factory.mktemp("gpu_check")
    proc = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--tiny", "--out", str(out)],
        cwd=ROOT, env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert f"wrote {out / 'gpu_check.json'}" in proc.stdout
    report = json.loads((out / "gpu_check.json").read_text())
    report["_out"] = out
    return report


def test_tiny_run_covers_every_part(tiny_report):
    parts = tiny_report["parts"]
    assert tiny_report["tiny"] is True and tiny_report["device"] == "cpu"
    assert set(parts) == {*TEACHERS, "student"}
    for name in TEACHERS:
        assert parts[name]["status"] == "ok", parts[name]
        assert (tiny_report["_out"] / f"{name}.json").is_file() and (tiny_report["_out"] / f"{name}.log").is_file()
    assert parts["student"]["status"] in ("ok", "partial"), parts["student"]
    assert tiny_report["seconds"] < tiny_report["budget_s"]


@pytest.mark.parametrize("name", TEACHERS)
def test_tiny_teacher_build_runs_the_builds_batches(tiny_report, name):
    results = tiny_report["parts"][name]["results"]
    settings, build, bare = results["settings"], results["build"], results["bare_teacher"]
    # one row per synthetic sample; each unit asks for at most its three forwards (plain + two CompDemo)
    assert build["rows"] == settings["samples"]
    assert settings["samples"] <= build["teacher_forwards"] <= 3 * settings["samples"]
    # every synthetic sample is at the full teacher length, so the real tokens are forwards x length
    assert build["real_teacher_tokens"] == build["teacher_forwards"] * settings["teacher_length"]
    assert build["batch_width_max"] <= settings["teacher_length"] + 32  # block-padded inside the runner only
    assert build["teacher_batches"] >= build["teacher_forwards"] * settings["teacher_length"] // settings["batch_tokens"]
    assert build["teacher_tokens_per_s"] > 0 and bare["runner_seconds"] > 0 and bare["decoder_seconds"] > 0
    assert bare["build_over_bare_teacher"] == pytest.approx(build["seconds"] / bare["runner_seconds"])
    assert settings["pipeline"] == {"llada2_teacher": "cross", "wedlm_teacher": "shared"}[name]


def test_tiny_moe_check_compares_grouped_with_loop(tiny_report):
    check = tiny_report["parts"]["llada2_teacher"]["results"]["moe_check"]
    assert check["max_abs_diff_over_max_abs"] < 1e-5  # fp32 on the CPU
    assert check["grouped_over_loop"] == pytest.approx(check["grouped_mm_seconds"] / check["eager_seconds"])


def test_tiny_student_steps_and_their_ratios(tiny_report):
    part = tiny_report["parts"]["student"]
    results, errors = part["results"], part.get("errors", {})
    for label in STEP_VARIANTS:
        sdpa = results[f"sdpa.{label}"]
        assert sdpa["steps"] == 2 and 0 < sdpa["min_step_s"] <= sdpa["median_step_s"]
        assert sdpa["autocast_bf16"] is False  # fp32 on the CPU, as tide-train runs there
    for label in STEP_VARIANTS[1:]:
        ratio = results["ratios"][f"sdpa.{label}_over_ce"]
        assert ratio == pytest.approx(results[f"sdpa.{label}"]["median_step_s"] / results["sdpa.ce"]["median_step_s"])
    # flex attention has no backward on the CPU: the guard records that, and the part goes on
    for label in STEP_VARIANTS:
        key = f"flex_attention.{label}"
        assert key in results or "CPU" in errors[key]
    assert set(errors) <= {f"flex_attention.{label}" for label in STEP_VARIANTS}
    forward = results["flex_vs_sdpa_forward"]
    assert forward["max_abs_diff"] <= 1e-4 * max(1.0, forward["max_abs"])
    headline = tiny_report["summary"]
    assert headline["student.sdpa.tidal_compdemo_over_ce"] == results["ratios"]["sdpa.tidal_compdemo_over_ce"]
    assert headline["llada2_teacher.tokens_per_s"] == (
        tiny_report["parts"]["llada2_teacher"]["results"]["build"]["teacher_tokens_per_s"])


def test_part_record_guards_each_measurement(tmp_path):
    path = tmp_path / "part.json"
    record = PartRecord(path, deadline=time.monotonic() + 60)
    assert record.measure("fine", lambda: {"x": 1}) == {"x": 1}

    def out_of_memory():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

    assert record.measure("oom", out_of_memory) is None
    assert record.measure("after", lambda: 2) == 2
    assert record.measure("too_long", lambda: 3, needs=3600) is None
    written = json.loads(path.read_text())
    assert written["results"] == {"fine": {"x": 1}, "after": 2}
    assert written["errors"] == {"oom": "OutOfMemoryError: CUDA out of memory. Tried to allocate 80.00 GiB"}
    assert set(written["skipped"]) == {"too_long"} and "time budget" in written["skipped"]["too_long"]


def test_a_part_over_its_limit_is_killed_and_recorded(tmp_path):
    args = argparse.Namespace(out=tmp_path, device="cpu", tiny=True)
    start = time.monotonic()
    record = run_part("student", args, limit_s=2)
    assert time.monotonic() - start < 30
    assert record["status"] == "timeout" and record["limit_s"] == 2
    assert "log_tail" in record


def test_summary_takes_each_figure_from_its_part():
    parts = {
        "llada2_teacher": {"results": {"build": {"teacher_tokens_per_s": 5.0, "peak_memory": {"gib": 40.0}},
                                       "bare_teacher": {"build_over_bare_teacher": 1.2, "build_over_decoder": 1.5},
                                       "moe_check": {"grouped_over_loop": 0.1}}},
        "student": {"results": {"ratios": {"sdpa.kl_over_ce": 1.05}}},
        "wedlm_teacher": {"status": "timeout"},
    }
    got = summary(parts)
    assert got["llada2_teacher.tokens_per_s"] == 5.0 and got["llada2_teacher.peak_memory_gib"] == 40.0
    assert got["llada2_teacher.build_over_bare_teacher"] == 1.2 and got["llada2_teacher.moe_grouped_over_loop"] == 0.1
    assert got["wedlm_teacher.tokens_per_s"] is None and got["student.sdpa.kl_over_ce"] == 1.05
