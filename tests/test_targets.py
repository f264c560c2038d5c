"""Sparse teacher targets: compression, k policies, log tails over the unstored ids, the teacher at T, the tail
reconstructions, exactness at k = V, validation."""

from __future__ import annotations

import math

import pytest
import torch

from tide.targets import (
    KPolicy,
    SparseTargets,
    TailReconstruction,
    log1mexp,
    normalize_temperatures,
    off_stored_log_mass,
    reconstruct_log_probs,
    sparse_targets,
    temperature_column,
)

TEMPS = (1.0, 2.0, 5.0, 0.5)


def _logits(n: int = 6, vocab: int = 50, seed: int = 0, scale: float = 4.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, vocab, generator=g) * scale


def _zeros(n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.long)


def test_sparse_targets_fields_and_dtypes():
    logits = _logits(vocab=60)
    gold = torch.tensor([0, 5, 39, 40, 59, 3])
    st = sparse_targets(logits, gold, k=7, shared_vocab_size=40, temperatures=TEMPS)
    assert isinstance(st, SparseTargets)
    assert st.topk_ids.dtype == torch.int32 and st.topk_ids.shape == (6, 7)
    assert st.topk_values.dtype == torch.float32 and st.topk_values.shape == (6, 7)
    assert st.log_tails.dtype == torch.float32 and st.log_tails.shape == (6, 4)
    assert torch.equal(st.counts, torch.full((6,), 7, dtype=torch.int32))
    assert st.gold_logprob.shape == (6,) and st.temperatures == TEMPS
    assert torch.all(st.topk_values[:, 0] == 0)
    assert torch.all(st.topk_values[:, :-1] >= st.topk_values[:, 1:])
    # Top-k of the slice, computed independently by sorting.
    sliced = logits[:, :40]
    ref_sorted, ref_idx = sliced.sort(dim=-1, descending=True)
    torch.testing.assert_close(st.topk_values, ref_sorted[:, :7] - ref_sorted[:, :1])
    assert torch.equal(st.topk_ids.long(), ref_idx[:, :7])
    # The log tail is log of the softmax mass of the ids below the top 7, at every temperature.
    for j, temp in enumerate(TEMPS):
        probs = torch.softmax(sliced.double() / temp, dim=-1)
        expected = torch.log(probs.gather(1, ref_idx[:, 7:]).sum(-1))
        torch.testing.assert_close(st.log_tails[:, j].double(), expected, rtol=1e-5, atol=1e-6)


def test_log_tail_of_a_confident_position_does_not_underflow():
    """A tail of e^-60 ≈ 1e-26 is below what 1 − Σ p can resolve in fp32 (it rounds to 0 there); the stored
    log tail is the direct log-sum-exp over the unstored ids."""
    logits = torch.tensor([[0.0, -60.0, -61.0, -62.0]])
    st = sparse_targets(logits, _zeros(1), k=1, shared_vocab_size=4, temperatures=[1.0])
    expected = math.log(math.exp(-60.0) + math.exp(-61.0) + math.exp(-62.0))
    assert float(st.log_tails[0, 0]) == pytest.approx(expected, abs=1e-5)


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


def test_mass_policy_keeps_the_fewest_ids_reaching_the_mass_within_floor_and_ceiling():
    logits = _logits(n=40, vocab=60, seed=5, scale=6.0)
    policy = KPolicy(kind="mass", ceiling=12, mass=0.8, temperature=2.0, floor=3)
    st = sparse_targets(logits, _zeros(40), k=12, shared_vocab_size=60, temperatures=[1.0, 2.0], policy=policy)
    probs = torch.softmax(logits.double() / 2.0, dim=-1).sort(dim=-1, descending=True).values
    cumulative = probs.cumsum(-1)
    for i in range(40):
        smallest = int((cumulative[i] < 0.8).sum()) + 1  # direct: first prefix reaching 0.8
        assert int(st.counts[i]) == min(max(smallest, 3), 12)
    counts = st.counts.long()
    assert len(set(counts.tolist())) > 2  # ragged
    valid = st.valid()
    assert torch.equal(valid.sum(1), counts)
    assert torch.isneginf(st.topk_values[~valid]).all()
    assert torch.equal(st.topk_ids[~valid].long(), st.topk_ids[:, :1].expand_as(st.topk_ids)[~valid].long())
    # The tail excludes exactly the stored ids.
    full = torch.softmax(logits.double(), dim=-1)
    stored = torch.zeros_like(full).scatter(1, st.topk_ids.long(), 1.0) > 0
    torch.testing.assert_close(st.log_tails[:, 0].double(), torch.log((full * ~stored).sum(-1)), rtol=1e-5, atol=1e-6)


def test_teacher_at_temperature_is_exact_on_the_stored_ids():
    logits = _logits(n=5, vocab=30, seed=6, scale=2.0)
    policy = KPolicy(kind="mass", ceiling=9, mass=0.7, temperature=1.0, floor=2)
    st = sparse_targets(logits, _zeros(5), k=9, shared_vocab_size=30, temperatures=TEMPS, policy=policy)
    for temp in TEMPS:
        view = st.at(temp)
        exact = torch.log_softmax(logits.double() / temp, dim=-1).gather(1, view.ids)
        torch.testing.assert_close(view.log_p[view.valid].double(), exact[view.valid], rtol=1e-5, atol=1e-5)
        assert torch.isneginf(view.log_p[~view.valid]).all()
    with pytest.raises(ValueError, match="not stored"):
        st.at(3.0)


@pytest.mark.parametrize("kind", ["student", "uniform", "mixture"])
@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_every_reconstruction_is_the_teacher_at_full_k(kind, temp):
    logits = _logits(n=5, vocab=64, seed=1)
    st = sparse_targets(logits, _zeros(5), k=64, shared_vocab_size=64, temperatures=TEMPS)
    assert torch.isneginf(st.log_tails).all()
    student = torch.log_softmax(_logits(n=5, vocab=64, seed=9) / temp, dim=-1)
    log_probs = reconstruct_log_probs(st.at(temp), 64, TailReconstruction(kind), student)
    torch.testing.assert_close(log_probs, torch.log_softmax(logits.double() / temp, -1).float(), rtol=0, atol=1e-5)


def test_partial_reconstructions_match_their_definitions():
    vocab, k, temp = 40, 6, 2.0
    logits = _logits(n=4, vocab=vocab, seed=2, scale=2.0)
    st = sparse_targets(logits, _zeros(4), k=k, shared_vocab_size=vocab, temperatures=TEMPS)
    view = st.at(temp)
    q = torch.softmax(_logits(n=4, vocab=vocab, seed=8).double() / temp, dim=-1)
    exact = torch.softmax(logits.double() / temp, dim=-1)
    off = torch.ones(4, vocab, dtype=torch.bool).scatter_(1, view.ids, False)
    tau = (exact * off).sum(-1, keepdim=True)
    q_off = (q * off).sum(-1, keepdim=True)
    expected = {"student": tau * q / q_off, "uniform": tau / (vocab - k) * torch.ones_like(q),
                "mixture": tau * (0.75 * q / q_off + 0.25 / (vocab - k))}
    for kind, shape in expected.items():
        probs = reconstruct_log_probs(view, vocab, TailReconstruction(kind, 0.25), q.log().float()).exp().double()
        torch.testing.assert_close(probs[off], shape[off], rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(probs[~off], exact[~off], rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(probs.sum(-1), torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-5)


def test_off_stored_mass_is_a_log_sum_exp_over_the_unstored_ids():
    log_q = torch.log_softmax(torch.tensor([[30.0, 0.0, -1.0, 5.0]]), dim=-1)  # off mass ≈ 1e-13
    st = SparseTargets(topk_ids=torch.tensor([[0, 3]]), topk_values=torch.tensor([[0.0, -1.0]]),
                       counts=torch.tensor([2]), log_tails=torch.tensor([[-3.0]]), temperatures=(1.0,))
    expected = math.log(math.exp(0.0) + math.exp(-1.0)) - math.log(
        math.exp(30.0) + 1 + math.exp(-1.0) + math.exp(5.0))
    assert float(off_stored_log_mass(log_q, st.at(1.0))[0]) == pytest.approx(expected, abs=1e-4)
    every = SparseTargets(topk_ids=torch.tensor([[0, 1, 2, 3]]), topk_values=torch.zeros(1, 4),
                          counts=torch.tensor([4]), log_tails=torch.tensor([[-math.inf]]), temperatures=(1.0,))
    assert float(off_stored_log_mass(log_q, every.at(1.0))[0]) == -math.inf


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
    assert float(log1mexp(torch.tensor(-math.inf))) == 0.0


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
        ({"policy": KPolicy.fixed(5)}, "must equal the k policy's ceiling 5"),
    ],
)
def test_sparse_targets_rejects_bad_arguments(kwargs, match):
    args = {"k": 4, "shared_vocab_size": 40, "temperatures": [1.0]}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        sparse_targets(_logits(vocab=60), _zeros(6), **args)


def test_sparse_targets_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"logits must be \(N, V\)"):
        sparse_targets(torch.zeros(3), _zeros(3), k=1, shared_vocab_size=3, temperatures=[1.0])
    with pytest.raises(ValueError, match="gold_ids must have shape"):
        sparse_targets(_logits(), _zeros(5), k=1, shared_vocab_size=10, temperatures=[1.0])
    with pytest.raises(ValueError, match="non-negative"):
        sparse_targets(_logits(), torch.full((6,), -100), k=1, shared_vocab_size=10, temperatures=[1.0])
    with pytest.raises(ValueError, match="integer"):
        sparse_targets(_logits(), torch.zeros(6), k=1, shared_vocab_size=10, temperatures=[1.0])
    bad = _logits()
    bad[0, 0] = math.inf
    with pytest.raises(ValueError, match="finite"):
        sparse_targets(bad, _zeros(6), k=1, shared_vocab_size=10, temperatures=[1.0])


def test_policies_and_reconstructions_refuse_bad_settings():
    with pytest.raises(ValueError, match="kind must be one of"):
        KPolicy(kind="auto")
    with pytest.raises(ValueError, match=r"floor must lie in \[1, ceiling=8\]"):
        KPolicy(kind="mass", ceiling=8, mass=0.9, floor=9)
    with pytest.raises(ValueError, match=r"mass must lie in \(0, 1\]"):
        KPolicy(kind="mass", ceiling=8, mass=0.0, floor=1)
    with pytest.raises(ValueError, match="tail reconstruction must be one of"):
        TailReconstruction("flat")
    with pytest.raises(ValueError, match=r"uniform share must lie in \(0, 1\)"):
        TailReconstruction("mixture", 1.0)
    st = sparse_targets(_logits(vocab=20), _zeros(6), k=3, shared_vocab_size=20, temperatures=[1.0])
    with pytest.raises(ValueError, match="needs the student's"):
        reconstruct_log_probs(st.at(1.0), 20, TailReconstruction("student"))
    with pytest.raises(ValueError, match="counts must have shape"):
        SparseTargets(st.topk_ids, st.topk_values, st.counts[:2], st.log_tails, st.temperatures)
