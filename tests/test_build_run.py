"""End-to-end stage-one builds on tiny teachers, real tokenizers and HumanEval-derived data.

Each pipeline is built once (module fixtures); the other tests check that build against independent
expectations: noise re-derived from the generator, a fresh teacher forward per pass, decoded chunk bytes,
and byte-identical shards from a two-rank build and from an interrupted-then-resumed build.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cache_schema.codec import codec_for
from cache_schema.manifest import Manifest
from cache_schema.validate import validate_cache
from stages.cache_build.config import BuildConfig, BuildConfigError
from stages.cache_build.preparation import PreparationSettings, prepare_samples
from stages.cache_build.run import BuildHooks, finalize_build, pin_dtype, run_build
from stages.cache_build.sources import iter_sources
from tide import noise

COMMON = dict(max_length=128, teacher_max_length=160, block_size=32, replicas=2,
              rows_per_shard=3, rows_per_row_group=2, seed=7, demo_ratio=0.5, progress=False, device="cpu")
SHARED_VOCAB = 151_646


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer_dir, student_tokenizer, wedlm_tokenizer, llama3_tokenizer):
    from tide.testing.chat_data import humaneval_chat, write_chat_jsonl
    from tide.testing.tiny_models import build_tiny_model

    root = tmp_path_factory.mktemp("teachers")
    return {
        # 3 HumanEval pairs + 4 generated ones; the first HumanEval prompt is too long: skipped
        "sources": write_chat_jsonl(root / "chat.jsonl", humaneval_chat(3, 4)),
        "student": tokenizer_dir / "student",
        "wedlm": build_tiny_model("wedlm", root / "wedlm", tokenizer=wedlm_tokenizer),
        "llada2": build_tiny_model("llada2", root / "llada2", tokenizer=llama3_tokenizer),
    }


def _config(models, teacher, output, **kw) -> BuildConfig:
    values = dict(COMMON, sources=str(models["sources"]), teacher=str(models[teacher]),
                  student_tokenizer=str(models["student"]), output=str(output))
    values.update(kw)
    return BuildConfig(**values)


@pytest.fixture(scope="module")
def shared_build(models, tmp_path_factory):
    # the default packed encoding with a ragged k: the fewest ids holding half the mass, 4 to 16 of them
    config = _config(models, "wedlm", tmp_path_factory.mktemp("shared") / "cache", k=16, k_mass=0.5, k_floor=4)
    run_build(config)
    return config


@pytest.fixture(scope="module")
def cross_build(models, tmp_path_factory):
    config = _config(models, "llada2", tmp_path_factory.mktemp("cross") / "cache")
    run_build(config)
    return config


def _rows(config) -> pd.DataFrame:
    manifest = json.loads((Path(config.output) / "manifest.json").read_text())
    return pd.concat([pd.read_parquet(Path(config.output) / s["file"]) for s in manifest["shards"]], ignore_index=True)


def _shard_hashes(directory) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(directory).glob("shard-*.parquet"))}


def _prepared(config, student_tok, teacher_tok, pipeline):
    settings = PreparationSettings(pipeline=pipeline, block_size=config.block_size, max_length=config.max_length,
                                   teacher_max_length=config.teacher_max_length)
    samples = prepare_samples(iter_sources(config.sources), student_tok, teacher_tok, settings)
    return {s.sample_id: s for s in samples}


def _matrix(cells, width) -> np.ndarray:
    """A list<fixed_size_list> cell read by pandas (array of arrays) as an (n, width) array."""
    return np.array([np.asarray(c) for c in cells]).reshape(-1, width)


def _load_runner(path, block_size):
    from tide.models.teacher import TeacherRunner, load_teacher

    model = load_teacher(path, dtype=torch.float32, device="cpu")
    return model, TeacherRunner(model, regime="paper", block_size=block_size)


# ------------------------------------------------------------------------------------------------ validity


@pytest.mark.parametrize("fixture", ["shared_build", "cross_build"])
def test_build_passes_validation_and_manifest_describes_it(fixture, request):
    config = request.getfixturevalue(fixture)
    assert validate_cache(config.output) == []
    manifest = json.loads((Path(config.output) / "manifest.json").read_text())
    rows = _rows(config)
    assert len(rows) == 12 and manifest["build"]["stats"]["rows"] == 12  # 6 samples × 2 replicas
    assert [s["file"] for s in manifest["shards"]] == [f"shard-{i:05d}-of-00004.parquet" for i in range(4)]
    assert manifest["targets"]["passes"] == ["plain", "compdemo"]
    assert manifest["noise"] == {"seed": 7, "replicas": 2, "eps": 1e-3, "schedule": "linear", "demo_ratio": 0.5,
                                 "chunk_consistent": fixture == "cross_build", "generator": "splitmix64-v1"}
    stats = manifest["build"]["stats"]
    assert stats["skipped"] == {"prompt_too_long": 1} and 0.5 < stats["alignment_yield"] <= 1.0
    assert stats["bytes_per_masked_position"] == pytest.approx(stats["bytes"] / stats["masked_positions"])
    assert 0 < stats["teacher_seconds"] <= stats["build_seconds"]
    # rows come in plan order: sample-major, replicas adjacent
    assert rows["replica"].tolist() == [0, 1] * 6
    assert len(set(rows["sample_id"])) == 6 and f"{config.sources}:0" not in set(rows["sample_id"])


def test_shared_rows_positions_are_consistent(shared_build):
    rows = _rows(shared_build)
    for row in rows.itertuples():
        length, teacher_length = len(row.input_ids), len(row.teacher_input_ids)
        assert length % 32 == 0 and len(row.maskable) == length
        assert np.all(row.maskable[row.masked_positions])
        assert set(row.target_positions) <= set(row.masked_positions)
        assert np.all(np.diff(row.target_positions) > 0)
        assert np.all(row.target_teacher_positions < teacher_length)
        # aligned pairs carry the same token on both sides (shared vocabulary)
        np.testing.assert_array_equal(row.input_ids[row.target_positions],
                                      row.teacher_input_ids[row.target_teacher_positions])
        assert len(row.compdemo_group) == len(row.target_positions)


# ------------------------------------------------------------------------------------------------ targets


def test_shared_targets_equal_a_fresh_teacher_forward(shared_build, student_tokenizer, wedlm_tokenizer):
    """Every stored target against the teacher run again on the stored noise: the k of the mass policy, the top
    ids (through the id table of the build's own data), values within half a value step, log tails over the
    unstored ids and gold log-probs within float16 rounding."""
    config = shared_build.resolve()
    rows = _rows(config)
    prepared = _prepared(config, student_tokenizer, wedlm_tokenizer, "shared")
    manifest = Manifest.load(config.output)
    counts = np.zeros(SHARED_VOCAB, dtype=np.int64)
    for sample in prepared.values():
        np.add.at(counts, np.asarray(sample.input_ids)[np.asarray(sample.maskable)], 1)
    seen = np.flatnonzero(counts)
    assert manifest.targets.sparse.encoding.id_table == seen[np.lexsort((seen, -counts[seen]))].tolist()
    codec = codec_for(manifest)
    model, runner = _load_runner(config.teacher, config.block_size)
    mask_id = model.config.mask_token_id
    checked = 0
    busiest = rows["target_positions"].map(len).sort_values(kind="stable").index[-4:]
    for row in rows.loc[sorted(busiest)].itertuples():
        sample = prepared[row.sample_id]
        assert row.sample_key == sample.sample_key
        t = noise.draw_timestep(7, row.sample_key, row.replica, eps=1e-3)
        assert row.t == t
        mask = noise.draw_mask(7, row.sample_key, row.replica, sample.maskable, t)
        np.testing.assert_array_equal(row.masked_positions, np.flatnonzero(mask))
        aligned = dict(zip(sample.student_pos.tolist(), sample.teacher_pos.tolist(), strict=True))
        expected_targets = [p for p in np.flatnonzero(mask) if p in aligned]
        np.testing.assert_array_equal(row.target_positions, expected_targets)
        np.testing.assert_array_equal(row.target_teacher_positions, [aligned[p] for p in expected_targets])
        group_a = noise.draw_compdemo_split(7, row.sample_key, row.replica, row.target_positions, demo_ratio=0.5)
        np.testing.assert_array_equal(row.compdemo_group, np.where(group_a, 0, 1))

        clean = torch.tensor(row.teacher_input_ids, dtype=torch.long)[None]
        gold = torch.tensor(row.input_ids[row.target_positions], dtype=torch.long)
        passes = {
            "plain": [np.ones(len(expected_targets), dtype=bool)],
            # pass 1 masks group B (targets for B), pass 2 masks group A (targets for A)
            "compdemo": [~group_a, group_a],
        }
        for pass_name, forwards in passes.items():
            stored = codec.decode({c: np.concatenate([np.ravel(x) for x in row._asdict()[c]]) if c.endswith("tails")
                                   else np.asarray(row._asdict()[c]) for c in codec.columns(pass_name)}, pass_name)
            for items in forwards:
                if not items.any():
                    continue
                masked_teacher = torch.tensor(row.target_teacher_positions[items], dtype=torch.long)
                noised = clean.clone()
                noised[0, masked_teacher] = mask_id
                logits = runner.logits_at(noised, torch.tensor([clean.shape[1]]),
                                          torch.zeros_like(masked_teacher), masked_teacher, clean_ids=clean)
                shared = logits[:, :SHARED_VOCAB].double()
                centred = shared - shared.max(dim=1, keepdim=True).values
                probs = torch.softmax(centred, dim=1)
                order = torch.argsort(centred, dim=1, descending=True)
                reached = probs.gather(1, order).cumsum(1) >= 0.5
                k = ((~reached).sum(1) + 1).clamp(4, 16)
                for item, want_k, want_order, want_centred in zip(np.flatnonzero(items).tolist(), k.tolist(), order,
                                                                  centred, strict=True):
                    start = int(stored.starts[item])
                    assert int(stored.counts[item]) == want_k
                    ids = stored.ids[start:start + want_k]
                    np.testing.assert_array_equal(ids, want_order[:want_k].numpy())
                    np.testing.assert_allclose(stored.values[start:start + want_k], want_centred[ids].numpy(),
                                               atol=0.0625 + 1e-4)
                    unstored = torch.ones(SHARED_VOCAB, dtype=torch.bool)
                    unstored[torch.from_numpy(ids)] = False
                    for column, temperature in enumerate([1.0, 2.0]):
                        scaled = want_centred / temperature
                        tail = torch.logsumexp(scaled[unstored], 0) - torch.logsumexp(scaled, 0)
                        assert float(stored.log_tails[item, column]) == pytest.approx(float(tail), abs=2e-3,
                                                                                      rel=1e-3)
                expected_gold = torch.log_softmax(shared, dim=1).gather(1, gold[items, None]).squeeze(1)
                np.testing.assert_allclose(stored.gold_logprob[items], expected_gold.numpy(), atol=5e-3, rtol=1e-3)
                checked += int(items.sum())
    assert checked > 20


def test_cross_targets_equal_a_fresh_teacher_forward(cross_build, student_tokenizer, llama3_tokenizer):
    config = cross_build.resolve()
    rows = _rows(config)
    prepared = _prepared(config, student_tokenizer, llama3_tokenizer, "cross")
    model, _ = _load_runner(config.teacher, config.block_size)
    mask_id = model.config.mask_token_id
    checked = 0
    for row in rows.iloc[[0, 3, 6, 9, 11]].itertuples():
        sample = prepared[row.sample_id]
        t = noise.draw_timestep(7, row.sample_key, row.replica, eps=1e-3)
        token_mask = noise.draw_mask(7, row.sample_key, row.replica, sample.maskable, t)
        bounds = list(zip(row.chunk_student_start, row.chunk_student_end, strict=True))
        chunk_masked = np.array([token_mask[s:e].any() for s, e in bounds])
        np.testing.assert_array_equal(row.chunk_masked, chunk_masked)
        expanded = token_mask.copy()
        for (s, e), masked in zip(bounds, chunk_masked, strict=True):
            expanded[s:e] |= masked
        np.testing.assert_array_equal(row.masked_positions, np.flatnonzero(expanded))
        assert not (row.chunk_in_prompt & row.chunk_masked).any()  # prompt tokens are never maskable
        group_a = noise.draw_compdemo_split(7, row.sample_key, row.replica, np.arange(len(bounds)), demo_ratio=0.5)
        np.testing.assert_array_equal(row.compdemo_group, np.where(group_a, 0, 1))

        clean = torch.tensor(row.teacher_input_ids, dtype=torch.long)
        for pass_name, forwards in {"plain": [chunk_masked], "compdemo": [chunk_masked & ~group_a,
                                                                          chunk_masked & group_a]}.items():
            stored = row._asdict()[f"{pass_name}_chunk_logprob"]
            assert np.isnan(stored[~chunk_masked]).all()
            for chosen in forwards:
                if not chosen.any():
                    continue
                noised = clean.clone()
                for c in np.flatnonzero(chosen):
                    noised[row.chunk_teacher_start[c]:row.chunk_teacher_end[c]] = mask_id
                with torch.no_grad():  # LLaDA2 paper regime: x_t alone, full bidirectional attention
                    log_probs = torch.log_softmax(model(input_ids=noised[None]).logits[0].double(), dim=-1)
                token_lp = log_probs.gather(1, clean[:, None]).squeeze(1)
                for c in np.flatnonzero(chosen):
                    expected = token_lp[row.chunk_teacher_start[c]:row.chunk_teacher_end[c]].sum().item()
                    assert stored[c] == pytest.approx(expected, abs=1e-4)
                    checked += 1
    assert checked > 20


def test_cross_chunks_decode_to_identical_bytes_inside_both_sequences(cross_build, student_tokenizer,
                                                                      llama3_tokenizer):
    rows = _rows(cross_build)
    total = 0
    for row in rows.itertuples():
        for s, e, ts, te in zip(row.chunk_student_start, row.chunk_student_end, row.chunk_teacher_start,
                                row.chunk_teacher_end, strict=True):
            assert 0 <= s < e <= len(row.input_ids) and 0 <= ts < te <= len(row.teacher_input_ids)
            student_text = student_tokenizer.decode(row.input_ids[s:e].tolist())
            teacher_text = llama3_tokenizer.decode(row.teacher_input_ids[ts:te].tolist())
            assert student_text.encode("utf-8") == teacher_text.encode("utf-8")
            total += 1
    assert total > 30


# ------------------------------------------------------------------------------------------------ scale-out, resume


def test_two_rank_build_equals_one_rank_build(shared_build, tmp_path):
    config = BuildConfig(**{**shared_build.__dict__, "output": str(tmp_path / "two")})
    assert run_build(config, rank=1, world_size=2, finalize=False) is None
    assert sorted(_shard_hashes(tmp_path / "two")) == ["shard-00001-of-00004.parquet", "shard-00003-of-00004.parquet"]
    with pytest.raises(Exception, match="not built yet"):
        finalize_build(config)
    run_build(config, rank=0, world_size=2, finalize=False)
    finalize_build(config)
    assert _shard_hashes(tmp_path / "two") == _shard_hashes(shared_build.output)
    pd.testing.assert_frame_equal(_rows(config), _rows(shared_build))
    assert validate_cache(config.output) == []


class _Crash(RuntimeError):
    pass


def test_interrupted_build_resumes_to_the_uninterrupted_cache(cross_build, tmp_path):
    config = BuildConfig(**{**cross_build.__dict__, "output": str(tmp_path / "resumed")})

    def crash_after_first(shard):
        raise _Crash(f"killed after shard {shard}")

    with pytest.raises(_Crash):
        run_build(config, hooks=BuildHooks(after_shard=crash_after_first))
    out = Path(config.output)
    assert not (out / "manifest.json").exists()
    assert len(list((out / "progress").glob("shard-*.json"))) == 1
    # a corrupted complete shard and a stray temporary file are redone / removed on resume
    shard_one = out / "shard-00001-of-00004.parquet"
    if shard_one.exists():
        shard_one.write_bytes(shard_one.read_bytes()[:100])
    (out / ".shard-00002-of-00004.parquet.abc.tmp").write_bytes(b"partial")
    recorded = json.loads((out / "progress" / "shard-00000.json").read_text())
    run_build(config)
    assert _shard_hashes(out) == _shard_hashes(cross_build.output)
    assert json.loads((out / "progress" / "shard-00000.json").read_text()) == recorded  # kept, not redone
    assert not list(out.glob(".*.tmp"))
    assert validate_cache(out) == []


def test_changed_setting_against_existing_output_is_refused(shared_build, tmp_path):
    output = tmp_path / "copy"
    shutil.copytree(shared_build.output, output)
    changed = BuildConfig(**{**shared_build.__dict__, "output": str(output), "seed": 8})
    with pytest.raises(BuildConfigError, match="seed: output directory was built with 7, this run has 8"):
        run_build(changed)


def test_cli_refuses_a_changed_setting_and_resumes_a_finished_build(shared_build, tmp_path, caplog):
    from stages.cli import tide_cache_main

    output = tmp_path / "copy"
    shutil.copytree(shared_build.output, output)
    before = _shard_hashes(output)
    argv = ["build", "--teacher", shared_build.teacher, "--student-tokenizer", shared_build.student_tokenizer,
            "--sources", shared_build.sources, "--output", str(output), "--max-length", "128", "--teacher-max-length", "160",
            "--replicas", "2", "--rows-per-shard", "3", "--rows-per-row-group", "2", "--seed", "7", "--k", "16",
            "--k-mass", "0.5", "--k-floor", "4", "--device", "cpu", "--no-progress"]
    assert tide_cache_main(argv + ["--demo-ratio", "0.25"]) == 2
    assert "demo_ratio: output directory was built with 0.5, this run has 0.25" in caplog.text
    assert tide_cache_main(argv) == 0  # identical settings: every shard is complete, nothing is rebuilt
    assert _shard_hashes(output) == before and validate_cache(output) == []


def test_auto_dtype_is_recorded_as_the_dtype_it_means_here() -> None:
    """``dtype: auto`` is stored as bf16/fp32 so resuming on another device type is refused, not mixed."""
    base = BuildConfig(teacher="t", student_tokenizer="s", sources="x", output="o", dtype="auto")
    assert pin_dtype(dataclasses.replace(base, device="cpu")).dtype == "float32"
    assert pin_dtype(dataclasses.replace(base, device="cuda:1")).dtype == "bfloat16"
    assert pin_dtype(dataclasses.replace(base, dtype="float16")).dtype == "float16"
    differences = dataclasses.replace(base, dtype="bfloat16").differences(
        dataclasses.asdict(dataclasses.replace(base, dtype="float32"))
    )
    assert any("dtype" in line for line in differences)


# ------------------------------------------------------------------------------------ replicas, mixing


def test_the_replica_cost_is_logged_before_the_teacher_is_loaded(models, tmp_path, monkeypatch, caplog):
    import stages.cache_build.run as run_module

    class TeacherLoaded(Exception):
        pass

    def no_teacher(*args, **kwargs):
        raise TeacherLoaded

    monkeypatch.setattr(run_module, "ShardBuilder", no_teacher)
    with caplog.at_level(logging.INFO, logger="stages.cache_build.survey"), pytest.raises(TeacherLoaded):
        run_build(_config(models, "wedlm", tmp_path / "cache"))
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("noise replicas")]
    # 6 samples survive preparation; plain + the two CompDemo forwards per row
    assert "noise replicas: 2" in line and "6 samples x 2 = 12 rows" in line and "36 teacher forwards" in line
    assert "replicas = epochs" in line
    assert "before compression at most (a mass policy keeps up to k entries)" in line  # the default k policy


def test_two_sources_give_shards_that_mix_both_in_proportion(models, tmp_path):
    from tide.testing.chat_data import synthetic_messages, write_chat_jsonl

    conversations = synthetic_messages(12)
    first = write_chat_jsonl(tmp_path / "first.jsonl", conversations[:8])
    second = write_chat_jsonl(tmp_path / "second.jsonl", conversations[8:])
    config = _config(models, "wedlm", tmp_path / "cache", sources=f"{first}+{second}", replicas=1,
                     rows_per_shard=3, passes=["plain"], k=4)
    run_build(config)
    manifest = json.loads((Path(config.output) / "manifest.json").read_text())
    assert manifest["build"]["stats"]["samples"] == 12
    for shard in manifest["shards"]:
        ids = pd.read_parquet(Path(config.output) / shard["file"], columns=["sample_id"])["sample_id"].tolist()
        from_second = sum(i.startswith(str(second)) for i in ids)
        # 8 : 4 = 2 : 1 — every shard holds both sources, in proportion to within one row
        assert len(ids) == 3 and 0 < from_second < 3 and abs(from_second - 1) <= 1, (shard["file"], ids)
