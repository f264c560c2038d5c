"""Losses against direct full-vocabulary formulas (values and gradients), schedules, registry, composition."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from tide.losses import (
    LOSSES,
    CEInputs,
    ChunkInputs,
    LossOptions,
    TidalSchedule,
    VocabInputs,
    calm_loss,
    calm_terms,
    ce_loss,
    ce_terms,
    combine_losses,
    kl_loss,
    masked_mean,
    midrange_weight,
    parse_mode,
    required_targets,
    reverse_kl_loss,
    tidal_calm_loss,
    tidal_loss,
)
from tide.targets import KPolicy, SparseTargets, TailReconstruction, sparse_targets

logger = logging.getLogger(__name__)

TEMPS = (1.0, 2.0, 5.0)
TOL = {"rtol": 1e-5, "atol": 1e-5}


def _rand(*shape: int, seed: int, scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


TAILS = ("student", "uniform", "mixture")


def _teacher(teacher_logits: torch.Tensor, k: int, policy: KPolicy | None = None) -> SparseTargets:
    n, vocab = teacher_logits.shape
    return sparse_targets(teacher_logits, torch.zeros(n, dtype=torch.long), k=k, shared_vocab_size=vocab,
                          temperatures=TEMPS, policy=policy)


def _value_and_grad(fn, logits: torch.Tensor, dtype: torch.dtype):
    x = logits.detach().to(dtype).requires_grad_(True)
    value = fn(x)
    (grad,) = torch.autograd.grad(value, x)
    return value.detach().double(), grad.double()


def _check(impl, ref, logits):
    v_impl, g_impl = _value_and_grad(impl, logits, torch.float32)
    v_ref, g_ref = _value_and_grad(ref, logits, torch.float64)
    torch.testing.assert_close(v_impl, v_ref, **TOL)
    torch.testing.assert_close(g_impl, g_ref, **TOL)
    assert g_ref.abs().max() > 1e-4  # the gradient comparison is not vacuous


# --- independent references (float64, full vocabulary, straight from docs/design.md) ----------------------------


def ref_kl(z_s, z_t, temp):
    p = torch.softmax(z_t.double() / temp, -1)
    log_q = torch.log_softmax(z_s / temp, -1)
    return temp**2 * (p * (torch.log(p) - log_q)).sum(-1).mean()


def ref_reverse_kl(z_s, z_t, temp):
    log_p = torch.log_softmax(z_t.double() / temp, -1)
    q = torch.softmax(z_s / temp, -1)
    return temp**2 * (q * (torch.log(q) - log_p)).sum(-1).mean()


def ref_lambda(progress, t, axis, decay, lambda0=0.1, lambda_max=0.9):
    g = 0.5 * (1 - math.cos(math.pi * progress)) if decay == "cosine" else progress
    lam_train = lambda0 + (lambda_max - lambda0) * g
    return {"both": lam_train * (1 - t), "training_only": lam_train + 0 * t, "timestep_only": lambda_max * (1 - t)}[axis]


def ref_tidal(z_s, z_t, t, temp, progress, axis="both", decay="cosine", weighting="midrange"):
    lam = ref_lambda(progress, t.double(), axis, decay)[:, None]
    r = torch.softmax((1 - lam) * z_s.detach() / temp + lam * z_t.double() / temp, -1)
    log_q = torch.log_softmax(z_s / temp, -1)
    kl = (r * (torch.log(r) - log_q)).sum(-1)
    w = torch.exp(-((t.double() - 0.5) ** 2) / (2 * 0.15**2)) if weighting == "midrange" else torch.ones_like(kl)
    return temp**2 * (w * kl).sum() / kl.shape[0]


# --- CE ------------------------------------------------------------------------------------------------------


def test_ce_matches_direct_formula_with_gradients():
    logits = _rand(7, 30, seed=0)
    gold = torch.tensor([0, 3, 29, 5, 5, 12, 1])
    t = torch.tensor([0.1, 0.5, 0.9, 1.0, 0.3, 0.3, 0.05])
    num_maskable = 11

    def ref(z):
        lp = torch.log_softmax(z, -1)
        return (-lp[torch.arange(7), gold] / t.to(z.dtype)).sum() / num_maskable

    _check(lambda z: ce_loss(z, gold, t, num_maskable=num_maskable), ref, logits)
    log_probs = torch.log_softmax(logits, -1)
    torch.testing.assert_close(
        ce_terms(log_probs, gold, t, from_log_probs=True), ce_terms(logits, gold, t), **TOL
    )
    torch.testing.assert_close(ce_terms(logits, gold, 0.5), ce_terms(logits, gold, torch.full((7,), 0.5)))


def test_ce_rejects_bad_inputs():
    logits = _rand(3, 5, seed=1)
    with pytest.raises(ValueError, match="gold_ids must lie"):
        ce_terms(logits, torch.tensor([0, 5, 1]), 0.5)
    with pytest.raises(ValueError, match="t must lie"):
        ce_terms(logits, torch.tensor([0, 1, 1]), torch.tensor([0.5, 0.0, 0.2]))
    with pytest.raises(ValueError, match="num_maskable"):
        ce_loss(logits, torch.tensor([0, 1, 1]), 0.5, num_maskable=2)
    with pytest.raises(ValueError, match="2-D floating"):
        ce_terms(torch.zeros(5), torch.tensor([0]), 0.5)


# --- vocabulary losses at k = V: every reconstruction is the full-vocabulary formula -------------------------


@pytest.mark.parametrize("tail", TAILS)
@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_kl_and_reverse_kl_full_k(temp, tail):
    z_s, z_t = _rand(6, 40, seed=2), _rand(6, 40, seed=3)
    st = _teacher(z_t, k=40)
    reconstruction = TailReconstruction(tail)
    _check(lambda z: kl_loss(z, st, temperature=temp, tail=reconstruction), lambda z: ref_kl(z, z_t, temp), z_s)
    _check(lambda z: reverse_kl_loss(z, st, temperature=temp, tail=reconstruction),
           lambda z: ref_reverse_kl(z, z_t, temp), z_s)


@pytest.mark.parametrize("tail", TAILS)
@pytest.mark.parametrize("axis", ["both", "training_only", "timestep_only"])
@pytest.mark.parametrize("weighting", ["midrange", "uniform"])
def test_tidal_full_k(axis, weighting, tail):
    z_s, z_t = _rand(6, 40, seed=4), _rand(6, 40, seed=5)
    t = torch.tensor([0.05, 0.3, 0.45, 0.5, 0.7, 0.99])
    st = _teacher(z_t, k=40)
    temp, progress = 2.0, 0.3
    schedule = TidalSchedule(axis=axis, weighting=weighting)
    _check(
        lambda z: tidal_loss(z, st, t, temperature=temp, progress=progress, schedule=schedule,
                             tail=TailReconstruction(tail)),
        lambda z: ref_tidal(z, z_t, t, temp, progress, axis=axis, weighting=weighting),
        z_s,
    )


def test_tidal_with_lambda_zero_is_zero_and_lambda_one_is_kl():
    z_s, z_t = _rand(4, 20, seed=6), _rand(4, 20, seed=7)
    t = torch.full((4,), 0.5)
    for st in (_teacher(z_t, k=20), _teacher(z_t, k=5)):
        zero = tidal_loss(z_s, st, t, temperature=2.0, progress=0.0,
                          schedule=TidalSchedule(lambda0=0.0, lambda_max=0.0, axis="training_only"))
        assert float(zero) == pytest.approx(0.0, abs=1e-6)
        full = tidal_loss(z_s, st, t, temperature=2.0, progress=1.0,
                          schedule=TidalSchedule(lambda_max=1.0, axis="training_only", weighting="uniform"))
        torch.testing.assert_close(full, kl_loss(z_s, st, temperature=2.0), **TOL)


# --- vocabulary losses at k < V: the same reconstructed teacher, written as a full (N, V) vector -----------------


def _reconstruction(z_s: torch.Tensor, st: SparseTargets, temp: float, tail: str, share: float = 0.1) -> torch.Tensor:
    """The reconstructed teacher (N, V), fp64, written from its definition: exact stored probabilities, τ shared
    off the stored ids like the (constant) student, uniformly, or both; the student treated as a constant."""
    q = torch.softmax(z_s.detach().double() / temp, -1)
    column = st.temperatures.index(temp)
    valid = st.valid()
    scaled = torch.where(valid, st.topk_values.double() / temp, torch.full_like(st.topk_values.double(), -math.inf))
    tau = st.log_tails[:, column].double().exp()
    stored = (1 - tau)[:, None] * torch.softmax(scaled, -1)
    off = torch.ones_like(q, dtype=torch.bool)
    for i in range(q.shape[0]):
        off[i, st.topk_ids[i, : int(st.counts[i])].long()] = False
    shaped = q * off / (q * off).sum(-1, keepdim=True)
    flat = off / off.sum(-1, keepdim=True)
    share_of = {"student": 0.0, "uniform": 1.0, "mixture": share}[tail]
    p = tau[:, None] * ((1 - share_of) * shaped + share_of * flat)
    for i in range(q.shape[0]):
        count = int(st.counts[i])
        p[i, st.topk_ids[i, :count].long()] = stored[i, :count]
    return p


def _reconstructed_refs(z_s, st, temp, t, progress, tail):
    p = _reconstruction(z_s, st, temp, tail)
    log_p = p.log()
    log_q = torch.log_softmax(z_s / temp, -1)
    q = log_q.exp()
    kl = temp**2 * (torch.where(p > 0, p * (log_p - log_q), 0)).sum(-1).mean()
    rkl = temp**2 * (q * (log_q - log_p)).sum(-1).mean()
    lam = ref_lambda(progress, t.double(), "both", "cosine")[:, None]
    r = torch.softmax((1 - lam) * z_s.detach() / temp + lam * log_p, -1)
    w = torch.exp(-((t.double() - 0.5) ** 2) / (2 * 0.15**2))
    tidal = temp**2 * (w * (r * (torch.log(r) - log_q)).sum(-1)).sum() / t.shape[0]
    return {"kl": kl, "reverse_kl": rkl, "tidal": tidal}


@pytest.mark.parametrize("tail", TAILS)
def test_ragged_k_equals_the_explicit_reconstruction(tail):
    """Every loss under every tail, ragged k from a mass policy, against the formulas on the full reconstructed
    teacher (values and gradients); the student-shaped forms' gradients are those of a constant target."""
    vocab, temp, progress = 60, 2.0, 0.4
    z_s, z_t = _rand(5, vocab, seed=8), _rand(5, vocab, seed=9)
    t = torch.tensor([0.1, 0.4, 0.5, 0.6, 0.95])
    st = _teacher(z_t, k=12, policy=KPolicy(kind="mass", ceiling=12, mass=0.6, temperature=1.0, floor=2))
    assert len(set(st.counts.tolist())) > 1
    options = LossOptions(temperature=temp, progress=progress, tail=tail)
    for name in ("kl", "reverse_kl", "tidal"):
        _check(lambda z, name=name: LOSSES[name](VocabInputs(z, st, t), options),
               lambda z, name=name: _reconstructed_refs(z, st, temp, t, progress, tail)[name], z_s)
        exact = {"kl": ref_kl, "reverse_kl": ref_reverse_kl}.get(name)
        exact_value = exact(z_s.double(), z_t, temp) if exact else ref_tidal(z_s.double(), z_t, t, temp, progress)
        approx = LOSSES[name](VocabInputs(z_s, st, t), options)
        logger.info("ragged k (mean %.1f) of V=%d, %s tail, %s: cache loss %.6f, exact %.6f", st.counts.float().mean(),
                    vocab, tail, name, float(approx), float(exact_value))


@pytest.mark.parametrize("tail", TAILS)
def test_ragged_k_gives_the_same_losses_as_each_position_alone(tail):
    """Rows of different k padded together give what each row gives with its own width (value and gradient)."""
    vocab, temp = 50, 2.0
    z_s, z_t = _rand(6, vocab, seed=20), _rand(6, vocab, seed=21)
    t = torch.tensor([0.2, 0.35, 0.5, 0.6, 0.7, 0.9])
    st = _teacher(z_t, k=10, policy=KPolicy(kind="mass", ceiling=10, mass=0.7, temperature=1.0, floor=1))
    assert len(set(st.counts.tolist())) > 2
    options = LossOptions(temperature=temp, progress=0.5, tail=tail)
    for name in ("kl", "reverse_kl", "tidal"):
        def per_row(z, name=name):
            parts = [LOSSES[name](VocabInputs(z[i:i + 1], _teacher(z_t[i:i + 1], k=int(st.counts[i])), t[i:i + 1]),
                                  options) for i in range(6)]
            return torch.stack(parts).mean()

        v_padded, g_padded = _value_and_grad(lambda z, name=name: LOSSES[name](VocabInputs(z, st, t), options), z_s,
                                             torch.float32)
        v_rows, g_rows = _value_and_grad(per_row, z_s, torch.float32)
        torch.testing.assert_close(v_padded, v_rows, **TOL)
        torch.testing.assert_close(g_padded, g_rows, **TOL)


@pytest.mark.slow
def test_partial_k_error_at_full_shared_vocabulary(caplog):
    """Measured, not asserted: sparse-target error against the exact loss at the real shared width (N = 2)."""
    vocab, temp = 151_646, 2.0
    # A peaked teacher (bulk N(0, 1.5²), a few tokens far above it) and a student close to it.
    z_t = _rand(2, vocab, seed=11, scale=1.5)
    z_t[:, 0] += 30.0
    z_t[:, 1:11] += 24.0
    z_t[:, 11:51] += 18.0
    z_s = z_t + _rand(2, vocab, seed=10, scale=1.0)
    t = torch.tensor([0.3, 0.6])
    exact = {
        "kl": float(ref_kl(z_s.double(), z_t, temp)),
        "reverse_kl": float(ref_reverse_kl(z_s.double(), z_t, temp)),
        "tidal": float(ref_tidal(z_s.double(), z_t, t, temp, 0.5)),
    }
    with caplog.at_level(logging.INFO):
        for k in (16, 256, 4096):
            st = _teacher(z_t, k=k)
            tail = float(st.log_tails[:, 1].exp().mean())
            for kind in TAILS:
                options = LossOptions(temperature=temp, progress=0.5, tail=kind)
                for name, value in exact.items():
                    approx = float(LOSSES[name](VocabInputs(z_s, st, t), options))
                    assert math.isfinite(approx)
                    logger.info("V=%d k=%d (teacher tail at T=%g: %.4f) %s tail %s: cache %.6f exact %.6f "
                                "rel error %.2e", vocab, k, temp, tail, kind, name, approx, value,
                                abs(approx - value) / abs(value))


def test_vocab_losses_survive_a_zero_tail_and_a_confident_student():
    st = SparseTargets(topk_ids=torch.tensor([[0, 1]]), topk_values=torch.tensor([[0.0, -1.0]]),
                       counts=torch.tensor([2]), log_tails=torch.tensor([[-math.inf]]), temperatures=(1.0,))
    confident = torch.tensor([[60.0, 0.0, -50.0, -50.0, -60.0, -70.0]])  # student mass off the ids ≈ 1e-48
    for z0 in (_rand(1, 6, seed=12), confident):
        z = z0.clone().requires_grad_(True)
        for tail in TAILS:
            reconstruction = TailReconstruction(tail)
            for loss in (
                kl_loss(z, st, temperature=1.0, tail=reconstruction),
                reverse_kl_loss(z, st, temperature=1.0, tail=reconstruction),
                tidal_loss(z, st, 0.5, temperature=1.0, progress=0.5, tail=reconstruction),
            ):
                (grad,) = torch.autograd.grad(loss, z)
                assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_forward_kl_stays_finite_where_the_student_is_sure_of_the_stored_ids():
    """τ = e^-60 stored exactly and a student with 1e-40 off the stored ids: forward KL's τ log(τ/Q) is finite."""
    st = sparse_targets(torch.tensor([[0.0, -60.0, -61.0]]), torch.zeros(1, dtype=torch.long), k=1,
                        shared_vocab_size=3, temperatures=[1.0])
    z = torch.tensor([[0.0, -92.0, -93.0]], requires_grad=True)
    loss = kl_loss(z, st, temperature=1.0)
    (grad,) = torch.autograd.grad(loss, z)
    expected = ref_kl(z.detach().double(), torch.tensor([[0.0, -60.0, -61.0]]), 1.0)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-4)


def test_vocab_losses_reject_bad_inputs():
    z = _rand(3, 10, seed=13)
    st = _teacher(_rand(3, 10, seed=14), k=4)
    with pytest.raises(ValueError, match="teacher ids must lie"):
        kl_loss(z[:, :5], st, temperature=1.0)
    with pytest.raises(ValueError, match="cover 3 positions, the student logits 2"):
        kl_loss(z[:2], st, temperature=1.0)
    with pytest.raises(ValueError, match="teacher must be SparseTargets"):
        kl_loss(z, st.topk_ids, temperature=1.0)
    with pytest.raises(ValueError, match="temperature must be finite and positive"):
        reverse_kl_loss(z, st, temperature=0.0)
    with pytest.raises(ValueError, match="temperature 3.0 is not stored"):
        LOSSES["kl"](VocabInputs(z, st, torch.full((3,), 0.5)), LossOptions(temperature=3.0))
    with pytest.raises(ValueError, match="tail reconstruction must be one of"):
        LossOptions(tail="flat")


# --- TIDAL schedule and weight ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "decay, progress, lam_train",
    [
        ("cosine", 0.0, 0.1),
        ("cosine", 0.5, 0.5),
        ("cosine", 1.0, 0.9),
        ("cosine", 0.25, 0.1 + 0.8 * 0.5 * (1 - math.sqrt(0.5))),
        ("linear", 0.0, 0.1),
        ("linear", 0.5, 0.5),
        ("linear", 1.0, 0.9),
        ("linear", 0.25, 0.3),
    ],
)
def test_tidal_lambda_hand_values(decay, progress, lam_train):
    t = 0.3
    both, training, timestep = (TidalSchedule(axis=a, decay=decay) for a in ("both", "training_only", "timestep_only"))
    assert both.lam(progress, t) == pytest.approx(lam_train * 0.7)
    assert training.lam(progress, t) == pytest.approx(lam_train)
    assert timestep.lam(progress, t) == pytest.approx(0.9 * 0.7)
    assert both.lambda_train(progress) == pytest.approx(lam_train)
    t_vec = torch.tensor([0.0, 0.3, 1.0])
    torch.testing.assert_close(both.lam(progress, t_vec), torch.tensor([lam_train, lam_train * 0.7, 0.0]))
    torch.testing.assert_close(training.lam(progress, t_vec), torch.full((3,), lam_train))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"axis": "diagonal"}, "axis must be one of"),
        ({"decay": "step"}, "decay must be one of"),
        ({"lambda0": -0.1}, "lambda0"),
        ({"lambda_max": 1.5}, "lambda_max"),
    ],
)
def test_tidal_lambda_rejects_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TidalSchedule(**kwargs)
    with pytest.raises(ValueError, match="progress"):
        TidalSchedule().lam(1.2, 0.5)
    with pytest.raises(ValueError, match="weighting must be one of"):
        TidalSchedule(weighting="flat")


def test_midrange_weight_values():
    assert midrange_weight(0.5) == 1.0
    assert midrange_weight(0.65) == pytest.approx(math.exp(-0.5))
    assert midrange_weight(0.35) == pytest.approx(math.exp(-0.5))
    assert midrange_weight(0.2) == pytest.approx(math.exp(-2.0))
    torch.testing.assert_close(midrange_weight(torch.tensor([0.5, 0.65])), torch.tensor([1.0, math.exp(-0.5)]))


# --- chunk losses -------------------------------------------------------------------------------------------


def _chunk_logprobs(logits: torch.Tensor, gold: torch.Tensor, bounds: list[tuple[int, int]]) -> torch.Tensor:
    """Σ over a chunk's positions of log p_S(gold), from per-position student logits (no shift)."""
    lp = torch.log_softmax(logits, -1)[torch.arange(logits.shape[0]), gold]
    return torch.stack([lp[a:b].sum() for a, b in bounds])


def ref_chunk(kind, l_s, l_t, t, temp, progress=0.0):
    s = torch.exp(l_s / temp)
    q = torch.exp(l_t.to(l_s.dtype) / temp)
    if kind == "calm":
        return -(q * torch.log(s) + (1 - q) * torch.log(1 - s)).mean()
    if kind == "reverse_calm":
        return -(s * torch.log(q) + (1 - s) * torch.log(1 - q)).mean()
    lam = ref_lambda(progress, t.to(l_s.dtype), "both", "cosine")
    m = ((1 - lam) * s + lam * q).detach()
    w = torch.exp(-((t.to(l_s.dtype) - 0.5) ** 2) / (2 * 0.15**2))
    if kind == "tidal_calm":
        terms = -(m * torch.log(s) + (1 - m) * torch.log(1 - s))
    else:
        terms = -(s * torch.log(m) + (1 - s) * torch.log(1 - m))
    return (w * terms).sum() / terms.shape[0]


@pytest.mark.parametrize("kind", ["calm", "reverse_calm", "tidal_calm", "reverse_tidal_calm"])
@pytest.mark.parametrize("temp", [5.0, 2.0])
def test_chunk_losses_match_direct_formulas_with_gradients(kind, temp):
    logits = _rand(12, 25, seed=15, scale=1.5)
    gold = torch.randint(0, 25, (12,), generator=torch.Generator().manual_seed(16))
    bounds = [(0, 1), (1, 4), (4, 5), (5, 9), (9, 12)]
    l_t = _chunk_logprobs(_rand(12, 25, seed=17, scale=1.5), gold, bounds)
    t = torch.tensor([0.2, 0.45, 0.5, 0.6, 0.9])
    inputs_for = lambda z: ChunkInputs(_chunk_logprobs(z, gold, bounds), l_t, t)  # noqa: E731
    options = LossOptions(temperature=temp, progress=0.3)
    _check(
        lambda z: LOSSES[kind](inputs_for(z), options),
        lambda z: ref_chunk(kind, _chunk_logprobs(z, gold, bounds), l_t, t, temp, progress=0.3),
        logits,
    )


def test_chunk_default_temperature_is_five():
    l_s, l_t = torch.tensor([-1.0, -3.0]), torch.tensor([-0.5, -6.0])
    t = torch.tensor([0.4, 0.6])
    for name in ("calm", "reverse_calm", "tidal_calm", "reverse_tidal_calm"):
        assert LOSSES[name].default_temperature == 5.0
    torch.testing.assert_close(LOSSES["calm"](ChunkInputs(l_s, l_t, t)), ref_chunk("calm", l_s, l_t, t, 5.0))


@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_calm_gradient_survives_very_unlikely_chunk(temp):
    l_s = torch.tensor([-40.0], requires_grad=True)
    l_t = torch.tensor([-0.5])
    (grad,) = torch.autograd.grad(calm_loss(l_s, l_t, temperature=temp), l_s)
    q = math.exp(-0.5 / temp)
    s = math.exp(-40.0 / temp)
    expected = -(q - (1 - q) * s / (1 - s)) / temp  # d/dℓ of −[q·ℓ/T + (1−q)·log(1 − e^{ℓ/T})]
    assert float(grad) == pytest.approx(expected, rel=1e-5)
    # The original clamp to [1e-7, 1 − 1e-7] would have given no gradient at all here.
    x = l_s.detach().clone().requires_grad_(True)
    s_clamped = torch.exp(x / temp).clamp(1e-7, 1 - 1e-7)
    clamped = -(q * torch.log(s_clamped) + (1 - q) * torch.log(1 - s_clamped))
    (grad_clamped,) = torch.autograd.grad(clamped.sum(), x)
    assert float(grad_clamped) == 0.0 and abs(float(grad)) > 0.1


def test_calm_gradient_survives_near_certain_chunk():
    l_s = torch.tensor([-1e-9], requires_grad=True)
    (grad,) = torch.autograd.grad(calm_loss(l_s, torch.tensor([-0.7]), temperature=1.0), l_s)
    assert torch.isfinite(grad).all() and float(grad) > 1e3  # pushes the over-confident chunk down


def test_chunk_logprob_of_exactly_zero_stays_finite():
    l_s = torch.tensor([0.0, -2.0], requires_grad=True)
    l_t = torch.tensor([0.0, -1.0])
    for loss in (
        calm_terms(l_s, l_t).sum(),
        calm_terms(l_s, l_t, reverse=True).sum(),
        tidal_calm_loss(l_s, l_t, torch.tensor([0.5, 0.5]), progress=0.5),
        tidal_calm_loss(l_s, l_t, torch.tensor([0.5, 0.5]), progress=0.5, reverse=True),
    ):
        (grad,) = torch.autograd.grad(loss, l_s)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_inactive_chunks_with_nan_teacher_are_ignored():
    l_s = torch.tensor([-1.0, -2.0, -3.0, -0.5], requires_grad=True)
    l_t = torch.tensor([-0.5, math.nan, -2.0, math.nan])
    active = torch.tensor([True, False, True, False])
    t = torch.tensor([0.3, 0.3, 0.7, 0.7])
    for reverse in (False, True):
        loss = calm_loss(l_s, l_t, active=active, reverse=reverse)
        kind = "reverse_calm" if reverse else "calm"
        torch.testing.assert_close(loss, ref_chunk(kind, l_s[[0, 2]], l_t[[0, 2]], t[[0, 2]], 5.0))
        (grad,) = torch.autograd.grad(loss, l_s)
        assert torch.isfinite(grad).all() and grad[1] == 0 and grad[3] == 0
    loss = tidal_calm_loss(l_s, l_t, t, progress=0.2, active=active)
    torch.testing.assert_close(loss, ref_chunk("tidal_calm", l_s[[0, 2]], l_t[[0, 2]], t[[0, 2]], 5.0, 0.2))


def test_chunk_losses_reject_bad_inputs():
    with pytest.raises(ValueError, match="teacher_logprob must be finite"):
        calm_terms(torch.tensor([-1.0]), torch.tensor([math.nan]))
    with pytest.raises(ValueError, match="student_logprob must be finite log-probs ≤ 0"):
        calm_terms(torch.tensor([0.5]), torch.tensor([-1.0]))
    with pytest.raises(ValueError, match="equal length"):
        calm_terms(torch.tensor([-1.0, -2.0]), torch.tensor([-1.0]))
    with pytest.raises(ValueError, match="active must be bool"):
        calm_loss(torch.tensor([-1.0]), torch.tensor([-1.0]), active=torch.tensor([1]))


# --- normaliser, registry, composition ----------------------------------------------------------------------


def test_masked_mean_hand_values():
    terms = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert float(masked_mean(terms)) == 2.5
    assert float(masked_mean(terms, torch.tensor([True, False, True, False]))) == 2.0
    assert float(masked_mean(terms, weights=torch.tensor([1.0, 0.0, 0.5, 0.0]), count=5)) == pytest.approx(0.5)
    assert float(masked_mean(terms, count=torch.tensor(8))) == 1.25
    empty = torch.zeros(0, requires_grad=True)
    out = masked_mean(empty)
    assert float(out.detach()) == 0.0 and out.requires_grad
    with pytest.raises(ValueError, match="mask must be bool"):
        masked_mean(terms, torch.tensor([1, 0, 1, 0]))


def test_registry_contents():
    assert list(LOSSES) == [
        "ce", "kl", "reverse_kl", "tidal", "calm", "reverse_calm", "tidal_calm", "reverse_tidal_calm",
    ]
    kinds = {name: entry.targets for name, entry in LOSSES.items()}
    assert kinds == {
        "ce": "none", "kl": "vocab", "reverse_kl": "vocab", "tidal": "vocab",
        "calm": "chunk", "reverse_calm": "chunk", "tidal_calm": "chunk", "reverse_tidal_calm": "chunk",
    }
    assert LOSSES["tidal"].default_temperature == 2.0 and LOSSES["ce"].default_temperature is None


def test_registry_with_full_k_equals_full_vocabulary_formulas():
    z_s, z_t = _rand(6, 32, seed=18), _rand(6, 32, seed=19)
    t = torch.tensor([0.1, 0.3, 0.5, 0.5, 0.8, 1.0])
    st = _teacher(z_t, k=32)
    options = LossOptions(progress=0.6)
    refs = {
        "kl": lambda z: ref_kl(z, z_t, 2.0),
        "reverse_kl": lambda z: ref_reverse_kl(z, z_t, 2.0),
        "tidal": lambda z: ref_tidal(z, z_t, t, 2.0, 0.6),
    }
    for name, entry in LOSSES.items():
        if entry.targets != "vocab":
            continue
        _check(
            lambda z, entry=entry: entry(VocabInputs(z, st, t), options),
            refs[name],
            z_s,
        )
    gold = torch.tensor([1, 2, 3, 4, 5, 6])
    ce = LOSSES["ce"](CEInputs(z_s, gold, t, num_maskable=9))
    torch.testing.assert_close(ce, ce_loss(z_s, gold, t, num_maskable=9))
    with pytest.raises(ValueError, match="takes VocabInputs"):
        LOSSES["kl"](CEInputs(z_s, gold, t, num_maskable=9))


def test_parse_mode():
    assert [e.name for e in parse_mode("tidal+kl")] == ["tidal", "kl"]
    assert [e.name for e in parse_mode(" reverse_calm ")] == ["reverse_calm"]
    assert required_targets(parse_mode("ce+kl")) == "vocab"
    assert required_targets(parse_mode("ce")) == "none"
    assert required_targets(parse_mode("calm+tidal_calm")) == "chunk"
    with pytest.raises(ValueError, match="unknown loss mode 'kll'.*valid modes: ce, kl, reverse_kl"):
        parse_mode("tidal+kll")
    with pytest.raises(ValueError, match="twice"):
        parse_mode("kl+kl")
    with pytest.raises(ValueError, match="mixes vocabulary"):
        parse_mode("kl+calm")
    with pytest.raises(ValueError, match="empty component"):
        parse_mode("kl+")
    with pytest.raises(ValueError, match="non-empty string"):
        parse_mode("")


def test_combine_losses():
    ce = torch.tensor(1.0, requires_grad=True)
    kl = torch.tensor(2.0, requires_grad=True)
    tidal = torch.tensor(4.0, requires_grad=True)
    total, parts = combine_losses(ce, {"kl": kl, "tidal": tidal})
    assert float(total.detach()) == 7.0 and set(parts) == {"ce", "kl", "tidal"}
    total, _ = combine_losses(ce, {"kl": kl, "tidal": tidal}, weight={"tidal": 0.5})
    assert float(total.detach()) == 5.0
    total, _ = combine_losses(ce, {"kl": kl}, weight=0.25)
    assert float(total.detach()) == 1.5
    total.backward()
    assert float(kl.grad) == 0.25 and float(ce.grad) == 1.0
    with pytest.raises(ValueError, match="not among the terms"):
        combine_losses(ce, {"kl": kl}, weight={"calm": 1.0})
    with pytest.raises(ValueError, match="unknown loss names"):
        combine_losses(ce, {"klx": kl})


# --- the original's CALM clamp (the training default) against the log-space form -----------------------


def _reverse_calm_grad(options: LossOptions) -> float:
    """d(reverse CALM)/dℓ_S for the case of issue 13: teacher chunk log-prob 0, student −0.5, T = 5."""
    l_s = torch.tensor([-0.5], requires_grad=True)
    loss = LOSSES["reverse_calm"](ChunkInputs(l_s, torch.tensor([0.0]), torch.tensor([0.5])), options)
    (grad,) = torch.autograd.grad(loss, l_s)
    return float(grad)


def test_reverse_calm_clamp_default_gives_the_original_gradient_and_the_option_the_log_space_one():
    s = math.exp(-0.5 / 5)
    # clamped: q = fp32(1 − 1e−7) = 1 − 2^−23, so dL/ds = log(1 − q) − log q = log(2^−23) + 2^−23
    clamped = s / 5 * (math.log(2.0**-23) + 2.0**-23)
    # log space: log(1 − q) at q = 1 is evaluated at the smallest normal fp32, 2^−126
    log_space = s / 5 * math.log(2.0**-126)
    assert LossOptions().calm_clamp == 1e-7
    assert _reverse_calm_grad(LossOptions()) == pytest.approx(clamped, rel=1e-5)
    assert _reverse_calm_grad(LossOptions()) == pytest.approx(-2.885, abs=1e-3)
    assert _reverse_calm_grad(LossOptions(calm_clamp=None)) == pytest.approx(log_space, rel=1e-5)
    assert _reverse_calm_grad(LossOptions(calm_clamp=None)) == pytest.approx(-15.805, abs=1e-3)


def test_clamped_chunk_losses_match_the_original_formulas():
    """Every chunk mode with the clamp equals the original's expressions (probabilities clamped in fp32, the
    TIDAL mixture clamped too), values and gradients, including a clamped near-certain and a hopeless chunk."""
    l_s = torch.tensor([-0.3, -2.0, -1e-9, -120.0], dtype=torch.float64)
    l_t = torch.tensor([0.0, -1.5, -0.2, -0.7])
    t = torch.tensor([0.3, 0.5, 0.7, 0.6])
    temp, lam_train = 5.0, 0.1 + 0.8 * 0.5 * (1 - math.cos(math.pi * 0.4))

    def original(kind, x):
        s = torch.exp(x / temp).float().clamp(1e-7, 1 - 1e-7)
        q = torch.exp(l_t / temp).clamp(1e-7, 1 - 1e-7)
        if kind == "calm":
            return -(q * torch.log(s) + (1 - q) * torch.log(1 - s)).mean()
        if kind == "reverse_calm":
            return -(s * torch.log(q) + (1 - s) * torch.log(1 - q)).mean()
        lam = lam_train * (1 - t)
        m = ((1 - lam) * s + lam * q).detach().clamp(1e-7, 1 - 1e-7)
        w = torch.exp(-((t - 0.5) ** 2) / (2 * 0.15**2)) if "tidal" in kind else 1.0
        if kind == "tidal_calm":
            terms = -(m * torch.log(s) + (1 - m) * torch.log(1 - s))
        else:
            terms = -(s * torch.log(m) + (1 - s) * torch.log(1 - m))
        return (w * terms).sum() / terms.shape[0]

    options = LossOptions(temperature=temp, progress=0.4)
    for kind in ("calm", "reverse_calm", "tidal_calm", "reverse_tidal_calm"):
        x = l_s.clone().requires_grad_(True)
        got = LOSSES[kind](ChunkInputs(x, l_t, t), options)
        (grad,) = torch.autograd.grad(got, x)
        y = l_s.clone().requires_grad_(True)
        want = original(kind, y)
        (want_grad,) = torch.autograd.grad(want, y)
        torch.testing.assert_close(got.double(), want.double(), rtol=1e-5, atol=1e-6, msg=kind)
        torch.testing.assert_close(grad, want_grad, rtol=1e-4, atol=1e-7, msg=kind)
        assert grad[2] == 0 and grad[3] == 0, kind  # clamped student chunks pass no gradient
