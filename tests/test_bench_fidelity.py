"""The fidelity benchmark's measurements on a tiny family: exact at k = V, and the acceptance verdict's
arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks import bench_fidelity as bench
from benchmarks.fidelity_families import Family
from cache_schema.schemas import ENCODING_FLOAT32
from tide.targets import KPolicy, TailReconstruction

VOCAB = 40
POSITIONS = 40  # two cache rows of ROW_TARGETS = 32 and 8 positions


@pytest.fixture(scope="module")
def family() -> Family:
    gen = torch.Generator().manual_seed(3)
    teacher = 3.0 * torch.randn(POSITIONS, VOCAB, generator=gen)
    student = teacher + torch.randn(POSITIONS, VOCAB, generator=gen)
    return Family(name="tiny", description="tiny", teacher=teacher, students={"noisy": student},
                  gold=torch.randint(0, VOCAB, (POSITIONS,), generator=gen),
                  t=torch.rand(POSITIONS, generator=gen) * 0.9 + 0.05,
                  id_counts=np.arange(VOCAB, 0, -1))


def test_every_reconstruction_is_exact_when_every_id_is_stored(family, tmp_path):
    case = bench.PolicyCase("fixed V", KPolicy.fixed(VOCAB), (ENCODING_FLOAT32,))
    targets, storage = bench.store_and_decode(tmp_path, family, case, ENCODING_FLOAT32)
    assert storage["mean_k"] == VOCAB and storage["max_abs_value_error"] == 0.0
    student = family.students["noisy"]
    for temperature in bench.TEMPERATURES:
        reference = bench.full_reference(family, student, temperature)
        for tail in bench.TAILS:
            result = bench.compare(family, student, targets, temperature, TailReconstruction(tail), reference)
            assert result["kl_full_to_reconstruction"] == pytest.approx(0.0, abs=1e-6)
            for loss in bench.LOSSES:
                assert result[loss]["loss_rel_error"] < 1e-5, (tail, loss, temperature)
                assert result[loss]["grad_rel_l2"] < 1e-5, (tail, loss, temperature)
                assert result[loss]["grad_cosine"] == pytest.approx(1.0, abs=1e-9)


def _cells(default: dict[str, float], comparison: dict[str, float], bytes_per_position: float) -> list[dict]:
    def cell(policy: str, tail: str, errors: dict[str, float], size: float) -> dict:
        by_tail = {tail: {loss: {"grad_rel_l2": e, "grad_cosine": 1.0} for loss, e in errors.items()}}
        return {"policy": policy, "encoding": bench.ENCODING_PACKED, "bytes_per_position": size,
                "results": {"s": {bench.ACCEPTANCE_TEMPERATURE: by_tail}}}

    return [cell(bench.DEFAULT_CELL[0], bench.DEFAULT_CELL[2], default, bytes_per_position),
            cell(bench.COMPARISON_CELL[0], bench.COMPARISON_CELL[2], comparison, 120.0)]


def test_acceptance_needs_the_bytes_and_every_gain():
    passing = _cells({"kl": 0.1, "reverse_kl": 0.1, "tidal": 0.1}, {"kl": 0.1, "reverse_kl": 0.5, "tidal": 0.6}, 64.0)
    verdict = bench.acceptance({bench.ACCEPTANCE_FAMILY: {"cells": passing}})
    assert verdict["passes"] is True
    assert verdict["families"][bench.ACCEPTANCE_FAMILY]["students"]["s"]["T=2"]["losses"]["tidal"]["gain"] == \
        pytest.approx(6.0)
    small_gain = _cells({"kl": 0.1, "reverse_kl": 0.1, "tidal": 0.1}, {"kl": 0.2, "reverse_kl": 0.49, "tidal": 1.0}, 60.0)
    assert bench.acceptance({bench.ACCEPTANCE_FAMILY: {"cells": small_gain}})["passes"] is False
    too_big = _cells({"kl": 0.1, "reverse_kl": 0.1, "tidal": 0.1}, {"kl": 0.1, "reverse_kl": 0.5, "tidal": 0.5}, 64.5)
    assert bench.acceptance({bench.ACCEPTANCE_FAMILY: {"cells": too_big}})["passes"] is False


def test_tail_buckets_bound_keeps_each_bucket_mass_and_reduces_to_the_default_tail(family):
    """The tail-summary bound's reconstruction: one bucket is tide's student-shaped tail (a second
    implementation), every bucket keeps the teacher's exact mass, and storing every id leaves no error."""
    from benchmarks import bench_tail_summaries as tails
    from tide.targets import reconstruct_log_probs, sparse_targets

    temperature, k = 2.0, 8
    log_p = torch.log_softmax(family.teacher.double() / temperature, dim=1)
    log_q = torch.log_softmax(family.students["noisy"].double() / temperature, dim=1)
    built = sparse_targets(family.teacher, family.gold, k=k, shared_vocab_size=VOCAB, temperatures=(1.0, 2.0),
                           policy=KPolicy.fixed(k))
    default = reconstruct_log_probs(built.at(temperature), VOCAB, TailReconstruction("student"), log_q.float())
    one = tails.reconstruct(log_p, log_q, k, tails.bucket_of(tails.frequency_ranks(family.id_counts), 1))
    torch.testing.assert_close(one.float(), default, atol=2e-4, rtol=0)
    bucket = tails.bucket_of(tails.frequency_ranks(family.id_counts), 4)
    assert bucket.unique().numel() == 4
    rebuilt = tails.reconstruct(log_p, log_q, k, bucket)
    torch.testing.assert_close(rebuilt.logsumexp(1), torch.zeros(POSITIONS, dtype=torch.float64))
    stored = torch.zeros_like(log_p, dtype=torch.bool).scatter_(1, log_p.topk(k, dim=1).indices, True)
    for b in range(4):
        inside = (bucket == b)[None, :] & ~stored
        torch.testing.assert_close(torch.where(inside, rebuilt, -torch.inf).logsumexp(1),
                                   torch.where(inside, log_p, -torch.inf).logsumexp(1))
    full = tails.gradients(family, family.students["noisy"], temperature, None)
    exact = tails.gradients(family, family.students["noisy"], temperature,
                            lambda lp, lq: tails.reconstruct(lp, lq, VOCAB, bucket))
    for loss in bench.LOSSES:
        assert tails.rel_l2(exact[loss], full[loss]) < 1e-9
