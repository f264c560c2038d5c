"""Top-k fidelity sweep: storage cost and accuracy of the pipeline-B targets for k in {8, ..., 256}.

For every k and two families of teacher distributions over the real 151,646-id shared vocabulary:

* ``tiny_wedlm``: logits of a tiny WeDLM-class teacher (Qwen3 weights, hidden 32, 2 layers, seeded random
  init from :func:`tide.testing.tiny_models.build_tiny_model`) run through :class:`tide.models.teacher.TeacherRunner`
  (``paper`` regime) on HumanEval chat pairs tokenized with the real Qwen vocabulary, at positions masked by
  the project's counter-based noise. An untrained model: its distributions are broad (close to flat), so this
  family is the hard case for a small k.
* ``synthetic_peaked``: the shape of a trained LM's next-token distribution: the logit of the id at rank r is
  ``-α·log r - 0.12·(log r)²`` (α ~ U(0.8, 1.6)) plus small noise and a top-1 bonus, frequent ids ranking
  high; at T = 1 most mass sits on a few ids (see :func:`synthetic_peaked_family`).

Per (family, k, value dtype) the targets are written as a real shard with ``cache_schema``'s writer and read
back, so every figure includes the storage rounding:

* bytes per target position: compressed bytes of the four target columns of the pass
  (``plain_topk_ids``, ``plain_topk_values``, ``plain_log_partitions``, ``plain_gold_logprob``) from the
  Parquet footer, divided by the number of target positions; the whole shard per position is also given.
  In these rows every masked position is a target position.
* KL(full ‖ reconstruction) at T = 1 and T = 2: mean over positions of Σ_v p_v (log p_v − log r_v) with p the
  full tempered teacher and r the top-k reconstruction (:func:`tide.targets.reconstruct_log_probs`).
* loss error vs full logits for ``kl``, ``reverse_kl`` and ``tidal`` at T = 1 and T = 2 (TIDAL: progress 0.5,
  axis both, cosine, midrange weight): the losses of :mod:`tide.losses` on the stored top-k against the same formulas evaluated
  directly on the full teacher logits (written here independently). The student logits are
  ``0.7·z_T + 0.7·std(z_T)·N(0, 1)``: a student that partly agrees with the teacher.

Writes ``benchmarks/results/fidelity_k.json``.

    .venv/bin/python benchmarks/bench_fidelity_k.py [--positions 256] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from cache_schema import shared_schema, table_from_rows, write_shard
from tide.losses import kl_loss, reverse_kl_loss, tidal_loss
from tide.targets import reconstruct_log_probs, sparse_targets

logger = logging.getLogger("bench_fidelity_k")

KS: tuple[int, ...] = (8, 16, 32, 64, 128, 256)
VOCAB = 151_646  # ids shared by WeDLM and the student
TEMPERATURES: tuple[float, ...] = (1.0, 2.0)
PROGRESS = 0.5
VALUE_DTYPES: tuple[str, ...] = ("float16", "float32")
ROW_TARGETS = 32  # target positions per cache row
MAX_TEACHER_TOKENS = 384
CHUNK = 64  # positions per full-vocabulary computation
PASS = "plain"
TARGET_COLUMNS = tuple(f"{PASS}_{name}" for name in ("topk_ids", "topk_values", "log_partitions", "gold_logprob"))
STUDENT_AGREEMENT = 0.7
STUDENT_NOISE = 0.7


@dataclass
class TeacherFamily:
    """Teacher logits at N masked positions and the cache rows they belong to.

    ``logits``: fp32 (N, VOCAB); ``gold``: int64 (N,) the clean token at each position; ``t``: fp32 (N,) the
    timestep of each position's row; ``rows``: per cache row, the common columns and the slice of positions.
    """

    name: str
    description: str
    logits: torch.Tensor
    gold: torch.Tensor
    t: torch.Tensor
    rows: list[dict]


def _row(sample_id: str, key: int, t: float, input_ids: np.ndarray, maskable: np.ndarray,
         positions: np.ndarray, teacher_ids: np.ndarray, teacher_positions: np.ndarray, start: int) -> dict:
    return {
        "sample_id": sample_id,
        "sample_key": key,
        "replica": 0,
        "t": t,
        "input_ids": input_ids.astype(np.int32),
        "maskable": maskable,
        "masked_positions": positions.astype(np.int32),
        "teacher_input_ids": teacher_ids.astype(np.int32),
        "compdemo_group": np.zeros(0, np.uint8),
        "target_positions": positions.astype(np.int32),
        "target_teacher_positions": teacher_positions.astype(np.int32),
        "_slice": slice(start, start + positions.size),
    }


def tiny_wedlm_family(num_positions: int, workdir: Path, seed: int = 0) -> TeacherFamily:
    """Teacher logits of a tiny WeDLM-class model on HumanEval chat pairs (see the module docstring)."""
    from tide import noise
    from tide.alignment.spans import tokenize_chat
    from tide.models.teacher import TeacherRunner, load_teacher
    from tide.testing.chat_data import humaneval_messages
    from tide.testing.tiny_models import build_tiny_model
    from tide.testing.tokenizers import CHATML_WITH_SYSTEM_TEMPLATE, build_qwen_tokenizer

    tokenizer = build_qwen_tokenizer(workdir / "wedlm_tokenizer", chat_template=CHATML_WITH_SYSTEM_TEMPLATE)
    path = build_tiny_model("wedlm", workdir / "wedlm", tokenizer=tokenizer, seed=seed)
    model = load_teacher(path, dtype=torch.float32, device="cpu")
    runner = TeacherRunner(model, regime="paper", block_size=32)
    mask_id = runner.mask_token_id

    logits, gold, times, rows = [], [], [], []
    collected = 0
    for index, messages in enumerate(humaneval_messages()):
        if collected >= num_positions:
            break
        tokens = tokenize_chat(tokenizer, messages)
        ids = tokens.ids[:MAX_TEACHER_TOKENS].astype(np.int64)
        start, end = (int(v) for v in tokens.content_spans[-1])  # the assistant answer
        inside = (tokens.offsets[: ids.size, 0] >= start) & (tokens.offsets[: ids.size, 1] <= end)
        maskable = inside & (tokens.offsets[: ids.size, 1] > tokens.offsets[: ids.size, 0])
        key = noise.sample_key(messages)
        t = noise.draw_timestep(seed, key, 0)
        masked = np.flatnonzero(noise.draw_mask(seed, key, 0, maskable, t))
        masked = masked[: min(ROW_TARGETS, num_positions - collected)]
        if masked.size == 0:
            continue
        clean = torch.from_numpy(ids)[None]
        noised = clean.clone()
        noised[0, torch.from_numpy(masked)] = mask_id
        position = torch.from_numpy(masked).long()
        out = runner.logits_at(noised, torch.tensor([ids.size]), torch.zeros_like(position), position, clean_ids=clean)
        logits.append(out[:, :VOCAB].clone())
        gold.append(clean[0, position])
        times.append(torch.full((masked.size,), float(t)))
        rows.append(_row(f"builtin:humaneval:{index}", key, float(t), ids, maskable, masked, ids, masked, collected))
        collected += masked.size
    return TeacherFamily(
        name="tiny_wedlm",
        description=(
            "tiny WeDLM-class teacher (Qwen3ForCausalLM, hidden 32, 2 layers, 151,936 rows, seeded random init), "
            "paper regime, HumanEval chat pairs (real Qwen vocabulary), positions masked by tide.noise; "
            "untrained, so its distributions are broad"
        ),
        logits=torch.cat(logits),
        gold=torch.cat(gold).long(),
        t=torch.cat(times),
        rows=rows,
    )


def synthetic_peaked_family(num_positions: int, seed: int = 0, length: int = 256) -> TeacherFamily:
    """Peaked synthetic teacher logits over the shared vocabulary, shaped like a trained LM's.

    Per position: a random order of the ids, drawn without replacement from a Zipf-like prior over ids
    (``-1.5·log(1 + id/100)``, Gumbel top-k trick: frequent ids rank high); the logit of rank r (1-based) is
    ``-α·log r - 0.12·(log r)² + 0.3·N(0, 1)`` with α ~ U(0.8, 1.6), plus a top-1 bonus of U(0, 3). At T = 1
    the top 64 ids then hold about 90-99.8 % of the mass and the last ids sit 25-40 nats below the first, as
    in trained LMs. The gold id is drawn from the teacher's own distribution (usually, not always, its top-1).
    """
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    log_prior = -1.5 * torch.log1p(torch.arange(VOCAB, dtype=torch.float32) / 100.0)
    rank_log = torch.log(torch.arange(1, VOCAB + 1, dtype=torch.float32))
    logits = torch.empty(num_positions, VOCAB)
    for row in range(num_positions):
        gumbel = -torch.log(-torch.log(torch.rand(VOCAB, generator=gen).clamp_min(1e-20)))
        order = torch.argsort(log_prior + gumbel, descending=True)
        alpha = 0.8 + 0.8 * float(torch.rand(1, generator=gen))
        by_rank = -alpha * rank_log - 0.12 * rank_log**2 + 0.3 * torch.randn(VOCAB, generator=gen)
        by_rank[0] += 3.0 * float(torch.rand(1, generator=gen))
        logits[row, order] = by_rank
    gold = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=gen)[:, 0]
    prior_probs = torch.softmax(log_prior, dim=0)
    times, rows = [], []
    for start in range(0, num_positions, ROW_TARGETS):
        count = min(ROW_TARGETS, num_positions - start)
        t = float(1e-3 + (1 - 1e-3) * rng.random())
        positions = np.sort(rng.choice(np.arange(length // 4, length), size=count, replace=False))
        ids = torch.multinomial(prior_probs, length, replacement=True, generator=gen).numpy()
        ids[positions] = gold[start : start + count].numpy()
        maskable = np.arange(length) >= length // 4
        rows.append(_row(f"synthetic:{start // ROW_TARGETS}", int(rng.integers(0, 2**63 - 1)), t, ids, maskable,
                         positions, ids, positions, start))
        times.append(torch.full((count,), t))
    return TeacherFamily(
        name="synthetic_peaked",
        description=(
            "synthetic trained-LM-like: ids ordered by a Zipf-like prior (Gumbel top-k), logit of rank r = "
            "-alpha*log r - 0.12*log(r)^2 + 0.3*N(0,1), alpha ~ U(0.8, 1.6), top-1 bonus U(0, 3); "
            "gold id sampled from the teacher"
        ),
        logits=logits,
        gold=gold,
        t=torch.cat(times),
        rows=rows,
    )


def student_logits(teacher_logits: torch.Tensor, seed: int) -> torch.Tensor:
    """A student that partly agrees with the teacher: 0.7·z_T + 0.7·std(z_T)·N(0, 1), row-wise std."""
    gen = torch.Generator().manual_seed(seed + 1)
    noise = torch.randn(teacher_logits.shape, generator=gen)
    scale = teacher_logits.std(dim=1, keepdim=True)
    return STUDENT_AGREEMENT * teacher_logits + STUDENT_NOISE * scale * noise


def write_target_shard(directory: Path, family: TeacherFamily, k: int, value_dtype: str) -> Path:
    """Top-k targets of every position of ``family`` as one shard (one pass, ``plain``); returns its path."""
    targets = sparse_targets(family.logits, family.gold, k=k, shared_vocab_size=VOCAB, temperatures=TEMPERATURES)
    values_np = targets.topk_values.numpy().astype(np.float16 if value_dtype == "float16" else np.float32)
    rows = []
    for base in family.rows:
        part = base["_slice"]
        row = {name: value for name, value in base.items() if name != "_slice"}
        row[f"{PASS}_topk_ids"] = targets.topk_ids[part].numpy()
        row[f"{PASS}_topk_values"] = values_np[part]
        row[f"{PASS}_log_partitions"] = targets.log_partitions[part].numpy()
        row[f"{PASS}_gold_logprob"] = targets.gold_logprob[part].numpy()
        rows.append(row)
    schema = shared_schema(k=k, value_dtype=value_dtype, num_temperatures=len(TEMPERATURES), passes=[PASS])
    name = f"shard-{family.name}-k{k}-{value_dtype}.parquet"
    write_shard(directory, name, table_from_rows(rows, schema), schema=schema)
    return directory / name


def read_targets(shard: Path, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Read back (ids int64 (N, k), values fp32 (N, k), log_partitions fp32 (N, n_T)) from a shard."""
    table = pq.read_table(shard, columns=list(TARGET_COLUMNS[:3]))

    def flat(name: str, width: int, dtype) -> torch.Tensor:
        column = pa.concat_arrays(table.column(name).chunks).flatten().flatten()
        return torch.from_numpy(column.to_numpy(zero_copy_only=False).astype(dtype)).reshape(-1, width)

    return (
        flat(TARGET_COLUMNS[0], k, np.int64),
        flat(TARGET_COLUMNS[1], k, np.float32),
        flat(TARGET_COLUMNS[2], len(TEMPERATURES), np.float32),
    )


def column_bytes(shard: Path) -> dict[str, int]:
    """Compressed bytes per top-level column, summed over the row groups (from the Parquet footer)."""
    meta = pq.ParquetFile(shard).metadata
    sizes: dict[str, int] = {}
    for group in range(meta.num_row_groups):
        for index in range(meta.num_columns):
            column = meta.row_group(group).column(index)
            name = column.path_in_schema.split(".")[0]
            sizes[name] = sizes.get(name, 0) + int(column.total_compressed_size)
    return sizes


def reconstruction_kl(teacher_logits: torch.Tensor, ids: torch.Tensor, values: torch.Tensor,
                      log_partition: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per position KL(p ‖ r), fp32 (N,): p the full tempered teacher, r the top-k reconstruction."""
    log_p = torch.log_softmax(teacher_logits / temperature, dim=-1)
    log_r = reconstruct_log_probs(ids, values, log_partition, temperature, VOCAB)
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_r), torch.zeros_like(p)).sum(-1)


def reference_losses(z_teacher: torch.Tensor, z_student: torch.Tensor, t: torch.Tensor,
                     temperature: float, progress: float) -> dict[str, torch.Tensor]:
    """Per position terms of the three losses on full logits, written from docs/design.md#losses (fp64).

    Returns ``kl`` KL(p_T ‖ p_S), ``reverse_kl`` KL(p_S ‖ p_T) and ``tidal`` w(t)·KL(r ‖ p_S), each (N,),
    without the T² factor and without the mean.
    """
    zt, zs, t = z_teacher.double(), z_student.double(), t.double()
    log_p = torch.log_softmax(zt / temperature, dim=-1)
    log_q = torch.log_softmax(zs / temperature, dim=-1)
    g = 0.5 * (1.0 - math.cos(math.pi * progress))
    lam = (0.1 + (0.9 - 0.1) * g) * (1.0 - t)
    log_r = torch.log_softmax((1.0 - lam)[:, None] * zs / temperature + lam[:, None] * zt / temperature, dim=-1)
    weight = torch.exp(-((t - 0.5) ** 2) / (2 * 0.15**2))
    return {
        "kl": (log_p.exp() * (log_p - log_q)).sum(-1),
        "reverse_kl": (log_q.exp() * (log_q - log_p)).sum(-1),
        "tidal": weight * (log_r.exp() * (log_r - log_q)).sum(-1),
    }


def sparse_losses(z_student: torch.Tensor, ids: torch.Tensor, values: torch.Tensor, log_partition: torch.Tensor,
                  t: torch.Tensor, temperature: float, progress: float) -> dict[str, float]:
    """The three losses of :mod:`tide.losses` on top-k targets (T² and the mean included)."""
    return {
        "kl": float(kl_loss(z_student, ids, values, log_partition, temperature=temperature)),
        "reverse_kl": float(reverse_kl_loss(z_student, ids, values, log_partition, temperature=temperature)),
        "tidal": float(tidal_loss(z_student, ids, values, log_partition, t, temperature=temperature,
                                  progress=progress)),
    }


def _chunks(n: int) -> list[slice]:
    return [slice(s, min(s + CHUNK, n)) for s in range(0, n, CHUNK)]


def full_losses(family: TeacherFamily, z_student: torch.Tensor, temperature: float) -> dict[str, float]:
    """The three reference losses on the full logits at ``temperature`` (T² and the mean included)."""
    n = family.logits.shape[0]
    sums = {"kl": 0.0, "reverse_kl": 0.0, "tidal": 0.0}
    for part in _chunks(n):
        terms = reference_losses(family.logits[part], z_student[part], family.t[part], temperature, PROGRESS)
        for name, value in terms.items():
            sums[name] += float(value.sum())
    return {name: temperature**2 * total / n for name, total in sums.items()}


def _errors(sparse: dict[str, float], reference: dict[str, float]) -> dict[str, dict[str, float | None]]:
    return {
        name: {
            "full": reference[name],
            "top_k": sparse[name],
            "abs_error": abs(sparse[name] - reference[name]),
            "rel_error": abs(sparse[name] - reference[name]) / abs(reference[name]) if reference[name] else None,
        }
        for name in reference
    }


def measure(family: TeacherFamily, z_student: torch.Tensor, reference: dict[str, dict[str, float]], k: int,
            value_dtype: str, directory: Path) -> dict:
    """All figures of one (family, k, value dtype)."""
    shard = write_target_shard(directory, family, k, value_dtype)
    sizes = column_bytes(shard)
    n = family.logits.shape[0]
    ids, values, log_partitions = read_targets(shard, k)
    if ids.shape[0] != n:
        raise RuntimeError(f"{shard}: read back {ids.shape[0]} target positions, wrote {n}")

    kl_stats: dict[str, dict[str, float]] = {}
    for column, temperature in enumerate(TEMPERATURES):
        per_position = torch.cat([
            reconstruction_kl(family.logits[p], ids[p], values[p], log_partitions[p, column], temperature)
            for p in _chunks(n)
        ])
        finite = torch.isfinite(per_position)
        kl_stats[f"T={temperature:g}"] = {
            "mean": float(per_position[finite].mean()) if bool(finite.any()) else None,
            "max": float(per_position[finite].max()) if bool(finite.any()) else None,
            "infinite_positions": int((~finite).sum()),
        }
    losses, tails = {}, {}
    for column, temperature in enumerate(TEMPERATURES):
        sparse = sparse_losses(z_student, ids, values, log_partitions[:, column], family.t, temperature, PROGRESS)
        losses[f"T={temperature:g}"] = _errors(sparse, reference[f"T={temperature:g}"])
        tail = 1.0 - torch.exp(values / temperature - log_partitions[:, column, None]).sum(-1)
        tails[f"T={temperature:g}"] = float(tail.clamp(0.0, 1.0).mean())
    target_bytes = sum(sizes[name] for name in TARGET_COLUMNS)
    return {
        "k": k,
        "value_dtype": value_dtype,
        "target_positions": n,
        "target_column_bytes": target_bytes,
        "bytes_per_target_position": target_bytes / n,
        "bytes_per_target_position_by_column": {name: sizes[name] / n for name in TARGET_COLUMNS},
        "shard_bytes": shard.stat().st_size,
        "shard_bytes_per_target_position": shard.stat().st_size / n,
        "raw_bytes_per_target_position": k * (4 + (2 if value_dtype == "float16" else 4)) + 4 * len(TEMPERATURES) + 4,
        "mean_tail_mass": tails,
        "kl_full_to_reconstruction": kl_stats,
        "loss": losses,
    }


def exact_at_full_vocabulary(family: TeacherFamily, z_student: torch.Tensor, positions: int = 8) -> dict[str, float]:
    """Check of the reference: tide.losses with k = V (fp32 values, in memory) on a few positions against
    :func:`reference_losses` at every stored temperature; returns the largest absolute difference per loss
    (fp32 tolerance expected)."""
    part = slice(0, positions)
    targets = sparse_targets(family.logits[part], family.gold[part], k=VOCAB, shared_vocab_size=VOCAB,
                             temperatures=TEMPERATURES)
    worst = {"kl": 0.0, "reverse_kl": 0.0, "tidal": 0.0}
    for column, temperature in enumerate(TEMPERATURES):
        sparse = sparse_losses(z_student[part], targets.topk_ids, targets.topk_values,
                               targets.log_partitions[:, column], family.t[part], temperature, PROGRESS)
        terms = reference_losses(family.logits[part], z_student[part], family.t[part], temperature, PROGRESS)
        for name in terms:
            worst[name] = max(worst[name], abs(sparse[name] - temperature**2 * float(terms[name].mean())))
    return worst


def environment() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyarrow": pa.__version__,
        "numpy": np.__version__,
    }


def run(num_positions: int, seed: int, ks: Sequence[int] = KS, value_dtypes: Sequence[str] = VALUE_DTYPES,
        families: Sequence[str] = ("tiny_wedlm", "synthetic_peaked")) -> dict:
    """Run the sweep and return the JSON-ready result."""
    workdir = Path(tempfile.mkdtemp(prefix="bench_fidelity_k_"))
    try:
        result: dict = {
            "benchmark": "fidelity_k",
            "config": {
                "ks": list(ks),
                "vocab": VOCAB,
                "temperatures": list(TEMPERATURES),
                "tidal": {"progress": PROGRESS, "axis": "both", "decay": "cosine", "lambda0": 0.1, "lambda_max": 0.9,
                          "weighting": "midrange"},
                "value_dtypes": list(value_dtypes),
                "positions_per_family": num_positions,
                "target_positions_per_row": ROW_TARGETS,
                "passes": [PASS],
                "compression": "zstd level 3 (cache_schema.write_shard defaults)",
                "student": f"{STUDENT_AGREEMENT}*z_T + {STUDENT_NOISE}*std(z_T)*N(0,1) per row",
                "bytes_method": "compressed bytes of the plain_topk_ids/topk_values/log_partitions/gold_logprob "
                                "columns (Parquet footer) / target positions; every masked position is a target",
                "seed": seed,
            },
            "families": {},
            "environment": environment(),
        }
        builders = {
            "tiny_wedlm": lambda: tiny_wedlm_family(num_positions, workdir, seed),
            "synthetic_peaked": lambda: synthetic_peaked_family(num_positions, seed),
        }
        for name in families:
            if name not in builders:
                raise ValueError(f"unknown family {name!r}; known: {sorted(builders)}")
            t0 = time.perf_counter()
            family = builders[name]()
            z_student = student_logits(family.logits, seed)
            reference = {f"T={temp:g}": full_losses(family, z_student, temp) for temp in TEMPERATURES}
            logger.info("%s: %d positions ready in %.1f s", name, family.logits.shape[0], time.perf_counter() - t0)
            entries = []
            for value_dtype in value_dtypes:
                for k in ks:
                    entry = measure(family, z_student, reference, k, value_dtype, workdir / "shards")
                    logger.info("%s k=%d %s: %.1f B/position, KL(T=1) %s", name, k, value_dtype,
                                entry["bytes_per_target_position"], entry["kl_full_to_reconstruction"]["T=1"]["mean"])
                    entries.append(entry)
            result["families"][name] = {
                "description": family.description,
                "positions": int(family.logits.shape[0]),
                "rows": len(family.rows),
                "full_logit_losses": reference,
                "check_k_equals_vocab_abs_diff": exact_at_full_vocabulary(family, z_student),
                "sweep": entries,
            }
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _print_table(result: dict) -> None:
    for name, family in result["families"].items():
        print(f"\n{name}: {family['positions']} positions — {family['description']}")
        print(f"{'k':>4} {'dtype':>8} {'B/pos':>8} {'KL T=1':>10} {'KL T=2':>10} {'kl err':>9} {'rkl err':>9} "
              f"{'tidal err':>9}  (loss errors relative, T = 2)")
        for e in family["sweep"]:
            kl = e["kl_full_to_reconstruction"]
            err = {n: e["loss"]["T=2"][n]["rel_error"] for n in ("kl", "reverse_kl", "tidal")}

            def fmt(value) -> str:
                return "inf" if value is None else f"{value:.2e}"

            print(f"{e['k']:>4} {e['value_dtype']:>8} {e['bytes_per_target_position']:>8.1f} "
                  f"{fmt(kl['T=1']['mean']):>10} {fmt(kl['T=2']['mean']):>10} {fmt(err['kl']):>9} "
                  f"{fmt(err['reverse_kl']):>9} {fmt(err['tidal']):>9}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=256, help="target positions per family (default 256)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ks", type=int, nargs="+", default=list(KS))
    parser.add_argument("--families", nargs="+", default=["tiny_wedlm", "synthetic_peaked"])
    parser.add_argument("--value-dtypes", nargs="+", default=list(VALUE_DTYPES), choices=VALUE_DTYPES)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fidelity_k.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.positions < 1:
        parser.error(f"--positions must be >= 1, got {args.positions}")
    if any(k < 1 or k > VOCAB for k in args.ks):
        parser.error(f"--ks must lie in [1, {VOCAB}], got {args.ks}")
    t0 = time.perf_counter()
    result = run(args.positions, args.seed, args.ks, args.value_dtypes, args.families)
    result["seconds"] = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    _print_table(result)
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
