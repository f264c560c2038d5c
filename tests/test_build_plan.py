"""Build plan, settings, CLI parsing and the pure helpers of the teacher passes (no models)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest

from cache_schema.directory import CacheDirectory
from stages.cache_build.cli import InjectedFailure, add_build_arguments, config_from_args, fail_after_hook
from stages.cache_build.config import BuildConfig, BuildConfigError, check_or_store_config
from stages.cache_build.passes import (
    COMPDEMO_1,
    COMPDEMO_2,
    PLAIN,
    TeacherRequest,
    items_of_pass,
    pack_batches,
)
from stages.cache_build.pipelines import _expand_ranges, chunk_sums
from stages.cache_build.shard_layout import ShardLayout as BuildPlan

# ------------------------------------------------------------------------------------------------- plan


def test_plan_units_cover_every_sample_replica_once_in_order():
    plan = BuildPlan(num_samples=7, replicas=3, rows_per_shard=4)
    assert plan.num_units == 21 and plan.num_shards == 6  # ceil(21 / 4)
    seen = []
    for shard in range(plan.num_shards):
        seen += [plan.unit(u) for u in plan.shard_units(shard)]
    assert seen == [(s, r) for s in range(7) for r in range(3)]
    assert len(plan.shard_units(5)) == 1  # last shard holds the remainder
    # sample 1's replicas are units 3, 4, 5 → shards 0, 1, 1
    assert plan.shard_units_of_sample(1) == [(0, 0), (1, 1), (1, 2)]
    assert list(plan.shard_samples(1)) == [1, 2]  # units 4..7 → samples 1 and 2


def test_plan_rank_assignment_partitions_shards_and_never_changes_content():
    plan = BuildPlan(num_samples=50, replicas=2, rows_per_shard=7)
    for world in (1, 2, 3, 8):
        owned = [plan.shards_for_rank(rank, world) for rank in range(world)]
        flat = sorted(s for shards in owned for s in shards)
        assert flat == list(range(plan.num_shards))
        for rank, shards in enumerate(owned):
            assert all(s % world == rank for s in shards)
    # content of a shard is the same object whatever the world size: only the owner changes
    assert plan.shard_units(3) == BuildPlan(50, 2, 7).shard_units(3)
    assert plan.shard_file(3) == "shard-00003-of-00015.parquet"


def test_plan_refuses_bad_arguments():
    with pytest.raises(ValueError, match="replicas"):
        BuildPlan(3, 0, 4)
    plan = BuildPlan(3, 1, 4)
    with pytest.raises(ValueError, match="rank=2"):
        plan.shards_for_rank(2, 2)
    with pytest.raises(ValueError, match="shard=1"):
        plan.shard_units(1)


# ------------------------------------------------------------------------------------------------- config


def _config(tmp_path, **kw) -> BuildConfig:
    values = dict(teacher="t", student_tokenizer="s", sources="chat.jsonl", output=str(tmp_path / "out"))
    values.update(kw)
    return BuildConfig(**values)


def test_config_pipeline_defaults_and_validation(tmp_path):
    shared = _config(tmp_path).resolve(teacher_model_type="wedlm")
    assert (shared.pipeline, shared.teacher_max_length, shared.temperatures) == ("shared", 768, [1.0, 2.0])
    assert shared.teacher_tokenizer == "t"
    cross = _config(tmp_path).resolve(teacher_model_type="llada2_moe")
    assert (cross.pipeline, cross.teacher_max_length, cross.temperatures) == ("cross", 1024, [1.0])
    assert _config(tmp_path, passes="compdemo+plain").resolve(teacher_model_type="wedlm").passes == ["plain", "compdemo"]
    with pytest.raises(BuildConfigError, match="max_length=100"):
        _config(tmp_path, max_length=100).resolve(teacher_model_type="wedlm")
    with pytest.raises(BuildConfigError, match="temperatures"):
        _config(tmp_path, temperatures=[2.0, 1.0]).resolve(teacher_model_type="wedlm")
    with pytest.raises(BuildConfigError, match="model_type 'bert'"):
        _config(tmp_path).resolve(teacher_model_type="bert")
    with pytest.raises(BuildConfigError, match="teacher"):
        BuildConfig(student_tokenizer="s", sources="x", output="o").resolve(teacher_model_type="wedlm")


def test_changed_content_setting_is_refused_and_runtime_setting_is_not(tmp_path):
    config = _config(tmp_path).resolve(teacher_model_type="wedlm")
    check_or_store_config(config, CacheDirectory(tmp_path / "out"))
    stored = json.loads((tmp_path / "out" / "build_config.json").read_text())
    assert stored["seed"] == 0
    check_or_store_config(_config(tmp_path, batch_tokens=99, device="cpu").resolve(teacher_model_type="wedlm"),
                          CacheDirectory(tmp_path / "out"))
    changed = _config(tmp_path, seed=5, k=16).resolve(teacher_model_type="wedlm")
    with pytest.raises(BuildConfigError) as error:
        check_or_store_config(changed, CacheDirectory(tmp_path / "out"))
    message = str(error.value)
    assert "seed: output directory was built with 0, this run has 5" in message
    assert "k: output directory was built with 64, this run has 16" in message
    assert "batch_tokens" not in message


# ------------------------------------------------------------------------------------------------- CLI


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_build_arguments(parser)
    return parser.parse_args(argv)


def test_cli_flags_override_yaml(tmp_path):
    yaml_file = tmp_path / "build.yaml"
    yaml_file.write_text("teacher: /a\nstudent_tokenizer: /s\nsources: chat.jsonl\noutput: /o\n"
                         "pipeline: shared\nk: 32\nreplicas: 3\ntemperatures: [1.0, 2.0]\n")
    config = config_from_args(_parse(["--config", str(yaml_file), "--k", "8", "--temperatures", "1", "4,8",
                                      "--passes", "plain", "--no-progress"]))
    assert (config.k, config.replicas, config.temperatures, config.passes) == (8, 3, [1.0, 4.0, 8.0], ["plain"])
    assert config.progress is False and config.teacher == "/a"
    plain = config_from_args(_parse(["--teacher", "/b", "--data", "x.jsonl", "--student-tokenizer", "/s",
                                     "-o", "/o", "--pipeline", "cross"]))
    assert (plain.teacher, plain.sources, plain.output, plain.k, plain.progress) == ("/b", "x.jsonl", "/o", 64, True)
    assert (plain.teacher_max_length, plain.temperatures) == (1024, [1.0])  # resolved from the pipeline
    assert config_from_args(_parse(["--config", str(yaml_file), "--passes", "compdemo+plain"])).passes == [
        "plain", "compdemo"
    ]
    (tmp_path / "bad.yaml").write_text("teacher: /a\nbogus_key: 1\n")
    with pytest.raises(BuildConfigError, match="bogus_key"):
        config_from_args(_parse(["--config", str(tmp_path / "bad.yaml")]))


def test_cli_reports_every_build_problem_at_once(tmp_path):
    with pytest.raises(BuildConfigError) as error:
        config_from_args(_parse(["--teacher", "/a", "--pipeline", "cross", "--k", "many", "--max-length", "100",
                                 "--passes", "plain,final", "--eps", "2"]))
    problems = error.value.problems
    assert "--k: expected an integer, got 'many'" in problems
    assert "--passes: 'final' is not one of plain, compdemo" in problems
    assert "max_length=100: must be a positive multiple of block_size=32" in problems
    assert "eps=2.0: must lie in (0, 1)" in problems
    # student_tokenizer and output; sources defaults to the paper's mixture
    assert sum("is required" in line for line in problems) == 2
    assert len(problems) == 6


def test_tide_cache_parser_has_build(tmp_path):
    from stages.cli import build_parser

    args = build_parser().parse_args(["build", "--teacher", "/t", "--student_tokenizer", "/s", "--sources", "x",
                                      "--output", "/o", "--pipeline", "shared", "--rows_per_shard", "8"])
    assert args.command == "build" and callable(args.func)
    assert config_from_args(args).rows_per_shard == 8


def test_format_commands_do_not_import_the_build_options():
    """The build options import torch (dtype choices); ``tide-cache inspect|validate`` parse without them."""
    code = ("import sys; from stages.cli import build_parser; "
            "build_parser(build_options=False).parse_args(['validate', 'x']); "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
    code = "import sys; from stages.cli import build_parser; build_parser(); sys.exit(0 if 'torch' in sys.modules else 1)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0  # the check can fail


def test_fail_after_hook_raises_after_count():
    hooks = fail_after_hook(2)
    hooks.after_shard(0)
    with pytest.raises(InjectedFailure, match="after shard 3"):
        hooks.after_shard(3)


# ------------------------------------------------------------------------------------------------- passes


def _request(unit, length, kind=PLAIN):
    ids = np.zeros(length, dtype=np.int64)
    return TeacherRequest(unit, kind, ids, ids, np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64))


def test_pack_batches_sorts_by_length_and_respects_budgets():
    lengths = [10, 50, 20, 45, 5, 48]
    requests = [_request(i, n) for i, n in enumerate(lengths)]
    batches = pack_batches(requests, batch_tokens=100, batch_rows=None)
    assert [[r.length for r in b] for b in batches] == [[50, 48], [45, 20], [10, 5]]
    for batch in batches:
        assert len(batch) * max(r.length for r in batch) <= 100
    rows_capped = pack_batches(requests, batch_tokens=10_000, batch_rows=4)
    assert [len(b) for b in rows_capped] == [4, 2]
    doubled = pack_batches(requests, batch_tokens=100, batch_rows=None, cost_factor=2)
    # 2 copies per token: 50 alone fills the budget; 20 and 10 share one (2 rows × 20 × 2 = 80)
    assert [[r.length for r in b] for b in doubled] == [[50], [48], [45], [20, 10], [5]]
    assert sorted(id(r) for b in batches for r in b) == sorted(id(r) for r in requests)


def test_items_of_pass_splits_masked_items_by_group():
    masked = np.array([True, True, False, True, True])
    groups = np.array([0, 1, 1, 1, 0], dtype=np.uint8)
    assert items_of_pass(PLAIN, masked, groups).tolist() == [0, 1, 3, 4]
    assert items_of_pass(COMPDEMO_1, masked, groups).tolist() == [1, 3]  # masks group B
    assert items_of_pass(COMPDEMO_2, masked, groups).tolist() == [0, 4]  # masks group A


def test_expand_ranges_and_chunk_sums():
    positions, labels = _expand_ranges(np.array([2, 7]), np.array([5, 9]), np.array([4, 1]))
    assert positions.tolist() == [2, 3, 4, 7, 8] and labels.tolist() == [4, 4, 4, 1, 1]
    sums = chunk_sums(np.array([-1.0, -2.0, -0.5, -3.0, -1.5]), labels, 6)
    assert sums[4] == pytest.approx(-3.5) and sums[1] == pytest.approx(-4.5)
    assert np.isnan(sums[[0, 2, 3, 5]]).all()
