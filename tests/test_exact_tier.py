"""The exact tier: teacher hidden states per target position and its LM-head rows once in the cache.

Built with ``tide-cache build --targets both|exact`` on a tiny WeDLM-shaped teacher run in bf16 (both
attention regimes), then checked against independent expectations: the codecs against torch's own bf16
rounding and the int8 bound, the full-vocabulary losses against the sparse forms at k = V, the stored hidden
states and head against the teacher, training from the cache against online distillation with the same
teacher (its own forward and LM head on the stored noise, losses from the sparse code at k = V) at a stored
and an unstored temperature, and the refusal of a missing or altered head file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cache_schema.errors import SchemaError
from cache_schema.exact_targets import INT8_LEVELS, HiddenCodec, bf16_bits, bf16_to_float32
from cache_schema.head_file import HEAD_FILE, HeadFileError
from cache_schema.manifest import Manifest
from cache_schema.reader import CacheReader
from cache_schema.validate import validate_cache
from stages.cache_build.config import BuildConfig, BuildConfigError
from stages.cache_build.run import run_build
from stages.train.collate import CollateSpec
from stages.train.data import CacheStream, StreamConfig, columns_for
from stages.train.exact_pipeline import ExactSharedPipeline, TeacherTargetsError
from stages.train.pipelines import SharedPipeline, train_pipeline
from stages.train.preflight import CacheMismatchError, plan_run
from stages.train.step import StudentStep
from tide.exact_targets import ExactTeacher, TeacherHead
from tide.losses import LossOptions
from tide.losses.full import exact_kl_loss, exact_reverse_kl_loss, exact_tidal_loss
from tide.losses.kl import kl_loss, reverse_kl_loss
from tide.losses.tidal import tidal_loss
from tide.objective import Objective
from tide.targets import TailReconstruction, sparse_targets

SHARED_VOCAB = 151_646
COMMON = dict(max_length=96, teacher_max_length=128, block_size=32, replicas=1, rows_per_shard=4,
              rows_per_row_group=2, seed=3, progress=False, device="cpu", dtype="bfloat16", k=8, k_floor=4,
              batch_rows=1)  # one sequence per teacher forward: the shapes an online forward of that row has


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer_dir, student_tokenizer, wedlm_tokenizer):
    from tide.testing.chat_data import humaneval_chat, write_chat_jsonl
    from tide.testing.tiny_models import build_tiny_model

    root = tmp_path_factory.mktemp("exact-models")
    return {
        "sources": write_chat_jsonl(root / "chat.jsonl", humaneval_chat(1, 7)),
        "student_tokenizer": tokenizer_dir / "student",
        "student": build_tiny_model("student", root / "student", tokenizer=student_tokenizer, seed=1),
        "wedlm": build_tiny_model("wedlm", root / "wedlm", tokenizer=wedlm_tokenizer),
    }


def _build(models, output: Path, **settings) -> BuildConfig:
    config = BuildConfig(**COMMON, sources=str(models["sources"]), teacher=str(models["wedlm"]),
                         student_tokenizer=str(models["student_tokenizer"]), output=str(output), **settings)
    run_build(config)
    return config


@pytest.fixture(scope="module")
def paper_cache(models, tmp_path_factory):
    """Sparse and exact (bf16) targets next to each other, the paper regime."""
    return _build(models, tmp_path_factory.mktemp("exact-paper") / "cache", targets="both", regime="paper")


@pytest.fixture(scope="module")
def native_cache(models, tmp_path_factory):
    """Exact targets alone in int8 with a per-row scale, WeDLM's native regime."""
    return _build(models, tmp_path_factory.mktemp("exact-native") / "cache", targets="exact", regime="native",
                  hidden_encoding="int8-rowscale", passes=["plain"])


def _teacher(models):
    from tide.models.teacher import load_teacher

    return load_teacher(models["wedlm"], dtype=torch.bfloat16, device="cpu")


def _rows(path: Path) -> list[dict]:
    import pandas as pd

    manifest = json.loads((path / "manifest.json").read_text())
    frame = pd.concat([pd.read_parquet(path / s["file"]) for s in manifest["shards"]], ignore_index=True)
    return frame.to_dict("records")


# --------------------------------------------------------------------------------------------------- codecs


def test_bf16_bit_patterns_round_as_torch_does():
    gen = torch.Generator().manual_seed(0)
    values = torch.cat([torch.randn(4000, generator=gen) * 10 ** torch.randint(-6, 6, (4000,), generator=gen),
                        torch.tensor([0.0, -0.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, -(1.0 + 2**-8), 3.4e38])])
    expected = values.to(torch.bfloat16)
    bits = bf16_bits(values.numpy())
    np.testing.assert_array_equal(bits, expected.view(torch.int16).numpy())  # ties to even, as torch rounds
    np.testing.assert_array_equal(bf16_to_float32(bits), expected.float().numpy())
    with pytest.raises(SchemaError, match="finite"):
        bf16_bits(np.array([[np.nan]], dtype=np.float32))


def test_int8_rowscale_stays_within_half_a_step():
    gen = np.random.default_rng(0)
    values = (gen.standard_normal((50, 64)) * gen.uniform(0.01, 30, size=(50, 1))).astype(np.float32)
    values[3] = 0.0
    values[7, 5] = 400.0  # an outlier channel widens its row's step
    codec = HiddenCodec("int8-rowscale", 64)
    stored = codec.quantise(values)
    assert stored.codes.dtype == np.int8 and np.abs(stored.codes.astype(int)).max() == INT8_LEVELS
    np.testing.assert_allclose(stored.scale, np.abs(values).max(axis=1) / 127, rtol=1e-6)
    error = np.abs(stored.values() - values)
    assert (error <= stored.scale[:, None] / 2 * (1 + 1e-5) + 1e-30).all()
    assert stored.scale[3] == 0 and not stored.values()[3].any()
    decoded = codec.decode(codec.encode(stored, "plain"), "plain")
    np.testing.assert_array_equal(decoded.codes, stored.codes)
    np.testing.assert_array_equal(decoded.scale, stored.scale)


# --------------------------------------------------------------------------------------------------- losses


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.7])
def test_exact_losses_equal_the_sparse_forms_with_every_id_stored(temperature):
    """Full-vocabulary losses from hidden states and a head against the sparse code at k = V (every tail
    reconstruction is the exact teacher there) and, for forward KL, torch's own KL divergence."""
    gen = torch.Generator().manual_seed(0)
    vocab, hidden_size, n = 50, 12, 9
    head = TeacherHead(torch.randn(vocab, hidden_size, generator=gen))
    teacher = ExactTeacher(hidden=torch.randn(n, hidden_size, generator=gen) * 2, head=head)
    logits = teacher.logits()
    sparse = sparse_targets(logits, torch.zeros(n, dtype=torch.long), k=vocab, shared_vocab_size=vocab,
                            temperatures=sorted({1.0, temperature}, key=lambda x: x != 1.0))
    t = torch.rand(n, generator=gen) * 0.98 + 0.01
    z = (torch.randn(n, vocab, generator=gen) * 3).requires_grad_()
    cases = [
        (lambda s: exact_kl_loss(s, teacher, temperature=temperature),
         lambda s, tail: kl_loss(s, sparse, temperature=temperature, tail=tail)),
        (lambda s: exact_reverse_kl_loss(s, teacher, temperature=temperature),
         lambda s, tail: reverse_kl_loss(s, sparse, temperature=temperature, tail=tail)),
        (lambda s: exact_tidal_loss(s, teacher, t, temperature=temperature, progress=0.4),
         lambda s, tail: tidal_loss(s, sparse, t, temperature=temperature, progress=0.4, tail=tail)),
    ]
    for exact_fn, sparse_fn in cases:
        loss = exact_fn(z)
        (grad,) = torch.autograd.grad(loss, z)
        for kind in ("student", "uniform", "mixture"):
            other = sparse_fn(z, TailReconstruction(kind=kind))
            (other_grad,) = torch.autograd.grad(other, z)
            torch.testing.assert_close(loss, other, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(grad, other_grad, rtol=1e-4, atol=1e-7)
    direct = F.kl_div(torch.log_softmax(z / temperature, -1), torch.log_softmax(logits / temperature, -1),
                      log_target=True, reduction="batchmean") * temperature**2
    torch.testing.assert_close(exact_kl_loss(z, teacher, temperature=temperature), direct, rtol=1e-5, atol=1e-6)


def test_int8_teacher_logits_are_the_scaled_codes_through_the_head():
    gen = torch.Generator().manual_seed(1)
    head = TeacherHead(torch.randn(20, 8, generator=gen).to(torch.bfloat16))
    codes = torch.randint(-127, 128, (5, 8), generator=gen, dtype=torch.int8)
    scale = torch.rand(5, generator=gen)
    teacher = ExactTeacher(hidden=codes, head=head, scale=scale)
    expected = (codes.float() * scale[:, None]).to(torch.bfloat16).float() @ head.weight.float().T
    torch.testing.assert_close(teacher.logits(), expected, rtol=1e-2, atol=1e-2)  # a bf16 product
    with pytest.raises(ValueError, match="per-row scale"):
        ExactTeacher(hidden=codes, head=head)


# --------------------------------------------------------------------------------------------------- the build


def test_exact_cache_holds_the_teachers_hidden_states_and_head(paper_cache, models):
    """The manifest describes the head file; the file holds the teacher's own head rows; every stored hidden
    state is the bf16 hidden state of a fresh teacher forward on the stored noise (bit for bit)."""
    from safetensors.torch import load_file

    from tide.models.teacher import TeacherRunner

    path = Path(paper_cache.output)
    assert validate_cache(path) == []
    manifest = Manifest.load(path)
    exact = manifest.targets.exact
    assert (exact.hidden_encoding, exact.hidden_size, exact.head_file, exact.head_dtype) == (
        "bfloat16", 32, HEAD_FILE, "bfloat16")
    assert manifest.targets.sparse is not None  # --targets both
    model = _teacher(models)
    head = load_file(str(path / HEAD_FILE))["weight"]
    assert torch.equal(head, model.get_output_embeddings().weight[:SHARED_VOCAB])
    runner = TeacherRunner(model, regime="paper", block_size=32)
    checked = 0
    for row in _rows(path):
        clean = torch.tensor(row["teacher_input_ids"], dtype=torch.long)[None]
        positions = np.asarray(row["target_teacher_positions"], dtype=np.int64)
        groups = np.asarray(row["compdemo_group"])
        for pass_name, forwards in (("plain", [np.ones(len(positions), bool)]), ("compdemo", [groups == 1, groups == 0])):
            stored = HiddenCodec("bfloat16", 32).unpack(np.stack(row[f"{pass_name}_hidden"])) if len(positions) else None
            for items in forwards:
                if not items.any():
                    continue
                noised = clean.clone()
                noised[0, positions[items]] = model.config.mask_token_id
                wanted = torch.from_numpy(positions[items])
                hidden = runner.hidden_at(noised, torch.tensor([clean.shape[1]]), torch.zeros_like(wanted), wanted,
                                          clean_ids=clean)
                np.testing.assert_array_equal(stored[items], hidden.view(torch.int16).numpy())
                checked += int(items.sum())
    assert checked > 12


def test_int8_cache_in_the_native_regime_decodes_within_its_bound(native_cache, models):
    from tide.models.teacher import TeacherRunner

    path = Path(native_cache.output)
    assert validate_cache(path) == []
    manifest = Manifest.load(path)
    assert manifest.targets.sparse is None and manifest.targets.exact.hidden_encoding == "int8-rowscale"
    assert manifest.teacher.regime == "native"
    model = _teacher(models)
    runner = TeacherRunner(model, regime="native", block_size=32)
    checked = 0
    for row in _rows(path):
        positions = np.asarray(row["target_teacher_positions"], dtype=np.int64)
        if not len(positions):
            continue
        clean = torch.tensor(row["teacher_input_ids"], dtype=torch.long)[None]
        noised = clean.clone()
        noised[0, positions] = model.config.mask_token_id
        wanted = torch.from_numpy(positions)
        hidden = runner.hidden_at(noised, torch.tensor([clean.shape[1]]), torch.zeros_like(wanted), wanted,
                                  clean_ids=clean).float().numpy()
        codes = HiddenCodec("int8-rowscale", 32).unpack(np.stack(row["plain_hidden"])).astype(np.float32)
        scale = np.asarray(row["plain_hidden_scale"])
        np.testing.assert_allclose(scale, np.abs(hidden).max(axis=1) / 127, rtol=1e-6)
        assert (np.abs(codes * scale[:, None] - hidden) <= scale[:, None] / 2 * (1 + 1e-5)).all()
        checked += len(positions)
    assert checked > 12


def test_exact_targets_need_the_shared_pipeline(models, tmp_path):
    config = BuildConfig(teacher=str(models["wedlm"]), student_tokenizer="s", output=str(tmp_path), targets="exact",
                         pipeline="cross")
    with pytest.raises(BuildConfigError, match="exact targets need pipeline shared"):
        config.resolve()


def test_inspect_shows_the_bytes_of_the_exact_targets(paper_cache, capsys):
    from cache_schema.cli import main

    assert main(["inspect", paper_cache.output, "--rows", "2"]) == 0
    out = capsys.readouterr().out
    assert "exact      hidden states bfloat16 × 32 per target item and pass (64 bytes raw)" in out
    assert f"vs {2 * SHARED_VOCAB} for bf16 full logits" in out
    assert "plain    hidden |h|" in out


# --------------------------------------------------------------------------------------------------- training


def _batch(path: Path, pipeline, target_pass: str):
    reader = CacheReader(path)
    spec = CollateSpec(pad_token_id=reader.manifest.student.eos_token_id, block_size=32, pipeline=pipeline,
                       target_pass=target_pass)
    stream = CacheStream(reader, spec, columns_for(pipeline, target_pass),
                         StreamConfig(batch_size=reader.num_rows, shuffle=False))
    batch, _ = next(stream.batches(stream.start_cursor(), epochs=1))
    return batch


def _online_teacher(rows: list[dict], model, regime: str, target_pass: str, temperatures) -> object:
    """The teacher run in-step on each row's stored noise (its own forward and LM head, bf16), as sparse
    targets holding every shared id: what online distillation would train against."""
    from tide.models.teacher import TeacherRunner

    runner = TeacherRunner(model, regime=regime, block_size=32)
    parts, gold = [], []
    for row in rows:
        clean = torch.tensor(row["teacher_input_ids"], dtype=torch.long)[None]
        positions = np.asarray(row["target_teacher_positions"], dtype=np.int64)
        groups = np.asarray(row["compdemo_group"])
        forwards = [np.ones(len(positions), bool)] if target_pass == "plain" else [groups == 1, groups == 0]
        logits = torch.zeros(len(positions), model.get_output_embeddings().weight.shape[0])
        for items in forwards:
            if items.any():
                noised = clean.clone()
                noised[0, positions[items]] = model.config.mask_token_id
                wanted = torch.from_numpy(positions[items])
                logits[torch.from_numpy(items)] = runner.logits_at(
                    noised, torch.tensor([clean.shape[1]]), torch.zeros_like(wanted), wanted, clean_ids=clean)
        parts.append(logits)
        gold.append(torch.as_tensor(np.asarray(row["input_ids"])[np.asarray(row["target_positions"])]))
    return sparse_targets(torch.cat(parts), torch.cat(gold).long(), k=SHARED_VOCAB, shared_vocab_size=SHARED_VOCAB,
                          temperatures=temperatures)


def _loss_and_grads(student, step: StudentStep, batch) -> tuple[float, list[torch.Tensor]]:
    student.zero_grad()
    out = step(student, batch, progress=0.3)
    out.loss.backward()
    return {name: float(value) for name, value in out.terms.items()}, [p.grad.clone() for p in student.parameters()
                                                                      if p.grad is not None]


# the plain pass in the default run (the check); CompDemo's two forwards per row with the slow tests
@pytest.mark.parametrize("target_pass", ["plain", pytest.param("compdemo", marks=pytest.mark.slow)])
def test_training_from_the_exact_cache_equals_online_distillation(paper_cache, models, target_pass):
    """Losses and parameter gradients of kl, reverse_kl and tidal at T = 1 and 2 (stored) and T = 3 (not
    stored at build time): the exact cache against the online teacher. The stored hidden states and head give
    the online bf16 teacher's logits bit for bit; what remains is fp32 rounding of sums over 151,646 ids in two
    different implementations (measured: losses within 6e-5 relative, gradients within 5e-7 in relative L2),
    so the tolerance is 1e-4 relative on each loss and 1e-5 relative L2 on the parameter gradients."""
    from tide.models.student import load_student

    path = Path(paper_cache.output)
    manifest = Manifest.load(path)
    assert manifest.targets.temperatures == [1.0, 2.0]
    pipeline = train_pipeline(manifest, path)
    assert isinstance(pipeline, ExactSharedPipeline)
    batch = _batch(path, pipeline, target_pass)
    rows = _rows(path)
    assert [float(r["t"]) for r in rows] == pytest.approx(batch.t.tolist())
    online = _online_teacher(rows, _teacher(models), "paper", target_pass, (1.0, 2.0, 3.0))
    assert online.num_positions == batch.vocab.teacher.num_positions > 6
    cached_logits = batch.vocab.teacher.logits()
    torch.testing.assert_close(cached_logits - cached_logits.max(dim=1, keepdim=True).values, _teacher_logits(online),
                               rtol=0, atol=0)  # the same bf16 products: identical logits
    online_batch = _with_teacher(batch, online)
    student = load_student(models["student"], dtype=torch.float32)
    mode = "kl+reverse_kl+tidal"  # every vocabulary mode in one step: each term and their total's gradients
    for temperature in (1.0, 2.0, 3.0):
        plan_run(manifest, mode=mode, comp_demo=target_pass == "compdemo", temperature=temperature, cache_dir=path)
        objective = Objective(mode=mode, options=LossOptions(temperature=temperature), shared_vocab_size=SHARED_VOCAB,
                              head_chunk_size=16)  # several LM-head chunks, recomputed in the backward pass
        step = StudentStep(objective, block_size=32, mask_token_id=manifest.student.mask_token_id, pipeline=pipeline)
        cached_terms, cached_grads = _loss_and_grads(student, step, batch)
        online_terms, online_grads = _loss_and_grads(student, step, online_batch)
        assert cached_terms["ce"] == online_terms["ce"]
        for name in mode.split("+"):
            assert cached_terms[name] > 0
            assert cached_terms[name] == pytest.approx(online_terms[name], rel=1e-4), (name, temperature)
        cached_flat = torch.cat([g.ravel() for g in cached_grads])
        online_flat = torch.cat([g.ravel() for g in online_grads])
        assert float((cached_flat - online_flat).norm()) <= 1e-5 * float(online_flat.norm()), temperature


def _teacher_logits(targets) -> torch.Tensor:
    """Full shared-vocabulary logits (minus the row max) back from k = V sparse targets."""
    out = torch.empty(targets.topk_ids.shape, dtype=torch.float32)
    out.scatter_(1, targets.topk_ids.long(), targets.topk_values.float())
    return out


def _with_teacher(batch, teacher):
    from dataclasses import replace

    return replace(batch, vocab=replace(batch.vocab, teacher=teacher), targets=replace(batch.targets, teacher=teacher))


# --------------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("damage", ["missing", "altered", "truncated"])
def test_a_missing_or_altered_head_file_is_refused(paper_cache, tmp_path, damage):
    path = tmp_path / "cache"
    shutil.copytree(paper_cache.output, path)
    head = path / HEAD_FILE
    if damage == "missing":
        head.unlink()
    elif damage == "altered":
        data = bytearray(head.read_bytes())
        data[-3] ^= 0x40  # one weight's bits: same size, another head
        head.write_bytes(bytes(data))
    else:
        head.write_bytes(head.read_bytes()[:-2])
    expected = {"missing": "is missing", "altered": "SHA-256", "truncated": "bytes, the manifest says"}[damage]
    manifest = Manifest.load(path)
    with pytest.raises(HeadFileError, match=expected) as caught:
        plan_run(manifest, mode="kl", comp_demo=False, temperature=None, cache_dir=path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(head))  # one line, naming the file
    problems = validate_cache(path)
    assert [p.shard for p in problems] == [HEAD_FILE] and expected in problems[0].message
    # the sparse targets of the same cache still train; they need no head
    assert isinstance(train_pipeline(manifest, path, "sparse"), SharedPipeline)


def test_the_targets_a_run_trains_on_must_be_stored(paper_cache, native_cache):
    both, exact_only = Manifest.load(paper_cache.output), Manifest.load(native_cache.output)
    with pytest.raises(TeacherTargetsError, match="stores only exact targets"):
        train_pipeline(exact_only, native_cache.output, "sparse")
    with pytest.raises(TeacherTargetsError, match="need the cache directory"):
        train_pipeline(both)
    # exact targets train at any temperature; the sparse ones only at a stored one
    assert plan_run(both, mode="kl", comp_demo=False, temperature=3.0, cache_dir=paper_cache.output).temperature == 3.0
    with pytest.raises(CacheMismatchError, match="temperature 3.0 is not stored"):
        plan_run(both, mode="kl", comp_demo=False, temperature=3.0, cache_dir=paper_cache.output,
                 teacher_targets="sparse")
