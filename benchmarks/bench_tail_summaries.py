"""How much gradient error a richer summary of the unstored tail could remove: a bound for issue 12's targets.

The sparse cache keeps a teacher's top-k entries and one tail mass per temperature; the student-shaped
reconstruction spreads that mass over the unstored ids in proportion to the student. This benchmark asks
what the next step up could buy: the tail split into B buckets of the cache's id table (ids by descending
frequency in the family's data, bucket edges spaced geometrically between rank 16 and the vocabulary), each
bucket's exact teacher mass spread over its unstored ids in proportion to the student. B = 1 is the
default reconstruction; every B is exact at k = V. Values and masses are exact float64 here (no storage
rounding), so every figure is a lower bound on the error of a cache that stores them; each bucket would cost
one more stored number per temperature and position.

On the families of :mod:`benchmarks.fidelity_families` (the same positions as ``bench_fidelity``), at T = 1
and T = 2, for fixed k ∈ {16, 32, 64}: the gradient relative L2 error w.r.t. the student logits of kl,
reverse_kl and tidal against full-logit distillation (``bench_fidelity.reference_terms``), and its gain over
the uniform tail at k = 64 (issue 12's comparison). Writes ``benchmarks/results/tail_summaries.json``.

    .venv/bin/python benchmarks/bench_tail_summaries.py [--positions 128] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_fidelity import LOSSES, build_families, reference_terms  # noqa: E402
from benchmarks.fidelity_families import Family  # noqa: E402

logger = logging.getLogger("bench_tail_summaries")

TEMPERATURES = (1.0, 2.0)
KS = (16, 32, 64)
BUCKETS = (1, 4, 16, 64)
FIRST_EDGE = 16  # the first bucket holds the ranks below this
CHUNK = 32


def frequency_ranks(id_counts: np.ndarray) -> torch.Tensor:
    """(V,) int64: each id's rank in the family's id table (descending count, ties by ascending id)."""
    order = np.lexsort((np.arange(id_counts.shape[0]), -id_counts))
    ranks = np.empty(id_counts.shape[0], dtype=np.int64)
    ranks[order] = np.arange(id_counts.shape[0])
    return torch.from_numpy(ranks)


def bucket_of(ranks: torch.Tensor, buckets: int) -> torch.Tensor:
    """(V,) int64 bucket of every id: edges at ``buckets - 1`` geometric steps between FIRST_EDGE and V."""
    if buckets == 1:
        return torch.zeros_like(ranks)
    edges = torch.from_numpy(np.geomspace(FIRST_EDGE, ranks.numel(), buckets)[:-1].round()).long()
    return torch.bucketize(ranks, edges, right=True)


def reconstruct(log_p: torch.Tensor, log_q: torch.Tensor, k: int, bucket: torch.Tensor | None) -> torch.Tensor:
    """(N, V) log-probs: the teacher's top-k kept; each bucket's tail mass over its unstored ids ∝ the student
    (``bucket`` None: the whole tail spread uniformly)."""
    stored = torch.zeros_like(log_p, dtype=torch.bool).scatter_(1, log_p.topk(k, dim=1).indices, True)
    out = log_p.clone()
    if bucket is None:
        tail = torch.where(stored, -math.inf, log_p).logsumexp(1, keepdim=True)
        return torch.where(stored, log_p, tail - math.log(log_p.shape[1] - k))
    for b in range(int(bucket.max()) + 1):
        inside = (bucket == b)[None, :] & ~stored
        mass = torch.where(inside, log_p, -math.inf).logsumexp(1, keepdim=True)
        student = torch.where(inside, log_q, -math.inf).logsumexp(1, keepdim=True)
        out = torch.where(inside, log_q + mass - student, out)
    return out


def gradients(family: Family, student: torch.Tensor, temperature: float, rebuild) -> dict[str, torch.Tensor]:
    """(N, V) fp64 gradient of every loss's mean w.r.t. the student logits, the teacher given by
    ``rebuild(log_p, log_q)`` (log-probs at ``temperature``; ``None`` keeps the full teacher)."""
    n = student.shape[0]
    out = {name: torch.empty(n, family.vocab_size, dtype=torch.float64) for name in LOSSES}
    for start in range(0, n, CHUNK):
        part = slice(start, min(start + CHUNK, n))
        zs = student[part].double().requires_grad_(True)
        log_p = torch.log_softmax(family.teacher[part].double() / temperature, dim=1)
        log_q = torch.log_softmax(zs.detach() / temperature, dim=1)
        teacher = log_p if rebuild is None else rebuild(log_p, log_q)
        terms = reference_terms(teacher * temperature, zs, family.t[part], temperature)  # zt / T = log p̃
        for name in LOSSES:
            (grad,) = torch.autograd.grad(terms[name].sum() / n, zs, retain_graph=name != LOSSES[-1])
            out[name][part] = grad
    return out


def rel_l2(grad: torch.Tensor, ref: torch.Tensor) -> float:
    return float((grad - ref).norm() / ref.norm())


def measure(family: Family) -> dict:
    ranks = frequency_ranks(family.id_counts)
    out = {"description": family.description, "vocab": family.vocab_size, "students": {}}
    for name, student in family.students.items():
        cells = []
        for temperature in TEMPERATURES:
            label = f"T={temperature:g}"
            full = gradients(family, student, temperature, None)
            uniform = gradients(family, student, temperature, lambda lp, lq: reconstruct(lp, lq, 64, None))
            baseline = {loss: rel_l2(uniform[loss], full[loss]) for loss in LOSSES}
            for k in KS:
                for buckets in BUCKETS:
                    bucket = bucket_of(ranks, buckets)
                    grads = gradients(family, student, temperature,
                                      lambda lp, lq, k=k, bucket=bucket: reconstruct(lp, lq, k, bucket))
                    errors = {loss: rel_l2(grads[loss], full[loss]) for loss in LOSSES}
                    cells.append({"temperature": label, "k": k, "buckets": buckets, "rel_l2": errors,
                                  "gain_over_uniform_k64": {loss: baseline[loss] / errors[loss] for loss in LOSSES}})
                    logger.info("%s/%s %s k=%d B=%d: %s", family.name, name, label, k, buckets,
                                " ".join(f"{loss} {errors[loss]:.3g} ({baseline[loss] / errors[loss]:.2f}x)"
                                         for loss in LOSSES))
            cells.append({"temperature": label, "k": 64, "buckets": 0, "rel_l2": baseline,
                          "gain_over_uniform_k64": dict.fromkeys(LOSSES, 1.0)})
        out["students"][name] = cells
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=128, help="scored positions per family")
    parser.add_argument("--families", nargs="+", default=["kn_python", "llm_calibrated", "synthetic_peaked"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "tail_summaries.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    workdir = Path(tempfile.mkdtemp(prefix="bench_tail_summaries_"))
    start = time.perf_counter()
    try:
        families = build_families(args.families, args.positions, args.positions, workdir, args.seed)
        result = {"config": {"positions": args.positions, "temperatures": list(TEMPERATURES), "ks": list(KS),
                             "buckets": list(BUCKETS), "first_edge": FIRST_EDGE, "seed": args.seed,
                             "baseline": "uniform tail at fixed k = 64 (buckets 0 in the cells)"},
                  "families": {family.name: measure(family) for family in families}}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result["seconds"] = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
