"""stages/options.py: dataclass → dashed flags, YAML with typed values, priority, errors all at once, --help."""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass

import pytest
import yaml

from stages.cache_build.config import BuildConfig
from stages.options import (
    OptionsError,
    add_options,
    option,
    options_from_args,
    options_from_file,
    options_parser,
    parse_options,
    read_options_file,
)
from stages.train.cli import build_parser as train_parser
from stages.train.cli import config_from_args as train_config
from stages.train.config import MODE_REQUIRED, TrainConfig

REQUIRED = ["--cache", "/c", "--student", "/s", "--output", "/o", "--mode", "ce"]


@dataclass
class Toy:
    """A small options class covering every supported type."""

    name: str = option("x", help="a name")
    count: int = option(3, help="how many")
    rate: float = option(0.5, help="a rate")
    flag: bool = option(False, help="a switch")
    level: str = option("low", choices=("low", "high", "no"), help="a level")
    limit: int | None = option(None, help="an optional bound")
    items: list[float] = option(default_factory=lambda: [1.0], help="some numbers")


def _parse_build(argv):
    parser = argparse.ArgumentParser()
    add_options(parser, BuildConfig)
    return options_from_args(BuildConfig, parser.parse_args(argv))


# ------------------------------------------------------------------------------------------ spellings


def test_dashed_and_underscore_spellings_parse_to_the_same_config():
    dashed = train_config(REQUIRED + ["--max-steps", "7", "--batch-size", "3", "--lr-schedule", "linear",
                                      "--comp-demo", "--replica-cycle", "1", "0", "--truncate-length", "64"])
    underscored = train_config(REQUIRED + ["--max_steps", "7", "--batch_size", "3", "--lr_schedule", "linear",
                                           "--comp_demo", "--replica_cycle", "1", "0", "--truncate_length", "64"])
    assert dashed == underscored
    assert (dashed.max_steps, dashed.batch_size, dashed.lr_schedule, dashed.comp_demo) == (7, 3, "linear", True)
    assert (dashed.replica_cycle, dashed.truncate_length) == ([1, 0], 64)

    build_dashed = _parse_build(["--student-tokenizer", "/s", "--rows-per-shard", "8", "--no-progress"])
    build_underscored = _parse_build(["--student_tokenizer", "/s", "--rows_per_shard", "8", "--no_progress"])
    assert build_dashed == build_underscored
    assert (build_dashed.student_tokenizer, build_dashed.rows_per_shard, build_dashed.progress) == ("/s", 8, False)


@pytest.mark.parametrize("spelling", ["--no-comp-demo", "--no_comp_demo", "--no-comp_demo"])
def test_every_negative_boolean_spelling(tmp_path, spelling):
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("comp_demo: true\n")
    assert train_config(REQUIRED + ["--config", str(yaml_file), spelling]).comp_demo is False


def test_existing_aliases_and_no_abbreviations():
    assert _parse_build(["--data", "a.jsonl", "-o", "/out"]).sources == "a.jsonl"
    assert _parse_build(["--sources", "a.jsonl", "-o", "/out"]).output == "/out"
    with pytest.raises(SystemExit):
        train_parser().parse_args(["--max-st", "3"])  # a prefix is not a flag


def test_list_values_space_comma_and_repeated():
    config = parse_options(Toy, ["--items", "1", "2,3", "--items", "4e-1"])
    assert config.items == [1.0, 2.0, 3.0, 0.4]
    assert parse_options(Toy, ["--items"]).items == []
    assert parse_options(Toy, ["--limit", "none"]).limit is None
    assert parse_options(Toy, ["--limit", "5"]).limit == 5
    assert parse_options(Toy, ["--count", "1e3"]).count == 1000


# ------------------------------------------------------------------------------------------ files


def test_yaml_scientific_notation_and_no_are_typed(tmp_path):
    text = "lr: 5e-5\nadam_eps: 1e-8\ncomp_demo: no\nresume: off\nmixed_precision: no\nreplica_cycle: 1,0\n"
    raw = yaml.safe_load(text)
    assert raw["lr"] == "5e-5" and raw["comp_demo"] is False and raw["mixed_precision"] is False  # what PyYAML gives
    path = tmp_path / "train.yaml"
    path.write_text(text)
    config = options_from_file(TrainConfig, path)
    assert (config.lr, config.adam_eps, config.comp_demo, config.resume) == (5e-5, 1e-8, False, False)
    assert config.mixed_precision == "no" and config.replica_cycle == [1, 0]

    path = tmp_path / "build.yaml"
    path.write_text("eps: 1e-3\nprogress: no\ntemperatures: 1.0, 2.0\nmax-samples: null\nbatch_tokens: 2e4\n")
    build = options_from_file(BuildConfig, path)
    assert (build.eps, build.progress, build.temperatures) == (0.001, False, [1.0, 2.0])
    assert (build.max_samples, build.batch_tokens) == (None, 20000)


def test_saved_config_reads_back(tmp_path):
    config = dataclasses.replace(TrainConfig(cache="/c", student="/s", output="/o"), lr=5e-5, warmup_ratio=1e-4,
                                 mode="tidal", comp_demo=True, replica_cycle=[2, 0, 1])
    saved = tmp_path / "train_config.json"
    saved.write_text(json.dumps(dataclasses.asdict(config), indent=2, sort_keys=True))
    assert "5e-05" in saved.read_text()
    assert train_config(["--config", str(saved)]) == config
    assert train_config(["--config", str(saved), "--lr", "1e-4"]).lr == 1e-4


def test_priority_defaults_then_file_then_flags(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text("count: 5\nrate: 0.25\n")
    parser = options_parser(Toy)
    config = options_from_args(Toy, parser.parse_args(["--config", str(path), "--count", "9"]))
    assert (config.name, config.count, config.rate) == ("x", 9, 0.25)  # default, flag over file, file


def test_former_name_reads_from_a_file_and_is_refused_as_a_flag(tmp_path, caplog):
    path = tmp_path / "old_train_config.json"
    path.write_text(json.dumps({"cache": "/c", "max_length": 64}))
    assert options_from_file(TrainConfig, path).truncate_length == 64
    assert "max_length is the former name of truncate_length" in caplog.text
    with pytest.raises(OptionsError, match=r"^--max-length was renamed --truncate-length"):
        train_config(REQUIRED + ["--max-length", "64"])
    path.write_text("max_length: 64\ntruncate_length: 32\n")
    with pytest.raises(OptionsError, match="truncate_length is given twice"):
        read_options_file(TrainConfig, path)


# ------------------------------------------------------------------------------------------ errors


def test_every_problem_is_reported_at_once(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("max_step: 1\nepochs: many\nmode: no\ntidal-axis: diagonal\nlambda0: 2\n")
    with pytest.raises(OptionsError) as error:
        train_config(["--config", str(path), "--cache", "/c", "--batch-size", "2.5", "--lr", "0"])
    where = f"--config {path}"
    assert error.value.problems == [
        f"{where}: unknown option 'max_step' (did you mean max_steps?)",
        f"{where}: epochs: expected an integer, got 'many'",
        f"{where}: mode: expected text, got the boolean false (quote it in YAML)",
        f"{where}: tidal_axis: 'diagonal' is not one of both, training_only, timestep_only",
        "--batch-size: expected an integer, got '2.5'",
        "--student is required",
        "--output is required",
        MODE_REQUIRED,
        "--lr=0.0 must be > 0",
        "--lambda0=2.0 must be in [0, 1]",
    ]
    assert str(error.value).splitlines()[0] == "10 problems with the options:"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "file not found"),
        ("- a\n- b\n", "expected a mapping of option names to values, got list"),
        ("a: [1,\n", "not valid YAML"),
        ("count: [1, 2]\n", "count: expected an integer, got list [1, 2]"),
        ("items: {a: 1}\n", "items: expected a list, got a mapping"),
        ("flag: maybe\n", "flag: expected a boolean"),
        ("count: null\n", "count: expected an integer, got null"),
    ],
)
def test_file_problems_name_the_file_and_the_option(tmp_path, text, message):
    path = tmp_path / "toy.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(OptionsError) as error:
        options_from_file(Toy, path)
    assert len(error.value.problems) == 1
    assert error.value.problems[0].startswith(f"--config {path}: ") and message in error.value.problems[0]


def test_boolean_given_to_a_text_option_takes_the_matching_choice(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text("level: no\n")
    assert options_from_file(Toy, path).level == "no"
    path.write_text("name: yes\n")
    with pytest.raises(OptionsError, match="name: expected text, got the boolean true"):
        options_from_file(Toy, path)


def test_unsupported_field_type_is_refused_when_the_parser_is_made():
    @dataclass
    class Bad:
        table: dict = option(default_factory=dict, help="not an option type")

    with pytest.raises(TypeError, match="option table: unsupported type"):
        options_parser(Bad)


# ------------------------------------------------------------------------------------------ help


def test_help_shows_each_fields_help_and_default_and_hides_underscore_aliases():
    text = " ".join(train_parser().format_help().split())  # argparse wraps lines; compare with single spaces
    assert "--warmup-ratio X warm-up as a share of all optimizer steps (default: 0.1)" in text
    assert "--lr X peak learning rate (AdamW) (default: 5e-05)" in text
    assert "--comp-demo, --no-comp-demo use the CompDemo teacher targets" in text
    assert "--tidal-axis {both,training_only,timestep_only} TIDAL interpolation axis (default: both)" in text
    assert "--replica-cycle [R ...]" in text and "(default: epoch mod R)" in text
    assert "--max_steps" not in text and "--no-comp_demo" not in text and "--max-length" not in text
    build = argparse.ArgumentParser()
    add_options(build, BuildConfig)
    text = " ".join(build.format_help().split())
    assert "--teacher-max-length N teacher sequence length (default: 1024 for cross; 768 for shared)" in text
    assert "--sources SOURCES, --data SOURCES" in text and "--output OUTPUT, -o OUTPUT" in text
