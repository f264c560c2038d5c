"""tide-eval: settings, task selection, help text and the summary table (no model needed)."""

from __future__ import annotations

import math

import pytest

from stages.eval.cli import build_parser, config_from_args, main
from stages.eval.protocol import PAPER_TASKS, resolve_tasks
from stages.eval.runner import TaskScore, format_table, pick_score
from stages.options import OptionsError


def test_protocol_matches_design():
    by_name = {s.task: s for s in PAPER_TASKS}
    assert set(by_name) == {
        "mmlu_generative_dream", "mmlu_pro", "hellaswag_gen", "gsm8k_cot", "bbh", "minerva_math",
        "humaneval_instruct", "mbpp_instruct",
    }
    for name, setting in by_name.items():
        short = name in ("mmlu_generative_dream", "hellaswag_gen")
        assert (setting.gen_length, setting.steps) == ((3, 3) if short else (256, 256))
        assert setting.num_fewshot == (3 if name == "bbh" else 0)
        assert setting.unsafe_code == (name in ("humaneval_instruct", "mbpp_instruct"))


def test_resolve_tasks():
    assert [s.task for s in resolve_tasks("all")] == [s.task for s in PAPER_TASKS]
    picked = resolve_tasks("hellaswag_gen, my_task")
    assert (picked[0].gen_length, picked[0].steps) == (3, 3)
    assert (picked[1].task, picked[1].gen_length, picked[1].metric) == ("my_task", 256, "")
    with pytest.raises(ValueError, match="empty task name"):
        resolve_tasks("gsm8k_cot,,bbh")
    with pytest.raises(ValueError, match="--tasks is empty"):
        resolve_tasks(" ")


def test_help_documents_every_setting():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    run_help = subparsers["run"].format_help()
    for flag in ("--model", "--tasks", "--output", "--limit", "--block-size", "--remasking", "--sampling-temperature",
                 "--cfg-scale", "--seed", "--think-block", "--chat-template", "--batch-size",
                 "--confirm-run-unsafe-code", "--include-path"):
        assert flag in run_help
    for setting in PAPER_TASKS:
        assert setting.task in run_help
    gen_help = subparsers["generate"].format_help()
    for flag in ("--prompt", "--prompt-file", "--gen-length", "--steps", "--think-block"):
        assert flag in gen_help
    _, config = config_from_args(["run", "--model", "m", "--output", "o"])
    assert (config.tasks, config.block_size, config.cfg_scale, config.think_block, config.chat_template) == (
        "all", 32, 0.0, "auto", True
    )
    assert config.bootstrap_iters == 100_000  # lm-eval's default: every mean metric gets its standard error


def test_sampling_temperature_is_its_own_flag_and_problems_come_together(tmp_path):
    args, config = config_from_args(["generate", "--model", "m", "--prompt", "hi", "--sampling-temperature", "0.7"])
    assert (args.command, config.sampling_temperature, config.prompt) == ("generate", 0.7, "hi")
    _, config = config_from_args(["run", "--model", "m", "--output", "o", "--include-path", "a",
                                  "--include_path", "b", "c", "--no-chat-template"])
    assert config.include_path == ["a", "b", "c"] and config.chat_template is False
    with pytest.raises(OptionsError) as error:
        config_from_args(["generate", "--temperature", "0.7", "--steps", "x"])
    assert error.value.problems == [
        "--temperature was renamed --sampling-temperature (see --help)",
        "--steps: expected an integer, got 'x'",
        "--model is required",
        "give exactly one of --prompt and --prompt-file",
    ]
    assert main(["run", "--model", "m", "--output", "o", "--tasks", "a,,b"]) == 2


def test_table_and_average():
    scores = [TaskScore("a", "exact_match,x", 0.5), TaskScore("bb", "pass@1,y", 0.25)]
    lines = format_table(scores).splitlines()
    assert lines[0].split() == ["task", "metric", "score"]
    assert lines[2].split() == ["a", "exact_match,x", "50.00"]
    assert lines[3].split() == ["bb", "pass@1,y", "25.00"]
    assert lines[4].split() == ["average", "37.50"]


def test_pick_score_prefers_configured_metric():
    results = {"t": {"alias": "t", "exact_match,strict": 0.1, "exact_match_stderr,strict": "N/A",
                     "exact_match,flex": 0.3}}
    assert pick_score(results, "t", "exact_match,flex") == ("exact_match,flex", 0.3)
    assert pick_score(results, "t", "") == ("exact_match,strict", 0.1)
    with pytest.raises(KeyError, match="no results for task 'u'"):
        pick_score(results, "u", "")
    assert math.isclose(pick_score({"t": {"pass@1,c": 1}}, "t", "missing,metric")[1], 1.0)
