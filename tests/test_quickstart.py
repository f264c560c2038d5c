"""Fast pieces of the quickstart package: inputs (data and task files), command lines accepted by the real
parsers, result readers and the closing summary, the driver's output-directory safety and settings checks.
(The full run is ``bash scripts/quickstart.sh``.)"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml

from stages.quickstart import commands, driver, inputs, results
from stages.quickstart import config as settings
from tide.testing.chat_data import arithmetic_docs


def test_eval_task_files_and_last_number_filter(tmp_path):
    from lm_eval.filters.extraction import RegexFilter

    directory = inputs.write_eval_task(tmp_path / "task", 5)
    config = yaml.safe_load((directory / f"{settings.EVAL_TASK}.yaml").read_text())
    assert config["task"] == settings.EVAL_TASK
    assert config["generation_kwargs"]["max_gen_toks"] == 32 and "$" not in (directory / f"{settings.EVAL_TASK}.yaml").read_text()
    data_file = Path(config["dataset_kwargs"]["data_files"]["test"])
    assert data_file.is_absolute() and data_file.is_file()
    rows = [json.loads(line) for line in data_file.read_text().splitlines()]
    assert rows == arithmetic_docs(5)
    # The configured filter keeps the last number of a response, whatever comes before it.
    regex = config["filter_list"][0]["filter"][0]
    assert regex["function"] == "regex"
    extract = RegexFilter(regex_pattern=regex["regex_pattern"], group_select=regex["group_select"],
                          fallback=regex["fallback"])
    responses = [["12 + 30 = 42.", "the sum is -7", "no digits here"]]
    assert list(extract.apply(responses, [{}])) == [["42", "-7", "[invalid]"]]


def test_chat_data_rows(tmp_path):
    path = tmp_path / "chat.jsonl"
    count = inputs.write_chat_data(path, humaneval=2, synthetic=3)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert count == len(rows) == 5
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in rows)
    assert "def " in rows[0]["messages"][1]["content"]  # HumanEval solutions first


def test_build_and_train_commands_parse_with_the_real_clis(tmp_path):
    from stages.cache_build.cli import add_build_arguments, config_from_args
    from stages.train.cli import config_from_args as train_config

    config = settings.QuickstartConfig(output=tmp_path, k=32, steps=3, batch_size=2, replicas=2)
    layout = settings.Layout(tmp_path)

    parser = argparse.ArgumentParser()
    add_build_arguments(parser)
    for pipeline in ("cross", "shared"):
        argv = commands.build_command(config, layout, pipeline)
        assert Path(argv[0]).name == "tide-cache" and argv[1] == "build"
        build = config_from_args(parser.parse_args(argv[2:]))
        assert build.pipeline == pipeline
        assert build.output == str(layout.cache(pipeline))
        assert build.teacher == str(layout.teacher(pipeline))
        assert build.replicas == 2 and build.passes == ["plain", "compdemo"]
        assert build.k == (32 if pipeline == "shared" else 64)  # k only given to the shared build

    for run in settings.TRAIN_RUNS:
        argv = commands.train_command(config, layout, run)
        train = train_config(argv[1:])
        assert (train.mode, train.comp_demo, train.max_steps, train.batch_size) == (run.mode, run.comp_demo, 3, 2)
        assert train.cache == str(layout.cache(run.pipeline))
        assert train.output == str(layout.run(run))
    assert {(r.pipeline, r.role) for r in settings.TRAIN_RUNS} == {
        ("cross", "native"), ("cross", "baseline"), ("shared", "native"), ("shared", "baseline")
    }


def test_eval_command_parses_with_the_real_cli(tmp_path):
    from stages.eval.cli import config_from_args

    layout = settings.Layout(tmp_path)
    run = settings.TRAIN_RUNS[0]
    argv = commands.eval_command(settings.QuickstartConfig(eval_docs=3), layout, run)
    args, config = config_from_args(argv[1:])
    assert (args.command, config.tasks, config.limit, config.model) == ("run", settings.EVAL_TASK, 3.0, str(layout.run(run)))
    assert config.include_path == [str(layout.eval_task_dir)]


def test_read_losses_and_eval_score(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join(json.dumps(r) for r in [
        {"step": 1, "loss": 3.5, "lr": 0.1}, {"step": 2, "lr": 0.1}, {"step": 3, "loss": 2.25},
    ]) + "\n")
    assert results.read_losses(metrics) == (3, 3.5, 2.25)
    with pytest.raises(FileNotFoundError, match="metrics"):
        results.read_losses(tmp_path / "missing.jsonl")

    (tmp_path / "summary.json").write_text(json.dumps({
        "tasks": [{"task": "other", "metric": "acc", "score": 0.9},
                  {"task": settings.EVAL_TASK, "metric": "exact_match,last-number", "score": 0.25}],
        "average": 0.575,
    }))
    assert results.read_eval_score(tmp_path) == ("exact_match,last-number", 0.25)
    (tmp_path / "summary.json").write_text(json.dumps({"tasks": [], "average": None}))
    with pytest.raises(KeyError, match=settings.EVAL_TASK):
        results.read_eval_score(tmp_path)


def test_prepare_output_refuses_foreign_directories_and_clears_its_own(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep")
    with pytest.raises(ValueError, match="no quickstart wrote"):
        driver.prepare_output(foreign)
    assert (foreign / "precious.txt").read_text() == "keep"

    own = tmp_path / "own"
    driver.prepare_output(own)
    (own / "models" / "student").mkdir(parents=True)
    (own / "runs" / "old").mkdir(parents=True)
    (own / "summary.json").write_text("{}")
    driver.prepare_output(own)
    assert (own / "models" / "student").is_dir()  # models are reused
    assert not (own / "runs").exists() and not (own / "summary.json").exists()

    with pytest.raises(ValueError, match="not a directory"):
        driver.prepare_output(tmp_path / "own" / driver.MARKER)


def test_config_check_names_the_bad_setting():
    with pytest.raises(ValueError, match="--max-length"):
        settings.QuickstartConfig(max_length=100).check()
    with pytest.raises(ValueError, match="--steps"):
        settings.QuickstartConfig(steps=0).check()
    settings.QuickstartConfig().check()


def test_summary_lists_every_artifact_and_a_pandas_one_liner():
    runs = [
        results.RunSummary(name="shared-kl", pipeline="shared", mode="kl", role="baseline", student="out/runs/shared-kl",
                      steps=4, first_loss=12.5, last_loss=11.0, loss_curve="out/runs/shared-kl/logs/loss_curve.png",
                      metrics="out/runs/shared-kl/logs/metrics.jsonl", eval_score=0.5, eval_metric="exact_match",
                      eval_dir="out/eval/shared-kl"),
    ]
    summary = results.Summary(
        output="out", seconds=42.0, models={"student": "out/models/student"},
        data={"chat": "out/data/chat.jsonl", "rows": 7, "eval_task": "out/data/eval_task"},
        caches={"shared": {"path": "out/caches/shared", "rows": 10, "target_items": 99, "bytes": 12345,
                           "passes": ["plain", "compdemo"], "first_shard": "out/caches/shared/shard-00000.parquet"}},
        runs=runs, shard_example="out/caches/shared/shard-00000.parquet",
    )
    text = results.format_summary(summary)
    for expected in ("out/caches/shared", "out/runs/shared-kl/logs/loss_curve.png", "out/eval/shared-kl/summary.json",
                     "out/models/student", "12,345 bytes"):
        assert expected in text
    one_liner = next(line for line in text.splitlines() if "pd.read_parquet" in line)
    assert "out/caches/shared/shard-00000.parquet" in one_liner
    row = next(line for line in text.splitlines() if line.startswith("shared-kl"))
    assert row.split()[-4:] == ["4", "12.5000", "11.0000", "0.500"]
