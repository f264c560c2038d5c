"""Sparse teacher targets: compression, exact reconstruction at k = V, tail bookkeeping, validation."""

from __future__ import annotations

import math

import pytest
import torch

from tide.targets import (
    SparseTargets,
    log1mexp,
    log_tail_mass,
    normalize_temperatures,
    reconstruct_log_probs,
    reconstruct_probs,
    sparse_targets,
    tail_mass,
    temperature_column,
    topk_probs,
)

TEMPS = (1.0, 2.0, 5.0, 0.5)


def _logits(n: int = 6, vocab: int = 50, seed: int = 0, scale: float = 4.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, vocab, generator=g) * scale


def test_sparse_targets_fields_and_dtypes():
    logits = _logits(vocab=60)
    gold = torch.tensor([0, 5, 39, 40, 59, 3])
    st = sparse_targets(logits, gold, k=7, shared_vocab_size=40, temperatures=TEMPS)
    assert isinstance(st, SparseTargets)
    assert st.topk_ids.dtype == torch.int32 and st.topk_ids.shape == (6, 7)
    assert st.topk_values.dtype == torch.float32 and st.topk_values.shape == (6, 7)
    assert st.log_partitions.dtype == torch.float32 and st.log_partitions.shape == (6, 4)
    assert st.gold_logprob.shape == (6,)
    assert st.temperatures == TEMPS and st.vocab_size == 40
    assert torch.all(st.topk_values[:, 0] == 0)
    assert torch.all(st.topk_values[:, :-1] >= st.topk_values[:, 1:])
    assert int(st.topk_ids.max()) < 40
    # Top-k of the slice, computed independently by sorting.
    sliced = logits[:, :40]
    ref_sorted, ref_idx = sliced.sort(dim=-1, descending=True)
    torch.testing.assert_close(st.topk_values, ref_sorted[:, :7] - ref_sorted[:, :1])
    assert torch.equal(st.topk_ids.long(), ref_idx[:, :7])
    for j, temp in enumerate(TEMPS):
        shifted = sliced - sliced.max(dim=-1, keepdim=True).values
        expected = torch.log(torch.exp(shifted / temp).sum(-1))
        torch.testing.assert_close(st.log_partitions[:, j], expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(st.log_partition_at(5.0), st.log_partitions[:, 2])


def test_gold_logprob_equals_log_softmax_and_nan_outside_slice():
    logits = _logits(vocab=60, seed=3)
    gold = torch.tensor([0, 5, 39, 40, 59, 3])
    st = sparse_targets(logits, gold, k=4, shared_vocab_size=40, temperatures=[1.0])
    direct = torch.log_softmax(logits[:, :40].double(), dim=-1)
    for i, g in enumerate(gold.tolist()):
        if g < 40:
            assert st.gold_logprob[i].item() == pytest.approx(direct[i, g].item(), abs=1e-5)
        else:
            assert math.isnan(st.gold_logprob[i].item())


@pytest.mark.parametrize("temp", TEMPS)
def test_full_k_reconstruction_equals_softmax(temp):
    logits = _logits(n=5, vocab=64, seed=1)
    st = sparse_targets(logits, torch.zeros(5, dtype=torch.long), k=64, shared_vocab_size=64, temperatures=TEMPS)
    lp = st.log_partition_at(temp)
    probs = reconstruct_probs(st.topk_ids, st.topk_values, lp, temp, 64)
    expected = torch.softmax(logits.double() / temp, dim=-1).float()
    torch.testing.assert_close(probs, expected, rtol=0, atol=1e-6)
    log_probs = reconstruct_log_probs(st.topk_ids, st.topk_values, lp, temp, 64)
    assert torch.isfinite(log_probs).all()
    torch.testing.assert_close(log_probs, torch.log_softmax(logits.double() / temp, -1).float(), rtol=0, atol=1e-5)
    assert float(tail_mass(st.topk_values, lp, temp).max()) < 1e-6


@pytest.mark.parametrize("temp", TEMPS)
def test_partial_k_tail_and_normalisation(temp):
    vocab, k = 80, 10
    logits = _logits(n=7, vocab=vocab, seed=2, scale=2.0)
    st = sparse_targets(logits, torch.zeros(7, dtype=torch.long), k=k, shared_vocab_size=vocab, temperatures=TEMPS)
    lp = st.log_partition_at(temp)
    top = topk_probs(st.topk_values, lp, temp)
    exact = torch.softmax(logits.double() / temp, dim=-1)
    torch.testing.assert_close(top.double(), exact.gather(1, st.topk_ids.long()), rtol=1e-5, atol=1e-7)
    tail = tail_mass(st.topk_values, lp, temp)
    torch.testing.assert_close(tail, 1 - top.sum(-1), rtol=0, atol=1e-6)
    torch.testing.assert_close(tail.double(), 1 - exact.gather(1, st.topk_ids.long()).sum(-1), rtol=1e-4, atol=1e-6)
    probs = reconstruct_probs(st.topk_ids, st.topk_values, lp, temp, vocab)
    torch.testing.assert_close(probs.sum(-1), torch.ones(7), rtol=0, atol=1e-6)
    outside = torch.ones(7, vocab, dtype=torch.bool).scatter_(1, st.topk_ids.long(), False)
    for i in range(7):
        row = probs[i][outside[i]]
        torch.testing.assert_close(row, torch.full_like(row, tail[i].item() / (vocab - k)))


def test_fp16_values_are_cast_to_fp32():
    logits = _logits(n=4, vocab=32, seed=4)
    st = sparse_targets(logits, torch.zeros(4, dtype=torch.long), k=32, shared_vocab_size=32, temperatures=[1.0, 2.0])
    half = st.topk_values.half()
    lp = st.log_partition_at(2.0)
    probs = reconstruct_probs(st.topk_ids, half, lp, 2.0, 32)
    assert probs.dtype == torch.float32
    expected = torch.softmax(logits / 2.0, -1)
    torch.testing.assert_close(probs, expected, rtol=0, atol=5e-3)  # fp16 storage rounding of the values
    assert topk_probs(half, lp, 2.0).dtype == torch.float32


def test_tail_of_zero_with_k_below_vocab_gives_minus_inf_not_nan():
    ids = torch.tensor([[0, 1]])
    values = torch.tensor([[0.0, -1.0]])
    lp = torch.logsumexp(values, dim=-1)  # all mass in the top-k: tail = 0
    log_probs = reconstruct_log_probs(ids, values, lp, 1.0, 5)
    assert not torch.isnan(log_probs).any()
    assert torch.isinf(log_probs[0, 2:]).all() and (log_probs[0, 2:] < 0).all()
    assert float(tail_mass(values, lp, 1.0)) == 0.0


def test_log1mexp_matches_direct_formula_and_is_stable():
    x = torch.tensor([-1e-20, -1e-6, -0.1, -0.69, -0.7, -5.0, -50.0, -200.0], dtype=torch.float64)
    expected = torch.log(-torch.expm1(x))
    torch.testing.assert_close(log1mexp(x), expected)
    x32 = torch.tensor([-1e-30, -40.0, -120.0], requires_grad=True)
    y = log1mexp(x32)
    assert torch.isfinite(y).all()
    y.sum().backward()
    assert torch.isfinite(x32.grad).all()
    assert float(log1mexp(torch.tensor(0.0))) == -math.inf


def test_log_tail_mass_small_tail_in_log_space():
    # Tail e^-8 / (1 + e^-3 + e^-8) ≈ 3e-4; the fp32 log-partition resolves tails down to ~1e-7 only.
    values = torch.tensor([[0.0, -3.0]])
    lp = torch.logsumexp(torch.tensor([[0.0, -3.0, -8.0]]), dim=-1)
    expected = -8.0 - math.log(1 + math.exp(-3.0) + math.exp(-8.0))
    assert float(log_tail_mass(values, lp, 1.0)) == pytest.approx(expected, abs=1e-3)
    assert float(tail_mass(values, lp, 1.0)) == pytest.approx(math.exp(expected), rel=1e-3)


def test_normalize_temperatures_and_lookup():
    assert normalize_temperatures([2.0, 1.0, 5.0, 2.0]) == (1.0, 2.0, 5.0)
    assert normalize_temperatures([3]) == (1.0, 3.0)
    assert temperature_column((1.0, 2.0, 5.0), 5) == 2
    with pytest.raises(ValueError, match="not stored"):
        temperature_column((1.0, 2.0), 3.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"k": 0}, "k must lie"),
        ({"k": 41}, "k must lie"),
        ({"shared_vocab_size": 61}, "shared_vocab_size"),
        ({"temperatures": [2.0, 1.0]}, "start with 1.0"),
        ({"temperatures": []}, "must not be empty"),
        ({"temperatures": [1.0, -2.0]}, "finite and positive"),
        ({"temperatures": [1.0, 2.0, 2.0]}, "must not repeat"),
        ({"temperatures": 1.0}, "sequence"),
    ],
)
def test_sparse_targets_rejects_bad_arguments(kwargs, match):
    args = {"k": 4, "shared_vocab_size": 40, "temperatures": [1.0]}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        sparse_targets(_logits(vocab=60), torch.zeros(6, dtype=torch.long), **args)


def test_sparse_targets_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"logits must be \(N, V\)"):
        sparse_targets(torch.zeros(3), torch.zeros(3, dtype=torch.long), k=1, shared_vocab_size=3, temperatures=[1.0])
    with pytest.raises(ValueError, match="gold_ids must have shape"):
        sparse_targets(_logits(), torch.zeros(5, dtype=torch.long), k=1, shared_vocab_size=10, temperatures=[1.0])
    with pytest.raises(ValueError, match="non-negative"):
        sparse_targets(_logits(), torch.full((6,), -100), k=1, shared_vocab_size=10, temperatures=[1.0])
    with pytest.raises(ValueError, match="integer"):
        sparse_targets(_logits(), torch.zeros(6), k=1, shared_vocab_size=10, temperatures=[1.0])
    bad = _logits()
    bad[0, 0] = math.inf
    with pytest.raises(ValueError, match="finite"):
        sparse_targets(bad, torch.zeros(6, dtype=torch.long), k=1, shared_vocab_size=10, temperatures=[1.0])


def test_reconstruction_rejects_bad_arguments():
    ids = torch.tensor([[0, 1]])
    values = torch.tensor([[0.0, -1.0]])
    lp = torch.tensor([0.5])
    with pytest.raises(ValueError, match="ids must lie"):
        reconstruct_probs(torch.tensor([[0, 7]]), values, lp, 1.0, 5)
    with pytest.raises(ValueError, match="k=2 must lie"):
        reconstruct_probs(ids, values, lp, 1.0, 1)
    with pytest.raises(ValueError, match="log_partition must have shape"):
        reconstruct_probs(ids, values, torch.tensor([0.5, 0.1]), 1.0, 5)
    with pytest.raises(ValueError, match="temperature must be finite and positive"):
        topk_probs(values, lp, 0.0)
    with pytest.raises(ValueError, match=r"both be \(N, k\)"):
        reconstruct_probs(ids[0], values[0], lp[0], 1.0, 5)
