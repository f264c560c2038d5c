"""The training step against direct formulas: with k = the full shared vocabulary, every vocabulary mode
equals a direct computation from the full teacher logits on the same noise (loss and parameter gradients,
fp32), and every chunk mode equals a direct computation from teacher and student chunk log-probs. Also:
the top-k error for k < V is measured, and a few optimiser steps of each mode reduce the loss."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from cache_schema.codec import SparseCodec
from cache_schema.reader import CacheReader
from stages.train.collate import CollateSpec, collate_rows
from stages.train.data import CacheStream, StreamConfig, columns_for
from stages.train.pipelines import CrossPipeline, SharedPipeline, train_pipeline
from stages.train.step import StudentStep
from tide.losses import LossOptions
from tide.models.a2d_qwen3 import A2DQwen3Config, A2DQwen3LMHeadModel
from tide.models.student import bd3lm_forward
from tide.objective import Objective
from tide.testing.synthetic_cache import SyntheticCacheSpec, random_base_rows, write_synthetic_cache

logger = logging.getLogger(__name__)

STUDENT_VOCAB = 96
SHARED_VOCAB = 80
TEACHER_VOCAB = 90
MASK_ID = 95
EOS_ID = 3
BLOCK = 8
SEQ_LEN = 16
PROMPT = 3
TEMPS = (1.0, 2.0, 5.0)
VOCAB_MODES = ["ce", "kl", "reverse_kl", "tidal", "tidal+kl"]
CHUNK_MODES = ["calm", "reverse_calm", "tidal_calm", "reverse_tidal_calm"]
LAMBDA0, LAMBDA_MAX = 0.1, 0.9


def tiny_student(seed: int = 0) -> A2DQwen3LMHeadModel:
    config = A2DQwen3Config(
        vocab_size=STUDENT_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, tie_word_embeddings=True,
        initializer_range=0.2,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    return A2DQwen3LMHeadModel(config).float()


# --- caches -----------------------------------------------------------------------------------------------


def shared_cache(tmp_path, k: int, *, seed: int = 0, format_version: int = 2, encoding: str = "float32"):
    """A shared-pipeline cache whose teacher is the random tensor ``teacher`` (rows, L, V_T) per pass; exact
    storage (float32 values) unless ``encoding`` says otherwise, format 2 unless ``format_version`` = 1."""
    rows = random_base_rows(num_samples=3, replicas=1, seq_len=SEQ_LEN, block_size=BLOCK,
                            vocab_size=SHARED_VOCAB, eos_token_id=EOS_ID, prompt_len=PROMPT, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    teacher = {p: 3.0 * torch.randn(len(rows), SEQ_LEN, TEACHER_VOCAB, generator=gen) for p in ("plain", "compdemo")}
    for index, row in enumerate(rows):
        masked = np.flatnonzero(row.masked)
        # An aligned-position filter drops the first masked position: targets ⊂ masked positions.
        row.target_positions = masked[1:] if len(masked) > 1 else masked
        row.teacher_logits = {p: teacher[p][index, row.target_positions] for p in teacher}
    spec = SyntheticCacheSpec(
        pipeline="shared", student_fingerprint="sha256:test", mask_token_id=MASK_ID, eos_token_id=EOS_ID,
        block_size=BLOCK, max_length=SEQ_LEN, student_vocab_size=STUDENT_VOCAB, replicas=1,
        passes=("plain", "compdemo"), k=k, shared_vocab_size=SHARED_VOCAB, teacher_vocab_size=TEACHER_VOCAB,
        temperatures=TEMPS, value_dtype="float32", encoding=encoding, format_version=format_version,
        row_group_rows=2, rows_per_shard=2,
    )
    path = write_synthetic_cache(tmp_path / f"shared-k{k}-v{format_version}-{encoding}", rows, spec)
    return path, rows, teacher


def cross_cache(tmp_path, *, seed: int = 0):
    """A cross-pipeline cache: chunks of 1–3 tokens, chunk-consistent noise, random teacher chunk log-probs."""
    rows = random_base_rows(num_samples=3, replicas=1, seq_len=SEQ_LEN, block_size=BLOCK,
                            vocab_size=SHARED_VOCAB, eos_token_id=EOS_ID, prompt_len=PROMPT, seed=seed)
    gen = np.random.default_rng(seed + 2)
    for row in rows:
        bounds = [0, PROMPT]
        while bounds[-1] < SEQ_LEN:
            bounds.append(min(bounds[-1] + int(gen.integers(1, 4)), SEQ_LEN))
        start, end = np.array(bounds[:-1]), np.array(bounds[1:])
        masked = row.masked.copy()
        for s, e in zip(start, end, strict=True):
            if masked[s:e].any():
                masked[s:e] = True
        row.masked = masked & row.maskable
        row.chunk_start, row.chunk_end = start, end
        row.chunk_in_prompt = end <= PROMPT
        row.chunk_logprob = {p: -gen.uniform(0.05, 6.0, size=len(start)) for p in ("plain", "compdemo")}
    spec = SyntheticCacheSpec(
        pipeline="cross", student_fingerprint="sha256:test", mask_token_id=MASK_ID, eos_token_id=EOS_ID,
        block_size=BLOCK, max_length=SEQ_LEN, student_vocab_size=STUDENT_VOCAB, replicas=1,
        passes=("plain", "compdemo"), teacher_vocab_size=TEACHER_VOCAB, row_group_rows=2, rows_per_shard=2,
    )
    return write_synthetic_cache(tmp_path / "cross", rows, spec), rows


def one_batch(path, targets, target_pass="plain"):
    reader = CacheReader(path)
    pipeline = None if targets is None else train_pipeline(reader.manifest)
    spec = CollateSpec(pad_token_id=EOS_ID, block_size=BLOCK, pipeline=pipeline, target_pass=target_pass)
    stream = CacheStream(reader, spec, columns_for(pipeline, target_pass),
                         StreamConfig(batch_size=reader.num_rows, shuffle=False))
    batch, _ = next(stream.batches(stream.start_cursor(), epochs=1))
    return batch


# --- direct formulas ----------------------------------------------------------------------------------------


def lambda_of(progress, t):
    g = 0.5 * (1 - math.cos(math.pi * progress))
    return (LAMBDA0 + (LAMBDA_MAX - LAMBDA0) * g) * (1 - t)


def midrange(t):
    return torch.exp(-((t - 0.5) ** 2) / (2 * 0.15**2))


def direct_ce(logits, batch):
    log_p = torch.log_softmax(logits.float(), dim=-1)
    gold = log_p.gather(-1, batch.input_ids[..., None]).squeeze(-1)
    terms = -gold / batch.t[:, None]
    return (terms * batch.masked).sum() / batch.maskable.sum()


def uniform_tail_teacher(z_t: torch.Tensor, k: int) -> torch.Tensor:
    """Format v1's reconstructed teacher (log-probs), written from its definition: the exact tempered top-k,
    the rest 1 − Σ_topk p spread uniformly over the other ids."""
    log_p = torch.log_softmax(z_t, -1)
    top = log_p.topk(k, dim=-1)
    tail = 1 - top.values.exp().sum(-1, keepdim=True)
    out = torch.log(tail / (z_t.shape[-1] - k)).expand_as(log_p).clone()
    return out.scatter(-1, top.indices, top.values)


def direct_vocab_term(mode, logits, rows_teacher, batch, temperature, progress, *, uniform_tail_k=None):
    """Full-vocabulary formulas of docs/design.md#losses at every target item (against v1's uniform-tail
    reconstruction of the teacher when ``uniform_tail_k`` is given)."""
    v = batch.vocab
    z_s = logits[v.row, v.position, :SHARED_VOCAB].float() / temperature
    z_t = rows_teacher[v.row, v.position, :SHARED_VOCAB] / temperature
    log_q, log_p = torch.log_softmax(z_s, -1), torch.log_softmax(z_t, -1)
    if uniform_tail_k is not None:
        log_p = z_t = uniform_tail_teacher(z_t, uniform_tail_k)
    t = batch.t[v.row]
    if mode == "kl":
        terms = (log_p.exp() * (log_p - log_q)).sum(-1)
    elif mode == "reverse_kl":
        terms = (log_q.exp() * (log_q - log_p)).sum(-1)
    elif mode == "tidal":
        lam = lambda_of(progress, t)[:, None]
        log_r = torch.log_softmax((1 - lam) * z_s.detach() + lam * z_t, -1)
        terms = midrange(t) * (log_r.exp() * (log_r - log_q)).sum(-1)
    else:
        raise AssertionError(mode)
    return temperature**2 * terms.mean()


def direct_chunk_term(mode, logits, batch, temperature, progress):
    c = batch.chunks
    log_p = torch.log_softmax(logits.float(), -1).gather(-1, batch.input_ids[..., None]).squeeze(-1)
    losses = []
    for i in torch.nonzero(c.active).squeeze(1).tolist():
        row, s, e = int(c.row[i]), int(c.start[i]), int(c.end[i])
        ls = log_p[row, s:e].sum()
        s_p, q = torch.exp(ls / temperature), torch.exp(c.teacher_logprob[i] / temperature)
        t = batch.t[row]
        lam = lambda_of(progress, t)
        if mode == "calm":
            term = -(q * torch.log(s_p) + (1 - q) * torch.log(1 - s_p))
        elif mode == "reverse_calm":
            term = -(s_p * torch.log(q) + (1 - s_p) * torch.log(1 - q))
        elif mode == "tidal_calm":
            m = ((1 - lam) * s_p + lam * q).detach()
            term = midrange(t) * -(m * torch.log(s_p) + (1 - m) * torch.log(1 - s_p))
        elif mode == "reverse_tidal_calm":
            m = ((1 - lam) * s_p.detach() + lam * q)
            term = midrange(t) * -(s_p * torch.log(m) + (1 - s_p) * torch.log(1 - m))
        else:
            raise AssertionError(mode)
        losses.append(term)
    return torch.stack(losses).mean()


def step_for(mode, *, temperature, chunk_size=4096, shared=SHARED_VOCAB, pipeline=None, tail="student"):
    objective = Objective(
        mode=mode, options=LossOptions(temperature=temperature, lambda0=LAMBDA0, lambda_max=LAMBDA_MAX, tail=tail),
        shared_vocab_size=shared, head_chunk_size=chunk_size,
    )
    kind = objective.target_kind
    if pipeline is None and kind != "none":
        pipeline = (SharedPipeline(codec=SparseCodec("float32", num_temperatures=len(TEMPS)), temperatures=TEMPS)
                    if kind == "vocab" else CrossPipeline())
    return StudentStep(objective, block_size=BLOCK, mask_token_id=MASK_ID, pipeline=pipeline)


def grads(model, loss):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, params, allow_unused=True)


def assert_grads_close(got, want):
    for g, w in zip(got, want, strict=True):
        if g is None or w is None:
            assert g is None and w is None or float((g if w is None else w).abs().max()) == 0
            continue
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


# --- tests -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_full(tmp_path_factory):
    return shared_cache(tmp_path_factory.mktemp("shared"), k=SHARED_VOCAB)


@pytest.fixture(scope="module")
def cross_path(tmp_path_factory):
    return cross_cache(tmp_path_factory.mktemp("cross"))[0]


@pytest.mark.parametrize(("target_pass", "chunk_size", "tail"),
                         [("plain", 4096, "student"), ("compdemo", 5, "uniform"), ("plain", 4096, "mixture")])
@pytest.mark.parametrize("mode", VOCAB_MODES)
def test_vocab_modes_equal_full_teacher_formulas(shared_full, mode, target_pass, chunk_size, tail):
    path, rows, teacher = shared_full
    batch = one_batch(path, None if mode == "ce" else "vocab", target_pass)
    model = tiny_student()
    temperature, progress = 2.0, 0.3
    out = step_for(mode, temperature=temperature, chunk_size=chunk_size, tail=tail)(model, batch, progress=progress)
    got = grads(model, out.loss)

    noised = torch.where(batch.masked, torch.full_like(batch.input_ids, MASK_ID), batch.input_ids)
    logits = bd3lm_forward(model, noised, batch.input_ids, block_size=BLOCK)
    want = direct_ce(logits, batch)
    for name in mode.split("+"):
        if name != "ce":
            want = want + direct_vocab_term(name, logits, teacher[target_pass], batch, temperature, progress)
    torch.testing.assert_close(out.loss, want, rtol=1e-5, atol=1e-6)
    assert_grads_close(got, grads(model, want))
    assert float(out.terms["ce"]) == pytest.approx(float(direct_ce(logits, batch).detach()), rel=1e-5)


@pytest.mark.parametrize("mode", ["kl", "reverse_kl", "tidal"])
def test_v1_caches_train_as_format_1_defined_them(tmp_path, mode):
    """A format-1 cache (fixed k, log-partitions) still trains: with ``--tail uniform`` every vocabulary mode
    equals the formulas on v1's uniform-tail teacher; at k = V every tail gives the full-teacher formula."""
    k, temperature, progress = 8, 2.0, 0.3
    path, _, teacher = shared_cache(tmp_path, k=k, format_version=1)
    assert CacheReader(path).manifest.format_version == 1
    batch = one_batch(path, "vocab")
    model = tiny_student()
    out = step_for(mode, temperature=temperature, tail="uniform")(model, batch, progress=progress)
    noised = torch.where(batch.masked, torch.full_like(batch.input_ids, MASK_ID), batch.input_ids)
    logits = bd3lm_forward(model, noised, batch.input_ids, block_size=BLOCK)
    want = direct_ce(logits, batch) + direct_vocab_term(mode, logits, teacher["plain"], batch, temperature, progress,
                                                        uniform_tail_k=k)
    torch.testing.assert_close(out.loss, want, rtol=1e-5, atol=1e-6)
    assert_grads_close(grads(model, out.loss), grads(model, want))
    full_path, _, _ = shared_cache(tmp_path, k=SHARED_VOCAB, format_version=1)
    full = one_batch(full_path, "vocab")
    exact = direct_ce(logits, full) + direct_vocab_term(mode, logits, teacher["plain"], full, temperature, progress)
    for tail in ("student", "uniform", "mixture"):
        got = step_for(mode, temperature=temperature, tail=tail)(model, full, progress=progress).loss
        torch.testing.assert_close(got, exact, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("target_pass", ["plain", "compdemo"])
@pytest.mark.parametrize("mode", CHUNK_MODES)
def test_chunk_modes_equal_direct_chunk_formulas(cross_path, mode, target_pass):
    batch = one_batch(cross_path, "chunk", target_pass)
    assert int(batch.chunks.active.sum()) > 0 and not bool(batch.chunks.active[batch.chunks.end <= PROMPT].any())
    model = tiny_student()
    temperature, progress = 5.0, 0.6
    out = step_for(mode, temperature=temperature, chunk_size=7)(model, batch, progress=progress)
    noised = torch.where(batch.masked, torch.full_like(batch.input_ids, MASK_ID), batch.input_ids)
    logits = bd3lm_forward(model, noised, batch.input_ids, block_size=BLOCK)
    want = direct_ce(logits, batch) + direct_chunk_term(mode, logits, batch, temperature, progress)
    torch.testing.assert_close(out.loss, want, rtol=1e-5, atol=1e-6)
    assert_grads_close(grads(model, out.loss), grads(model, want))


def test_topk_error_is_measured_for_small_k(tmp_path, shared_full):
    """k < V: the loss differs from the full-teacher value by a measured amount (logged), and stays finite;
    the default packed encoding is measured next to exact storage."""
    full_path, _, teacher = shared_full
    model = tiny_student()
    for k, encoding in ((4, "float32"), (16, "rank24-delta8")):
        path, _, _ = shared_cache(tmp_path, k=k, encoding=encoding)
        for mode in ("kl", "reverse_kl", "tidal"):
            batch = one_batch(path, "vocab")
            got = float(step_for(mode, temperature=2.0)(model, batch, progress=0.3).terms[mode])
            exact = float(step_for(mode, temperature=2.0)(model, one_batch(full_path, "vocab"), progress=0.3).terms[mode])
            logger.info("top-k error: k=%d mode=%s loss=%.6f exact=%.6f abs.err=%.3e", k, mode, got, exact,
                        abs(got - exact))
            assert math.isfinite(got)
            assert got != pytest.approx(exact, rel=1e-7)  # the truncation is visible, not silently exact


@pytest.mark.parametrize("mode", VOCAB_MODES + CHUNK_MODES)
def test_a_few_steps_reduce_the_loss(cross_path, shared_full, mode):
    if mode in CHUNK_MODES:
        batch = one_batch(cross_path, "chunk")
        temperature = 5.0
    else:
        path = shared_full[0]
        batch = one_batch(path, None if mode == "ce" else "vocab")
        temperature = 2.0
    model = tiny_student(seed=1)
    step = step_for(mode, temperature=temperature)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(4):
        out = step(model, batch, progress=0.5)
        losses.append(float(out.loss.detach()))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    assert losses[-1] < losses[0], losses


def test_collation_refuses_targets_outside_masked_positions(shared_full):
    """The item → masked-position mapping is made (and refused) once per batch, at collation."""
    path, _, _ = shared_full
    reader = CacheReader(path)
    pipeline = train_pipeline(reader.manifest)
    spec = CollateSpec(pad_token_id=EOS_ID, block_size=BLOCK, pipeline=pipeline, target_pass="plain")
    stream = CacheStream(reader, spec, columns_for(pipeline, "plain"), StreamConfig(batch_size=2, shuffle=False))
    rows = stream.rows(stream.order(0)[:2])
    collate_rows(rows, spec)  # as stored: fine
    row = dict(rows[0])
    target = int(np.asarray(row["target_positions"])[0])
    row["masked_positions"] = np.asarray([p for p in np.asarray(row["masked_positions"]) if p != target])
    with pytest.raises(ValueError, match="target positions must be masked"):
        collate_rows([row, rows[1]], spec)


def test_a_step_reads_nothing_back_from_the_device(shared_full):
    """The step's outputs stay tensors: reading the loss is the trainer's one sync per logging window."""
    path, _, _ = shared_full
    out = step_for("tidal", temperature=2.0)(tiny_student(), one_batch(path, "vocab"), progress=0.5)
    assert all(isinstance(value, torch.Tensor) and value.ndim == 0 for value in out.terms.values())
    assert isinstance(out.stats["lambda_mean"], torch.Tensor)
