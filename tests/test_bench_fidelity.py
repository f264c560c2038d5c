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
