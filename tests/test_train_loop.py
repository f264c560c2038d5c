"""The trainer end to end on a tiny student (real 151,936-row vocabulary) and synthetic caches:
interrupted + resumed run == uninterrupted run, outputs (metrics, curve, saved student), refusals, and
that training loads no teacher or build code at run time."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from cache_schema.errors import UnknownFormatVersionError
from stages.options import OptionsError
from stages.train.cli import config_from_args, main
from stages.train.config import TrainConfig
from stages.train.loop import train
from stages.train.preflight import CacheMismatchError
from tide.models.student import load_student
from tide.testing.synthetic_cache import SyntheticCacheSpec, random_base_rows, write_synthetic_cache
from tide.testing.tiny_models import build_tiny_model
from tide.tokenizer_fingerprint import tokenizer_fingerprint

SHARED = 151_646
BLOCK = 8
SEQ = 16


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory, student_tokenizer):
    return build_tiny_model("student", tmp_path_factory.mktemp("student"), tokenizer=student_tokenizer, hidden_size=16,
                              num_layers=1)


def make_cache(path, tokenizer, *, fingerprint=None, passes=("plain", "compdemo"), temperatures=(1.0, 2.0),
               pipeline="shared", num_samples=6, **spec_overrides):
    eos, mask = tokenizer.eos_token_id, tokenizer.mask_token_id
    rows = random_base_rows(num_samples=num_samples, replicas=2, seq_len=SEQ, block_size=BLOCK, vocab_size=1000,
                            eos_token_id=eos, prompt_len=3, seed=5)
    gen = torch.Generator().manual_seed(0)
    for row in rows:
        if pipeline == "shared":
            row.target_positions = np.flatnonzero(row.masked)
            row.teacher_logits = {p: torch.randn(len(row.target_positions), SHARED, generator=gen) for p in passes}
        else:
            starts = np.arange(0, SEQ)
            row.chunk_start, row.chunk_end = starts, starts + 1
            row.chunk_in_prompt = starts < 3
            row.chunk_logprob = {p: -np.linspace(0.5, 3.0, SEQ) for p in passes}
    spec = SyntheticCacheSpec(
        pipeline=pipeline, student_fingerprint=fingerprint or tokenizer_fingerprint(tokenizer), mask_token_id=mask,
        eos_token_id=eos, block_size=BLOCK, max_length=SEQ, student_vocab_size=151_936, replicas=2,
        passes=passes, k=8 if pipeline == "shared" else None, shared_vocab_size=SHARED if pipeline == "shared" else None,
        teacher_vocab_size=151_936, temperatures=temperatures, value_dtype="float16", row_group_rows=3,
        rows_per_shard=6, **spec_overrides,
    )
    return write_synthetic_cache(path, rows, spec)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory, student_dir, student_tokenizer):
    return make_cache(tmp_path_factory.mktemp("cache"), student_tokenizer)


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory, student_tokenizer):
    """One sample, two replicas: enough for every refusal (they all happen before any step)."""
    return make_cache(tmp_path_factory.mktemp("small"), student_tokenizer, num_samples=1)


def base_config(cache_dir, student_dir, output, **overrides) -> TrainConfig:
    config = TrainConfig(
        cache=str(cache_dir), student=str(student_dir), output=str(output), mode="tidal", comp_demo=True,
        lr=1e-3, batch_size=2, grad_accum=2, max_steps=4, save_every=2, log_every=1, warmup_steps=1,
        temperature=2.0, mixed_precision="no", seed=3, keep_checkpoints=0,
    )
    return dataclasses.replace(config, **overrides)


def test_resume_matches_uninterrupted_run(tmp_path, cache_dir, student_dir):
    """4 steps straight vs 2 steps, stop, resume for 2 more: identical parameters (CPU, deterministic).
    4 steps x 2 micro-batches x 2 rows = 16 rows crosses the 12-row epoch (replica 0 → replica 1). The straight
    run reads on the training thread, the interrupted one with one DataLoader worker and, resumed, with two:
    the batches and their order do not depend on who reads them."""
    straight = train(base_config(cache_dir, student_dir, tmp_path / "a", data_workers=0))
    assert straight.steps == 4 and not straight.stopped_early
    first = train(base_config(cache_dir, student_dir, tmp_path / "b", save_every=0, data_workers=1),
                  stop_after_steps=3)
    assert first.stopped_early and first.steps == 3
    state = json.loads((tmp_path / "b" / "checkpoints" / "step-00000003" / "trainer_state.json").read_text())
    assert state["cursor"]["epoch"] == 1 and state["cursor"]["replica"] == 1
    resumed = train(base_config(cache_dir, student_dir, tmp_path / "b", save_every=0, resume=True, data_workers=2))
    assert resumed.steps == 4
    a = load_file(str(tmp_path / "a" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    start = load_student(student_dir)
    assert not torch.equal(start.get_output_embeddings().weight, a["model.embed_tokens.weight"])


def test_outputs_metrics_curve_and_saved_student(tmp_path, cache_dir, student_dir):
    out = tmp_path / "run"
    config = base_config(cache_dir, student_dir, out, mode="tidal+kl", max_steps=2, save_every=0)
    train(config)
    saved = out / "train_config.json"
    assert isinstance(yaml.safe_load(saved.read_text())["adam_eps"], str)  # "1e-08": a string to PyYAML
    # the run's own config reads back as it ran: the pipeline's defaults (here B's TIDAL weight) filled in
    assert config_from_args(["--config", str(saved)]) == config.for_pipeline("shared")
    assert config_from_args(["--config", str(saved)]).tidal_weight == "midrange"
    records = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    for key in ("loss", "loss_ce", "loss_tidal", "loss_kl", "lambda_train", "lambda_mean", "tokens_per_s", "lr"):
        assert key in records[-1], key
    assert records[0]["loss"] == pytest.approx(records[0]["loss_ce"] + records[0]["loss_tidal"] + records[0]["loss_kl"],
                                               rel=1e-5)
    assert (out / "logs" / "loss_curve.png").stat().st_size > 0
    assert any((out / "logs" / "tensorboard").iterdir())
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000002"]
    reloaded = load_student(out)
    assert reloaded.config.model_type == "a2d-qwen3"
    assert (out / "tokenizer_config.json").is_file()


def test_bf16_weights_train_without_an_fp32_master_copy(tmp_path, cache_dir, student_dir):
    """--weights-dtype bf16, the original's precision: parameters (hence optimizer states) are bf16."""
    out = tmp_path / "bf16"
    train(base_config(cache_dir, student_dir, out, max_steps=1, save_every=0, weights_dtype="bf16"))
    saved = load_file(str(out / "model.safetensors"))
    assert {tensor.dtype for tensor in saved.values()} == {torch.bfloat16}
    state = torch.load(out / "checkpoints" / "step-00000001" / "optimizer.bin", weights_only=False)
    moments = [v["exp_avg"] for v in state["state"].values()]
    assert moments and {m.dtype for m in moments} == {torch.bfloat16}


def test_pipeline_dependent_defaults():
    config = TrainConfig(cache="/c", student="/s", output="/o")
    assert (config.batch_size, config.tidal_weight) == (None, None)
    assert (config.for_pipeline("cross").batch_size, config.for_pipeline("cross").tidal_weight) == (8, "uniform")
    assert (config.for_pipeline("shared").batch_size, config.for_pipeline("shared").tidal_weight) == (10, "midrange")
    chosen = dataclasses.replace(config, batch_size=3, tidal_weight="midrange").for_pipeline("cross")
    assert (chosen.batch_size, chosen.tidal_weight) == (3, "midrange")  # given values are kept
    assert (config.warmup_ratio, config.epochs, config.calm_clamp, config.shuffle_window) == (0.1, 10, 1e-7, 0)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (dict(mode="calm"), "needs chunk targets"),
        (dict(temperature=3.0), r"temperature 3.0 is not stored in the cache \(stored: \[1.0, 2.0\]\)"),
        (dict(mode="tidal+calm"), "mixes vocabulary"),
    ],
)
def test_refuses_modes_the_cache_cannot_serve(tmp_path, small_cache, student_dir, overrides, match):
    with pytest.raises(CacheMismatchError, match=match):
        train(base_config(small_cache, student_dir, tmp_path / "x", **overrides))


def test_refuses_compdemo_without_compdemo_targets_and_vocab_mode_on_chunk_cache(tmp_path, student_dir,
                                                                                 student_tokenizer):
    plain_only = make_cache(tmp_path / "plain", student_tokenizer, passes=("plain",), num_samples=1)
    with pytest.raises(CacheMismatchError, match=r"--comp_demo asks for CompDemo targets.*\['plain'\]"):
        train(base_config(plain_only, student_dir, tmp_path / "x"))
    cross = make_cache(tmp_path / "cross", student_tokenizer, pipeline="cross", passes=("plain",), num_samples=1)
    with pytest.raises(CacheMismatchError, match="needs vocabulary .* pipeline 'cross'"):
        train(base_config(cross, student_dir, tmp_path / "y", comp_demo=False))


def test_fingerprint_check_names_both_values(small_cache):
    from cache_schema.manifest import Manifest
    from stages.train.preflight import check_student_tokenizer

    manifest = Manifest.load(small_cache)
    check_student_tokenizer(manifest, manifest.student.tokenizer_fingerprint, student="s")
    with pytest.raises(CacheMismatchError) as info:
        check_student_tokenizer(manifest, "sha256:other", student="/students/x")
    assert manifest.student.tokenizer_fingerprint in str(info.value) and "sha256:other" in str(info.value)


def test_refuses_foreign_tokenizer_fingerprint(tmp_path, small_cache, student_dir, student_tokenizer):
    import shutil

    foreign = tmp_path / "foreign"
    shutil.copytree(small_cache, foreign)
    manifest = json.loads((foreign / "manifest.json").read_text())
    manifest["student"]["tokenizer_fingerprint"] = "sha256:" + "0" * 64
    (foreign / "manifest.json").write_text(json.dumps(manifest))
    mine = tokenizer_fingerprint(student_tokenizer)
    with pytest.raises(CacheMismatchError) as info:
        train(base_config(foreign, student_dir, tmp_path / "x"))
    assert "sha256:" + "0" * 64 in str(info.value) and mine in str(info.value)


def test_refuses_unknown_format_version(tmp_path, small_cache, student_dir):
    import shutil

    copy = tmp_path / "future"
    shutil.copytree(small_cache, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UnknownFormatVersionError, match=r"format_version 99 .*supported: 1"):
        train(base_config(copy, student_dir, tmp_path / "x"))


def test_cli_yaml_config_and_overrides(tmp_path):
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("cache: /c\nstudent: /s\noutput: /o\nmode: reverse_calm\nlr: 0.001\nreplica_cycle: [1, 0]\n")
    config = config_from_args(["--config", str(yaml_file), "--lr", "0.01", "--comp-demo"])
    assert (config.mode, config.lr, config.comp_demo, config.replica_cycle) == ("reverse_calm", 0.01, True, [1, 0])
    assert config.epochs == 10 and config.tidal_axis == "both"
    yaml_file.write_text("cache: /c\nlearning_rate: 1\n")
    with pytest.raises(OptionsError, match="unknown option 'learning_rate'"):
        config_from_args(["--config", str(yaml_file)])
    assert main(["--cache", "/c", "--student", "/s", "--output", "/o", "--tidal-axis", "diagonal"]) == 2


def test_training_loads_no_teacher_build_or_fixture_code_at_run_time(student_dir):
    """The import contract (tests/test_import_contract.py) checks the static import graph; this checks what
    a fresh interpreter has loaded after importing the trainer and loading a student, lazy imports included."""
    code = (
        "import sys; import stages.train.loop, stages.train.cli, stages.train.step, stages.train.data; "
        f"stages.train.loop.load_student({str(student_dir)!r}); "
        "bad = [m for m in sys.modules if m in ('tide.models.teacher', 'tide.models.llada2_moe', "
        "'tide.models.wedlm') or m.startswith(('stages.cache_build', 'tide.testing'))]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
