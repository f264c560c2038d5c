"""The quickstart package: inputs (data and task files), command lines accepted by the real parsers, the
held-out answers, result readers and the closing summary, the driver's output-directory safety and settings
checks, and the whole run at a small budget. (The full run is ``bash scripts/quickstart.sh``.)"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml

from stages.quickstart import commands, driver, heldout, inputs, results
from stages.quickstart import config as settings
from tide.testing.chat_data import HELD_OUT_START, letter_shift_docs


def test_letter_shift_answers_and_held_out_questions_are_new():
    train = letter_shift_docs(500)
    held = inputs.heldout_docs(64)
    for doc in train[:50] + held:
        letters = doc["question"].removeprefix("Shift each letter: ").split(" ")
        assert len(letters) == 5 and all(len(c) == 1 and c.islower() for c in letters)
        assert doc["answer"] == " ".join("a" if c == "z" else chr(ord(c) + 1) for c in letters)
    assert held == letter_shift_docs(64, start=HELD_OUT_START)
    assert not {d["question"] for d in held} & {d["question"] for d in train}


def test_eval_task_files_and_answer_filter(tmp_path):
    from lm_eval.filters.extraction import RegexFilter

    directory = inputs.write_eval_task(tmp_path / "task", 5)
    config = yaml.safe_load((directory / f"{settings.EVAL_TASK}.yaml").read_text())
    assert config["task"] == settings.EVAL_TASK
    assert config["generation_kwargs"]["max_gen_toks"] == 16 and "$" not in (directory / f"{settings.EVAL_TASK}.yaml").read_text()
    data_file = Path(config["dataset_kwargs"]["data_files"]["test"])
    assert data_file.is_absolute() and data_file.is_file()
    rows = [json.loads(line) for line in data_file.read_text().splitlines()]
    assert rows == inputs.heldout_docs(5)
    # The configured filter keeps the first five-letter answer of a response, whatever surrounds it.
    regex = config["filter_list"][0]["filter"][0]
    assert regex["function"] == "regex"
    extract = RegexFilter(regex_pattern=regex["regex_pattern"], group_select=regex["group_select"],
                          fallback=regex["fallback"])
    responses = [["k l m n o", "the answer is a b c d e.", "abc"]]
    assert list(extract.apply(responses, [{}])) == [["k l m n o", "a b c d e", "[invalid]"]]


def test_chat_data_rows(tmp_path):
    layout = settings.Layout(tmp_path)
    config = settings.QuickstartConfig(task_train=7, cache_rows=3, humaneval=2)
    counts = inputs.write_chat_data(layout, config)
    pretrain = [json.loads(line)["messages"] for line in layout.pretrain_data.read_text().splitlines()]
    cache = [json.loads(line)["messages"] for line in layout.chat_data.read_text().splitlines()]
    assert counts == {"pretrain": 9, "cache": 5} and (len(pretrain), len(cache)) == (9, 5)
    assert all([m["role"] for m in r] == ["user", "assistant"] for r in pretrain)
    assert cache == pretrain[:3] + pretrain[-2:]  # the first task chats, then the same HumanEval chats
    assert "def " in pretrain[-1][1]["content"] and pretrain[0][1]["content"] == letter_shift_docs(1)[0]["answer"]


def test_answer_spans_hold_exactly_the_answer_and_the_end_of_turn(tmp_path):
    from tide.testing.bpe_tokenizers import train_bpe_tokenizer

    docs = letter_shift_docs(200)
    texts = [d["question"] for d in docs] + [d["answer"] for d in docs]
    for kind, end in (("chatml", "<|im_end|>"), ("llama3", "<|eot_id|>")):
        tokenizer = train_bpe_tokenizer(texts, tmp_path / kind, vocab_size=600, kind=kind)
        samples = heldout.heldout_samples(tokenizer, 6, 64)
        for sample, (a, b), doc in zip(samples, heldout.answer_spans(samples), inputs.heldout_docs(6), strict=True):
            text = tokenizer.decode(sample.ids[a:b].tolist())
            assert text.startswith(doc["answer"]) and text[len(doc["answer"]):].strip() == end, (kind, text)


def test_build_and_train_commands_parse_with_the_real_clis(tmp_path):
    from stages.cache_build.cli import add_build_arguments, config_from_args
    from stages.train.cli import config_from_args as train_config

    config = settings.QuickstartConfig(output=tmp_path, steps=3, batch_size=2, replicas=2)
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
        assert build.regime == settings.TEACHER_REGIME  # the layout the teachers pre-train in
        assert build.k == 64 and build.k_policy == "mass"  # the cache defaults

    for run in settings.TRAIN_RUNS:
        argv = commands.train_command(config, layout, run)
        train = train_config(argv[1:])
        assert (train.mode, train.comp_demo, train.max_steps, train.batch_size) == (run.mode, run.comp_demo, 3, 2)
        assert train.cache == str(layout.cache(run.pipeline))
        assert train.output == str(layout.run(run))
    assert {(r.pipeline, r.role) for r in settings.TRAIN_RUNS} == {
        ("shared", "CE only"), ("cross", "native"), ("cross", "baseline"), ("shared", "native"), ("shared", "baseline")
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
    (own / "notes.txt").write_text("mine")
    driver.prepare_output(own)
    assert not any((own / name).exists() for name in ("models", "runs", "summary.json"))  # all regenerated
    assert (own / "notes.txt").read_text() == "mine"  # what no quickstart writes stays

    with pytest.raises(ValueError, match="not a directory"):
        driver.prepare_output(tmp_path / "own" / driver.MARKER)


def test_config_check_names_the_bad_setting():
    with pytest.raises(ValueError, match="--max-length"):
        settings.QuickstartConfig(max_length=100).check()
    with pytest.raises(ValueError, match="--steps"):
        settings.QuickstartConfig(steps=0).check()
    with pytest.raises(ValueError, match="--cache-rows"):
        settings.QuickstartConfig(task_train=10, cache_rows=20).check()
    with pytest.raises(ValueError, match="--vocab"):
        settings.QuickstartConfig(vocab=300).check()
    settings.QuickstartConfig().check()


def test_summary_lists_every_artifact_and_a_pandas_one_liner():
    runs = [
        results.RunSummary(name="shared-kl", pipeline="shared", mode="kl", role="baseline", student="out/runs/shared-kl",
                      steps=4, first_loss=12.5, last_loss=11.0, loss_curve="out/runs/shared-kl/logs/loss_curve.png",
                      metrics="out/runs/shared-kl/logs/metrics.jsonl", score=heldout.HeldoutScore(0.25, 0.75, 8),
                      eval_score=0.5, eval_metric="exact_match", eval_dir="out/eval/shared-kl"),
    ]
    teachers = [heldout.TeacherSummary(pipeline="shared", path="out/models/wedlm_teacher", steps=9, first_loss=7.0,
                                       last_loss=0.5, seconds=3.0, score=heldout.HeldoutScore(0.875, 0.96875, 8))]
    summary = results.Summary(
        output="out", seconds=42.0, stage_seconds={"caches": 12.0}, models={"student": "out/models/student"},
        data={"pretrain": "out/data/pretrain.jsonl", "chat": "out/data/chat.jsonl", "rows": {"pretrain": 9, "cache": 7},
              "heldout": 8, "eval_task": "out/data/eval_task"},
        teachers=teachers,
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
    assert row.split()[-6:] == ["4", "12.5000", "11.0000", "0.250", "(0.750)", "0.500"]
    row = next(line for line in text.splitlines() if line.startswith("shared teacher"))
    assert row.split()[-6:] == ["9", "7.0000", "0.5000", "0.875", "(0.969)", "-"]
    assert "caches 12 s" in text


def test_the_whole_quickstart_at_a_small_budget(tmp_path):
    """Every step through the real CLIs on a few dozen chats: teachers pre-train (their loss goes down),
    both caches hold every cache chat times the replicas, every student trains and is scored."""
    config = settings.QuickstartConfig(
        output=tmp_path / "qs", task_train=48, cache_rows=12, heldout=4, humaneval=0, eval_docs=1, vocab=600,
        max_length=128, teacher_max_length=160, teacher_steps=30, steps=2, batch_size=4, evaluate=False,
    )
    summary = driver.run_quickstart(config)
    assert json.loads((tmp_path / "qs" / "summary.json").read_text())["seconds"] == pytest.approx(summary.seconds)
    assert [t.pipeline for t in summary.teachers] == ["shared", "cross"]
    for teacher in summary.teachers:
        assert teacher.last_loss < teacher.first_loss
        assert teacher.score.questions == 4 and 0 <= teacher.score.exact <= teacher.score.token <= 1
    for facts in summary.caches.values():
        assert facts["rows"] == 12 * config.replicas
    assert [r.name for r in summary.runs] == [r.name for r in settings.TRAIN_RUNS]
    for run in summary.runs:
        assert run.steps == 2 and run.score is not None and run.score.questions == 4
        assert Path(run.student, "config.json").is_file()
