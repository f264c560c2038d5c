"""Fidelity of the sparse-target cache: bytes against gradient error, per tail reconstruction, k policy, encoding.

On three teacher families (:mod:`benchmarks.fidelity_families`: ``llm_calibrated`` on the real 151,646-id
vocabulary with a perturbed student, ``kn_python`` — a Kneser-Ney 5-gram trained on the stdlib — with trained
bigram and trigram students, ``synthetic_peaked`` with a noisy student), every (k policy, encoding) is
written as a real one-pass shard (one row group, as a production row group holds tens of thousands of
positions) with ``cache_schema``'s writer and decoded back with its codec, so every figure includes the
storage rounding. Then, at T = 1 and T = 2, for each student, tail reconstruction (``student``, ``uniform``,
``mixture``) and vocabulary loss (``kl``, ``reverse_kl``, ``tidal`` at progress 0.5, axis both, cosine,
midrange weight), on the scored positions:

* loss error: |loss from the cache − full-logit loss| / full-logit loss;
* gradient error w.r.t. the student logits (all positions × all ids at once): relative L2
  ‖g_cache − g_full‖ / ‖g_full‖ and cosine(g_cache, g_full). The full-logit references are written here
  independently of :mod:`tide.losses` (float64, straight from docs/design.md#losses);
* bytes per target position of the pass: compressed bytes of the pass's columns (Parquet footer) / positions,
  over all the family's positions (every position of these rows is a masked target position);
* KL(full ‖ reconstruction) of the reconstructed teacher.

The policies are fixed k ∈ {16, 32, 64, 128} and a frontier of mass policies (mass 0.8–0.99 at T = 1 with
the default floor 16 and ceiling 64, ceilings 32 and 128, no floor); the default policy (mass 0.9 at T = 1,
16..64) and fixed 64 are also stored as ``float32`` (exact values), fixed 64 as ``v1`` too (format v1:
int32 ids, float16 values, log-partitions). ``acceptance`` compares issue 12's default cell (default
policy, rank24-delta8, default reconstruction) with the uniform tail at fixed k = 64 (rank24-delta8) on
every family; its verdict is taken on ``kn_python`` at T = 2. Writes ``benchmarks/results/fidelity.json``.

    .venv/bin/python benchmarks/bench_fidelity.py [--positions 256] [--storage-positions 2048] [--out PATH]
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.fidelity_families import (
    VOCAB,
    Family,
    describe,
    kn_python_family,
    llm_calibrated_family,
    stdlib_tokens,
    synthetic_peaked_family,
)
from cache_schema.codec import SparseArrays, SparseCodec, V1Codec, id_table_from_counts
from cache_schema.schemas import (
    ENCODING_FLOAT32,
    ENCODING_PACKED,
    shared_schema,
    shared_schema_v1,
    table_from_rows,
)
from cache_schema.writer import write_shard
from stages.train.pipelines import decoded_targets
from tide.losses import TidalSchedule, kl_loss, reverse_kl_loss, tidal_loss
from tide.targets import (
    KPolicy,
    SparseTargets,
    TailReconstruction,
    reconstruct_log_probs,
    sparse_targets,
)

logger = logging.getLogger("bench_fidelity")

TEMPERATURES = (1.0, 2.0)
PROGRESS = 0.5
PASS = "plain"
ROW_TARGETS = 32
CHUNK = 32  # positions per loss / gradient evaluation
ID_TABLE_SIZE = 4096
LOSSES = ("kl", "reverse_kl", "tidal")
TAILS = ("student", "uniform", "mixture")
SCHEDULE = TidalSchedule()


@dataclass(frozen=True)
class PolicyCase:
    name: str
    policy: KPolicy
    encodings: tuple[str, ...]


DEFAULT_POLICY = "mass 0.9 @T1, 16..64"  # tide-cache build's defaults: --k-policy mass --k-mass 0.9 --k-floor 16 --k 64
POLICIES: tuple[PolicyCase, ...] = (
    PolicyCase("fixed 16", KPolicy.fixed(16), (ENCODING_PACKED,)),
    PolicyCase("fixed 32", KPolicy.fixed(32), (ENCODING_PACKED,)),
    PolicyCase("fixed 64", KPolicy.fixed(64), (ENCODING_PACKED, ENCODING_FLOAT32, "v1")),
    PolicyCase("fixed 128", KPolicy.fixed(128), (ENCODING_PACKED,)),
    # the frontier: mass targets at the default ceiling, then ceilings at the default mass
    PolicyCase("mass 0.8 @T1, 16..64", KPolicy("mass", 64, 0.8, 1.0, 16), (ENCODING_PACKED,)),
    PolicyCase(DEFAULT_POLICY, KPolicy("mass", 64, 0.9, 1.0, 16), (ENCODING_PACKED, ENCODING_FLOAT32)),
    PolicyCase("mass 0.95 @T1, 16..64", KPolicy("mass", 64, 0.95, 1.0, 16), (ENCODING_PACKED,)),
    PolicyCase("mass 0.99 @T1, 16..64", KPolicy("mass", 64, 0.99, 1.0, 16), (ENCODING_PACKED,)),
    PolicyCase("mass 0.9 @T1, 16..32", KPolicy("mass", 32, 0.9, 1.0, 16), (ENCODING_PACKED,)),
    PolicyCase("mass 0.9 @T1, 16..128", KPolicy("mass", 128, 0.9, 1.0, 16), (ENCODING_PACKED,)),
    PolicyCase("mass 0.99 @T1, 16..128", KPolicy("mass", 128, 0.99, 1.0, 16), (ENCODING_PACKED,)),
    PolicyCase("mass 0.9 @T1, 1..64 (no floor)", KPolicy("mass", 64, 0.9, 1.0, 1), (ENCODING_PACKED,)),
)

# Issue 12's acceptance: at the default (policy, encoding, reconstruction) on the real-text family at T = 2,
# at most BYTES_LIMIT bytes per position per pass, and gradient errors no larger than the uniform tail's at
# fixed k = 64 (same encoding) for every loss, at least MIN_GAIN times smaller for reverse_kl and tidal.
DEFAULT_CELL = (DEFAULT_POLICY, ENCODING_PACKED, TailReconstruction().kind)
COMPARISON_CELL = ("fixed 64", ENCODING_PACKED, "uniform")
ACCEPTANCE_FAMILY = "kn_python"
ACCEPTANCE_TEMPERATURE = "T=2"
BYTES_LIMIT = 64.0
MIN_GAIN = {"kl": 1.0, "reverse_kl": 5.0, "tidal": 5.0}


# ---------------------------------------------------------------------------------------------- references


def reference_terms(zt: torch.Tensor, zs: torch.Tensor, t: torch.Tensor, temperature: float) -> dict[str, torch.Tensor]:
    """The three losses' per-position terms (× T², weights included) on full logits, fp64, differentiable in zs."""
    log_p = torch.log_softmax(zt.double() / temperature, dim=-1)
    log_q = torch.log_softmax(zs / temperature, dim=-1)
    g = 0.5 * (1.0 - math.cos(math.pi * PROGRESS))
    lam = ((0.1 + 0.8 * g) * (1.0 - t.double()))[:, None]
    log_r = torch.log_softmax((1 - lam) * zs.detach() / temperature + lam * zt.double() / temperature, dim=-1)
    weight = torch.exp(-((t.double() - 0.5) ** 2) / (2 * 0.15**2))
    t2 = temperature**2
    return {
        "kl": t2 * (log_p.exp() * (log_p - log_q)).sum(-1),
        "reverse_kl": t2 * (log_q.exp() * (log_q - log_p)).sum(-1),
        "tidal": t2 * weight * (log_r.exp() * (log_r - log_q)).sum(-1),
    }


def _chunks(n: int) -> list[slice]:
    return [slice(s, min(s + CHUNK, n)) for s in range(0, n, CHUNK)]


def full_reference(family: Family, student: torch.Tensor, temperature: float) -> dict[str, tuple[float, torch.Tensor]]:
    """(mean loss, gradient (N, V) fp32 of the mean) of each loss on the full logits."""
    n = student.shape[0]
    out = {name: [0.0, torch.empty(n, family.vocab_size)] for name in LOSSES}
    for part in _chunks(n):
        zs = student[part].double().requires_grad_(True)
        terms = reference_terms(family.teacher[part], zs, family.t[part], temperature)
        for name in LOSSES:
            total = terms[name].sum() / n
            (grad,) = torch.autograd.grad(total, zs, retain_graph=name != LOSSES[-1])
            out[name][0] += float(total.detach())
            out[name][1][part] = grad.float()
    return {name: (value, grad) for name, (value, grad) in out.items()}


def cache_loss(name: str, z: torch.Tensor, targets: SparseTargets, t: torch.Tensor, temperature: float,
               tail: TailReconstruction) -> torch.Tensor:
    if name == "kl":
        return kl_loss(z, targets, temperature=temperature, tail=tail)
    if name == "reverse_kl":
        return reverse_kl_loss(z, targets, temperature=temperature, tail=tail)
    return tidal_loss(z, targets, t, temperature=temperature, progress=PROGRESS, schedule=SCHEDULE, tail=tail)


def compare(family: Family, student: torch.Tensor, targets: SparseTargets, temperature: float,
            tail: TailReconstruction, reference: dict[str, tuple[float, torch.Tensor]]) -> dict[str, dict[str, float]]:
    """Loss and gradient errors of the cache losses against the full-logit reference, and KL(full ‖ rec)."""
    n = student.shape[0]
    acc = {name: {"value": 0.0, "diff2": 0.0, "ref2": 0.0, "mine2": 0.0, "dot": 0.0} for name in LOSSES}
    rec_kl = 0.0
    for part in _chunks(n):
        z = student[part].clone().requires_grad_(True)
        sub = targets.select(torch.arange(part.start, part.stop))
        for name in LOSSES:
            value = cache_loss(name, z, sub, family.t[part], temperature, tail) * ((part.stop - part.start) / n)
            (grad,) = torch.autograd.grad(value, z)
            ref = reference[name][1][part].double()
            grad = grad.double()
            stats = acc[name]
            stats["value"] += float(value.detach())
            stats["diff2"] += float(((grad - ref) ** 2).sum())
            stats["ref2"] += float((ref**2).sum())
            stats["mine2"] += float((grad**2).sum())
            stats["dot"] += float((grad * ref).sum())
        with torch.no_grad():
            log_q = torch.log_softmax(student[part] / temperature, dim=-1)
            log_rec = reconstruct_log_probs(sub.at(temperature), family.vocab_size, tail, log_q).double()
            log_p = torch.log_softmax(family.teacher[part].double() / temperature, dim=-1)
            rec_kl += float((log_p.exp() * (log_p - log_rec)).sum())
    out = {}
    for name, stats in acc.items():
        full = reference[name][0]
        out[name] = {
            "loss": stats["value"],
            "full_loss": full,
            "loss_rel_error": abs(stats["value"] - full) / abs(full) if full else None,
            "grad_rel_l2": math.sqrt(stats["diff2"] / stats["ref2"]) if stats["ref2"] else None,
            "grad_cosine": stats["dot"] / math.sqrt(stats["ref2"] * stats["mine2"]) if stats["mine2"] else None,
        }
    out["kl_full_to_reconstruction"] = rec_kl / n
    return out


# ------------------------------------------------------------------------------------------- storage round trip


def _base_row(index: int, count: int) -> dict:
    positions = np.arange(count, dtype=np.int32)
    length = 8 * ((count + 7) // 8)
    return {"sample_id": f"fidelity:{index}", "sample_key": index, "replica": 0, "t": 0.5,
            "input_ids": np.zeros(length, np.int32), "maskable": np.ones(length, bool),
            "masked_positions": positions, "teacher_input_ids": np.zeros(length, np.int32),
            "compdemo_group": np.zeros(0, np.uint8), "target_positions": positions,
            "target_teacher_positions": positions}


def store_and_decode(directory: Path, family: Family, case: PolicyCase, encoding: str) -> tuple[SparseTargets, dict]:
    """Write the family's targets under ``case`` and ``encoding`` as one shard, read them back decoded."""
    vocab = family.vocab_size
    built = sparse_targets(family.teacher, family.gold, k=case.policy.ceiling, shared_vocab_size=vocab,
                           temperatures=TEMPERATURES, policy=case.policy)
    n = built.num_positions
    valid = built.valid().numpy()
    arrays = SparseArrays(built.counts.numpy().astype(np.int64), built.topk_ids.numpy()[valid].astype(np.int64),
                          built.topk_values.numpy()[valid], built.log_tails.numpy(), built.gold_logprob.numpy())
    if encoding == "v1":
        schema = shared_schema_v1(k=case.policy.ceiling, value_dtype="float16", num_temperatures=len(TEMPERATURES),
                                  passes=[PASS])
        codec = V1Codec(case.policy.ceiling, TEMPERATURES)
        values = family.teacher - family.teacher.max(dim=1, keepdim=True).values
        log_z = torch.stack([torch.logsumexp(values / temp, dim=1) for temp in TEMPERATURES], dim=1).numpy()
    else:
        schema = shared_schema(encoding=encoding, num_temperatures=len(TEMPERATURES), passes=[PASS])
        codec = SparseCodec(encoding, num_temperatures=len(TEMPERATURES),
                            id_table=id_table_from_counts(family.id_counts, ID_TABLE_SIZE), vocab_size=vocab)
    rows = []
    for index, start in enumerate(range(0, n, ROW_TARGETS)):
        keep = np.zeros(n, dtype=bool)
        keep[start:start + ROW_TARGETS] = True
        row = _base_row(index, int(keep.sum()))
        part = arrays.select(keep)
        if encoding == "v1":
            k = case.policy.ceiling
            row.update({f"{PASS}_topk_ids": part.ids.reshape(-1, k).astype(np.int32),
                        f"{PASS}_topk_values": part.values.reshape(-1, k).astype(np.float16),
                        f"{PASS}_log_partitions": log_z[keep].astype(np.float32),
                        f"{PASS}_gold_logprob": part.gold_logprob})
        else:
            row.update(codec.encode(part, PASS))
        rows.append(row)
    name = f"shard-{family.name}-{case.name.replace(' ', '_').replace('@', '')}-{encoding}.parquet"
    info = write_shard(directory, name, table_from_rows(rows, schema), schema=schema, row_group_rows=len(rows))
    meta = pq.ParquetFile(directory / name).metadata
    sizes: dict[str, int] = {}
    for group in range(meta.num_row_groups):
        for column in range(meta.num_columns):
            chunk = meta.row_group(group).column(column)
            top = chunk.path_in_schema.split(".")[0]
            sizes[top] = sizes.get(top, 0) + int(chunk.total_compressed_size)
    table = pq.read_table(directory / name, columns=codec.columns(PASS))
    flat = {c: _flat(table.column(c)) for c in codec.columns(PASS)}
    decoded = codec.decode(flat, PASS)
    targets = decoded_targets(codec.decode_padded(flat, PASS), TEMPERATURES)  # as training decodes a batch
    pass_bytes = {c: sizes[c] / n for c in codec.columns(PASS)}
    storage = {"bytes_per_position": sum(pass_bytes.values()), "bytes_by_column": pass_bytes,
               "shard_bytes_per_position": info.bytes / n, "mean_k": float(arrays.counts.mean()),
               "mean_tail_mass": {f"T={temp:g}": float(np.exp(arrays.log_tails[:, i]).mean())
                                  for i, temp in enumerate(TEMPERATURES)},
               "max_abs_value_error": float(np.abs(decoded.values - arrays.values).max())}
    return targets, storage


def _flat(column: pa.ChunkedArray) -> np.ndarray:
    """The values of a list (of fixed-size lists) column as one flat numpy array."""
    array = column.combine_chunks()
    while pa.types.is_list(array.type) or pa.types.is_fixed_size_list(array.type):
        array = array.flatten()
    return array.to_numpy(zero_copy_only=False)


# ------------------------------------------------------------------------------------------------ acceptance


def _cell(cells: list[dict], policy: str, encoding: str) -> dict:
    return next(c for c in cells if c["policy"] == policy and c["encoding"] == encoding)


def acceptance(families: dict[str, dict]) -> dict:
    """The default cell against the comparison cell, per family, student and temperature; ``passes`` is the
    issue's verdict: the acceptance family at the acceptance temperature, every student."""
    out: dict = {"default": dict(zip(("policy", "encoding", "tail"), DEFAULT_CELL, strict=True)),
                 "comparison": dict(zip(("policy", "encoding", "tail"), COMPARISON_CELL, strict=True)),
                 "family": ACCEPTANCE_FAMILY, "temperature": ACCEPTANCE_TEMPERATURE,
                 "bytes_limit": BYTES_LIMIT, "required_gain": MIN_GAIN, "families": {}}
    for name, family in families.items():
        default, comparison = _cell(family["cells"], *DEFAULT_CELL[:2]), _cell(family["cells"], *COMPARISON_CELL[:2])
        students: dict = {}
        for student, by_temperature in default["results"].items():
            students[student] = {}
            for temperature, by_tail in by_temperature.items():
                mine = by_tail[DEFAULT_CELL[2]]
                theirs = comparison["results"][student][temperature][COMPARISON_CELL[2]]
                losses = {}
                for loss in LOSSES:
                    a, b = mine[loss]["grad_rel_l2"], theirs[loss]["grad_rel_l2"]
                    losses[loss] = {"default_grad_rel_l2": a, "comparison_grad_rel_l2": b,
                                    "default_grad_cosine": mine[loss]["grad_cosine"],
                                    "comparison_grad_cosine": theirs[loss]["grad_cosine"],
                                    "gain": b / a if a else None, "passes": a * MIN_GAIN[loss] <= b}
                students[student][temperature] = {"losses": losses,
                                                  "passes": all(v["passes"] for v in losses.values())}
        bytes_per_position = default["bytes_per_position"]
        out["families"][name] = {
            "bytes_per_position": bytes_per_position,
            "comparison_bytes_per_position": comparison["bytes_per_position"],
            "bytes_passes": bytes_per_position <= BYTES_LIMIT, "students": students,
            "passes": bytes_per_position <= BYTES_LIMIT
            and all(s[ACCEPTANCE_TEMPERATURE]["passes"] for s in students.values())}
    out["passes"] = out["families"].get(ACCEPTANCE_FAMILY, {}).get("passes")
    return out


# -------------------------------------------------------------------------------------------------- driver


def build_families(names: list[str], positions: int, scored: int, workdir: Path, seed: int) -> list[Family]:
    out = []
    for name in names:
        start = time.perf_counter()
        if name == "kn_python":
            family = kn_python_family(positions, scored, workdir, seed)
        elif name == "llm_calibrated":
            train, _ = stdlib_tokens(workdir)
            family = llm_calibrated_family(positions, scored, np.bincount(train, minlength=VOCAB)[:VOCAB], seed)
        elif name == "synthetic_peaked":
            family = synthetic_peaked_family(positions, scored, seed)
        else:
            raise ValueError(f"unknown family {name!r}")
        family.stats = {"teacher": describe(family.teacher[:scored]),
                        **{f"student {n}": describe(z) for n, z in family.students.items()}}
        logger.info("%s: %d positions (%d scored) in %.1f s", name, positions, scored, time.perf_counter() - start)
        out.append(family)
    return out


def run(names: list[str], scored: int, positions: int, seed: int, workdir: Path) -> dict:
    shards = workdir / "shards"
    result: dict = {"benchmark": "fidelity", "config": {
        "temperatures": list(TEMPERATURES), "scored_positions_per_family": scored,
        "storage_positions_per_family": positions, "target_positions_per_row": ROW_TARGETS, "tails": list(TAILS),
        "uniform_share": TailReconstruction().uniform_share,
        "tidal": {"progress": PROGRESS, "axis": "both", "decay": "cosine", "lambda0": 0.1, "lambda_max": 0.9,
                  "weighting": "midrange"},
        "default_policy": DEFAULT_POLICY, "id_table_size": ID_TABLE_SIZE, "compression": "zstd level 3 (cache_schema.write_shard defaults), one row group",
        "policies": {case.name: {"kind": case.policy.kind, "ceiling": case.policy.ceiling, "mass": case.policy.mass,
                                 "temperature": case.policy.temperature, "floor": case.policy.floor}
                     for case in POLICIES},
        "seed": seed}, "families": {}}
    scored_index = torch.arange(scored)
    for family in build_families(names, positions, scored, workdir, seed):
        references = {student: {f"T={temp:g}": full_reference(family, logits, temp) for temp in TEMPERATURES}
                      for student, logits in family.students.items()}
        cells = []
        for case in POLICIES:
            for encoding in case.encodings:
                targets, storage = store_and_decode(shards, family, case, encoding)
                targets = targets.select(scored_index)
                cell = {"policy": case.name, "encoding": encoding, **storage, "results": {}}
                for student, logits in family.students.items():
                    cell["results"][student] = {
                        f"T={temp:g}": {tail: compare(family, logits, targets, temp, TailReconstruction(tail),
                                                      references[student][f"T={temp:g}"]) for tail in TAILS}
                        for temp in TEMPERATURES}
                    logger.info("%s/%s %s %s: %.1f B/pos, T=2 grad err kl/rkl/tidal student|uniform %s | %s",
                                family.name, student, case.name, encoding, storage["bytes_per_position"],
                                [round(cell["results"][student]["T=2"]["student"][n]["grad_rel_l2"], 3) for n in LOSSES],
                                [round(cell["results"][student]["T=2"]["uniform"][n]["grad_rel_l2"], 3) for n in LOSSES])
                cells.append(cell)
        result["families"][family.name] = {
            "description": family.description, "vocab": family.vocab_size, "positions": positions, "scored": scored,
            "stats": family.stats,
            "full_losses": {student: {key: {n: v[0] for n, v in ref.items()} for key, ref in refs.items()}
                            for student, refs in references.items()},
            "cells": cells}
    result["acceptance"] = acceptance(result["families"])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=256, help="scored positions per family (default 256)")
    parser.add_argument("--storage-positions", type=int, default=2048,
                        help="positions per family in the storage measurement (default 2048; at least --positions)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--families", nargs="+", default=["kn_python", "llm_calibrated", "synthetic_peaked"])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fidelity.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    workdir = Path(tempfile.mkdtemp(prefix="bench_fidelity_"))
    try:
        start = time.perf_counter()
        result = run(args.families, args.positions, max(args.storage_positions, args.positions), args.seed, workdir)
        result["seconds"] = time.perf_counter() - start
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
