"""configs/: the paper's builds and training variants, and the rule that no setting is written twice.

The rule: a setting every variant of a stage shares is the dataclass default (for the build's
pipeline-dependent ones, ``PIPELINE_DEFAULTS``); a variant file holds only what makes the variant, so no
value in it may equal what the code would use without it, and no setting may have one value in every file
of a directory (it would be a shared default written several times). The paper scripts are thin wrappers:
they pass the file to ``--config`` and nothing else.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from stages.cache_build.cli import add_build_arguments
from stages.cache_build.cli import config_from_args as build_config_from_args
from stages.cache_build.config import PIPELINE_DEFAULTS, TEACHER_PIPELINES, BuildConfig
from stages.options import field_defaults, options_from_file, read_options_file
from stages.train.cli import config_from_args as train_config_from_args
from stages.train.config import TrainConfig
from tide.losses.registry import parse_mode, required_targets

REPO = Path(__file__).resolve().parents[1]
# the file names say the teacher; the teacher's config.json model_type decides the pipeline
TEACHER_MODEL_TYPES = {"llada2": "llada2_moe", "wedlm": "wedlm"}
# the paper's files (configs/ may hold others, e.g. the quickstart's, which are not paper variants)
BUILD_CONFIGS = [REPO / "configs" / "cache" / f"{teacher}.yaml" for teacher in TEACHER_MODEL_TYPES]
TRAIN_CONFIGS = sorted(p for teacher in TEACHER_MODEL_TYPES for p in (REPO / "configs" / "train" / teacher).glob("*.yaml"))
PIPELINE_TARGETS = {"cross": "chunk", "shared": "vocab"}  # what each pipeline's cache holds
PATHS = {"teacher": "/t", "student_tokenizer": "/s", "sources": "builtin:synthetic:2", "output": "/o"}


def _name(path: Path) -> str:
    return str(path.relative_to(REPO))


def test_the_paper_configs_exist():
    assert all(p.is_file() for p in BUILD_CONFIGS)
    names = {(p.parent.name, p.stem) for p in TRAIN_CONFIGS}
    for variant in ("tide_cross", "calm", "tidal_calm", "tidal_calm_compdemo", "bd3lm"):
        assert ("llada2", variant) in names
    for variant in ("tide_shared", "kl", "tidal", "reverse_kl", "bd3lm"):
        assert ("wedlm", variant) in names


@pytest.mark.parametrize("path", BUILD_CONFIGS, ids=_name)
def test_build_config_parses_validates_and_repeats_no_default(path):
    config = dataclasses.replace(options_from_file(BuildConfig, path), **PATHS)
    resolved = config.resolve(teacher_model_type=TEACHER_MODEL_TYPES[path.stem])
    assert resolved.pipeline == TEACHER_PIPELINES[TEACHER_MODEL_TYPES[path.stem]]
    defaults = {**field_defaults(BuildConfig), **PIPELINE_DEFAULTS[resolved.pipeline]}
    for key, value in read_options_file(BuildConfig, path).items():
        assert value != defaults[key], f"{_name(path)}: {key}: {value!r} is the default; remove it"


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=_name)
def test_train_config_parses_validates_and_repeats_no_default(path):
    config = dataclasses.replace(options_from_file(TrainConfig, path), cache="/c", student="/s", output="/o")
    config.validate()
    pipeline = TEACHER_PIPELINES[TEACHER_MODEL_TYPES[path.parent.name]]
    assert required_targets(parse_mode(config.mode)) in ("none", PIPELINE_TARGETS[pipeline])
    assert path.read_text().startswith("# "), "the first line describes the variant (the scripts list it)"
    defaults = field_defaults(TrainConfig)
    for key, value in read_options_file(TrainConfig, path).items():
        assert value != defaults[key], f"{_name(path)}: {key}: {value!r} is the default; remove it"


def test_variants_differ_and_no_setting_is_shared_by_every_file_of_a_directory():
    groups = {"configs/cache": BUILD_CONFIGS}
    for path in TRAIN_CONFIGS:
        groups.setdefault(_name(path.parent), []).append(path)
    for directory, paths in groups.items():
        cls = BuildConfig if directory == "configs/cache" else TrainConfig
        contents = {p.stem: read_options_file(cls, p) for p in paths}
        assert len(contents) >= 2
        values = list(contents.values())
        for key, value in values[0].items():
            assert not all(v.get(key, object()) == value for v in values), (
                f"{directory}: every file sets {key}: {value!r}; make it the default instead"
            )
        as_sets = [frozenset((k, repr(v)) for k, v in c.items()) for c in values]
        assert len(set(as_sets)) == len(as_sets), f"{directory}: two variants are the same"


def test_the_example_rule_fails_on_a_repeated_default(tmp_path):
    """The check above compares typed values: "5e-5" (a string to PyYAML) must still count as the default."""
    path = tmp_path / "calm.yaml"
    path.write_text("mode: calm\nlr: 5e-5\n")
    repeated = [k for k, v in read_options_file(TrainConfig, path).items() if v == field_defaults(TrainConfig)[k]]
    assert repeated == ["lr"]


# ----------------------------------------------------------------------------------------------- scripts


def _script(name: str, *args: str, gpus: str = "0") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": "echo", "NUM_GPUS": gpus}
    return subprocess.run(["bash", str(REPO / "scripts" / name), *args], capture_output=True, text=True, env=env,
                          timeout=60)


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=_name)
def test_distill_script_passes_the_variant_file_and_the_flags(path):
    result = _script(f"distill_{path.parent.name}.sh", "--variant", path.stem, "--cache", "/c", "--student", "/s",
                     "--output", "/o", "--max-steps", "5")
    assert result.returncode == 0, result.stderr
    argv = shlex.split(result.stdout)
    assert argv[:4] == ["-m", "stages.train.cli", "--config", f"configs/train/{path.parent.name}/{path.stem}.yaml"]
    config = train_config_from_args(argv[2:])  # the wrapper's command line parses with the real CLI
    assert config.mode == options_from_file(TrainConfig, path).mode and config.max_steps == 5


def test_distill_scripts_default_variant_and_unknown_variant():
    assert "configs/train/llada2/tide_cross.yaml" in _script("distill_llada2.sh").stdout
    assert "configs/train/wedlm/tide_shared.yaml" in _script("distill_wedlm.sh").stdout
    launched = _script("distill_wedlm.sh", "--accelerate", "ddp").stdout.split()
    assert launched[:4] == ["-m", "accelerate.commands.launch", "--config_file", "scripts/accelerate/ddp.yaml"]
    result = _script("distill_wedlm.sh", "--variant", "swapped")
    assert result.returncode == 2
    assert "unknown --variant swapped" in result.stderr and "reverse_kl" in result.stderr
    assert "tidal_calm_compdemo" in _script("distill_llada2.sh", "--help").stdout


@pytest.mark.parametrize("path", BUILD_CONFIGS, ids=_name)
def test_build_script_passes_the_pipeline_file(path):
    result = _script(f"build_cache_{path.stem}.sh", "--teacher", "/t", "--student-tokenizer", "/s",
                     "--sources", "x.jsonl", "--output", "/o")
    assert result.returncode == 0, result.stderr
    argv = shlex.split(result.stdout)
    assert argv[:5] == ["-m", "stages.cli", "build", "--config", f"configs/cache/{path.stem}.yaml"]
    parser = argparse.ArgumentParser()
    add_build_arguments(parser)  # the wrapper's command line parses with the real flags
    config = build_config_from_args(parser.parse_args(argv[3:]))
    assert config.pipeline == TEACHER_PIPELINES[TEACHER_MODEL_TYPES[path.stem]]
    launched = shlex.split(_script(f"build_cache_{path.stem}.sh", gpus="8").stdout)
    assert launched[:4] == ["-m", "accelerate.commands.launch", "--num_processes", "8"]


def test_readme_variant_table_matches_the_files():
    """The README's variant table says what each file sets and how the script picks it; both must be true."""
    rows = {line.split("|")[3].strip(" `"): line.split("|") for line in (REPO / "README.md").read_text().splitlines()
            if line.startswith("| ") and "configs/train/" in line}
    assert set(rows) == {_name(p) for p in TRAIN_CONFIGS}
    for path in TRAIN_CONFIGS:
        cells = rows[_name(path)]
        sets = cells[4].strip()
        said = {} if sets.startswith("nothing") else yaml.safe_load("\n".join(re.findall(r"`([^`]+)`", sets)))
        assert said == (yaml.safe_load(path.read_text()) or {}), _name(path)
        assert f"distill_{path.parent.name}.sh --variant {path.stem}" in cells[5], _name(path)


def test_every_paper_build_gives_each_training_epoch_fresh_noise():
    """replicas = epochs: the original drew new noise every step, so no paper epoch may replay a replica."""
    replicas = {}
    for path in BUILD_CONFIGS:
        config = dataclasses.replace(options_from_file(BuildConfig, path), **PATHS)
        resolved = config.resolve(teacher_model_type=TEACHER_MODEL_TYPES[path.stem])
        replicas[path.stem] = resolved.replicas
    assert set(replicas.values()) == {10}
    for path in TRAIN_CONFIGS:
        config = options_from_file(TrainConfig, path)
        assert config.epochs == replicas[path.parent.name] and not config.replica_cycle, _name(path)
