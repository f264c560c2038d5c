"""Cache size and reader speed for a pipeline-B cache at the paper's shape.

Builds a synthetic shared-vocabulary cache — k = 64 over a 151,646-token slice, float16 values, int32 ids,
temperatures [1.0, 2.0], student length 512 — from peaked full-vocabulary teacher distributions, then
measures:

* bytes per masked position (shard bytes / Σ len(masked_positions)) and per target item, with the
  compressed bytes of every column;
* reader decode throughput: masked positions per second through ``CacheReader`` row groups converted to
  torch (``table_to_torch`` on every column), best of a few passes over the cache.

Prints the figures and writes them to ``benchmarks/results/reader.json``.

    .venv/bin/python benchmarks/bench_reader.py [--rows 48] [--passes plain compdemo]

The synthetic teacher: logits = prior(id) + 2.5·N(0, 1) + a peak of U(2, 10) on a "gold" id drawn from the
prior, with prior(id) = −1.5·log(1 + id / 100) (low ids frequent, as in byte-level BPE vocabularies).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from cache_schema import CacheReader, Manifest, shared_schema, table_to_torch, write_manifest
from cache_schema.writer import AsyncShardWriter
from tide.testing.synthetic_cache import SyntheticCacheSpec

logger = logging.getLogger("bench_reader")

VOCAB = 151_646
K = 64
TEMPERATURES = [1.0, 2.0]
LENGTH = 512
BLOCK = 32
CHUNK_ROWS = 128  # full-vocabulary logits generated this many positions at a time


def peaked_targets(gen: torch.Generator, gold: torch.Tensor, prior: torch.Tensor) -> dict[str, np.ndarray]:
    """Top-k targets of synthetic peaked teacher logits at ``gold.numel()`` positions."""
    parts: dict[str, list[np.ndarray]] = {
        "topk_ids": [],
        "topk_values": [],
        "log_partitions": [],
        "gold_logprob": [],
    }
    buffer = torch.empty(CHUNK_ROWS, VOCAB)
    for start in range(0, gold.numel(), CHUNK_ROWS):
        g = gold[start : start + CHUNK_ROWS]
        n = g.numel()
        rows = torch.arange(n)
        logits = buffer[:n]
        torch.randn(n, VOCAB, generator=gen, out=logits)
        logits.mul_(2.5).add_(prior)
        logits[rows, g] += 2.0 + 8.0 * torch.rand(n, generator=gen)
        logits.sub_(logits.max(dim=1, keepdim=True).values)  # values relative to the row max
        values, ids = torch.topk(logits, K, dim=1)
        gold_value = logits[rows, g]
        log_z = []
        previous = 1.0
        for temperature in TEMPERATURES:  # rescale in place from one temperature to the next
            logits.mul_(previous / temperature)
            previous = temperature
            log_z.append(torch.logsumexp(logits, dim=1))
        log_z_t = torch.stack(log_z, dim=1)
        parts["topk_ids"].append(ids.to(torch.int32).numpy())
        parts["topk_values"].append(values.to(torch.float16).numpy())
        parts["log_partitions"].append(log_z_t.numpy().astype(np.float32))
        parts["gold_logprob"].append((gold_value - log_z_t[:, 0]).numpy().astype(np.float32))
    return {key: np.concatenate(value) for key, value in parts.items()}


def synthetic_rows(num_rows: int, passes: list[str], seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    ranks = torch.arange(VOCAB, dtype=torch.float32)
    prior = -1.5 * torch.log1p(ranks / 100.0)
    prior_probs = torch.softmax(prior, dim=0)
    rows = []
    for index in range(num_rows):
        content = int(rng.integers(LENGTH // 2, LENGTH))
        prompt = int(content * rng.uniform(0.2, 0.5))
        ids = torch.multinomial(prior_probs, LENGTH, replacement=True, generator=gen).to(torch.int32).numpy()
        maskable = np.arange(LENGTH) >= prompt
        t = float(1e-3 + (1 - 1e-3) * rng.random())
        masked = np.flatnonzero(maskable & (rng.random(LENGTH) < t)).astype(np.int32)
        targets = masked[rng.random(masked.size) < 0.95]  # a few positions lost to alignment
        teacher_prefix = 20
        teacher_ids = np.concatenate([rng.integers(0, VOCAB, teacher_prefix).astype(np.int32), ids])
        row = {
            "sample_id": f"synthetic:{index}",
            "sample_key": int(rng.integers(0, 2**63 - 1)),
            "replica": 0,
            "t": t,
            "input_ids": ids,
            "maskable": maskable,
            "masked_positions": masked,
            "teacher_input_ids": teacher_ids,
            "compdemo_group": (rng.random(targets.size) < 0.5).astype(np.uint8)
            if "compdemo" in passes
            else np.zeros(0, np.uint8),
            "target_positions": targets,
            "target_teacher_positions": (targets + teacher_prefix).astype(np.int32),
        }
        gold = torch.from_numpy(ids[targets].astype(np.int64))
        for pass_name in passes:
            for key, value in peaked_targets(gen, gold, prior).items():
                row[f"{pass_name}_{key}"] = value
        rows.append(row)
    return rows


def manifest_for(passes: list[str]) -> Manifest:
    return SyntheticCacheSpec(
        pipeline="shared", student_fingerprint="synthetic", mask_token_id=151_669, eos_token_id=151_645,
        block_size=BLOCK, max_length=LENGTH, student_vocab_size=151_936, replicas=1, passes=tuple(passes), k=K,
        shared_vocab_size=VOCAB, teacher_vocab_size=151_936, temperatures=tuple(TEMPERATURES),
        value_dtype="float16", teacher_model_type="qwen3", teacher_mask_token_id=151_665,
        build={"benchmark": "bench_reader"},
    ).manifest()


def column_bytes(path: Path) -> dict[str, int]:
    """Compressed bytes of every column summed over row groups."""
    meta = pq.ParquetFile(path).metadata
    sizes: dict[str, int] = {}
    for group in range(meta.num_row_groups):
        for index in range(meta.num_columns):
            column = meta.row_group(group).column(index)
            name = column.path_in_schema.split(".")[0]
            sizes[name] = sizes.get(name, 0) + column.total_compressed_size
    return sizes


def decode_throughput(path: Path, repeats: int) -> dict[str, float]:
    reader = CacheReader(path)
    masked = 0
    best_read = best_total = float("inf")
    for _ in range(repeats):
        read_seconds = 0.0
        start = time.perf_counter()
        masked = 0
        for unit in range(reader.num_units):
            t0 = time.perf_counter()
            table = reader.read_row_group(unit)
            read_seconds += time.perf_counter() - t0
            tensors = table_to_torch(table)
            masked += int(tensors["masked_positions"].values.numel())
        total = time.perf_counter() - start
        best_read, best_total = min(best_read, read_seconds), min(best_total, total)
    return {
        "masked_positions": masked,
        "seconds": best_total,
        "masked_positions_per_second": masked / best_total,
        "parquet_read_seconds": best_read,
        "to_torch_seconds": best_total - best_read,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=48)
    parser.add_argument("--passes", nargs="+", default=["plain", "compdemo"])
    parser.add_argument("--row-group-rows", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "reader.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)

    t0 = time.perf_counter()
    rows = synthetic_rows(args.rows, args.passes, args.seed)
    generate_seconds = time.perf_counter() - t0
    logger.info("generated %d rows in %.1f s", len(rows), generate_seconds)

    schema = shared_schema(k=K, value_dtype="float16", num_temperatures=len(TEMPERATURES), passes=args.passes)
    directory = Path(tempfile.mkdtemp(prefix="bench_reader_"))
    try:
        manifest = manifest_for(args.passes)
        t0 = time.perf_counter()
        with AsyncShardWriter(directory, schema=schema, row_group_rows=args.row_group_rows) as writer:
            writer.submit("shard-00000-of-00001.parquet", rows)
        write_seconds = time.perf_counter() - t0
        manifest.shards = writer.infos
        write_manifest(directory, manifest)

        shard = directory / manifest.shards[0].file
        total_bytes = manifest.num_bytes
        masked = sum(int(r["masked_positions"].size) for r in rows)
        targets = manifest.num_targets
        columns = column_bytes(shard)
        per_pass = {
            p: sum(size for name, size in columns.items() if name.startswith(f"{p}_")) / targets
            for p in args.passes
        }
        meta = pq.ParquetFile(shard).metadata
        raw = sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups))  # uncompressed
        decode = decode_throughput(directory, args.repeats)
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    result = {
        "config": {
            "vocab": VOCAB,
            "k": K,
            "value_dtype": "float16",
            "id_dtype": "int32",
            "temperatures": TEMPERATURES,
            "student_length": LENGTH,
            "rows": args.rows,
            "passes": args.passes,
            "row_group_rows": args.row_group_rows,
            "compression": "zstd level 3",
        },
        "masked_positions": masked,
        "target_items": targets,
        "shard_bytes": total_bytes,
        "uncompressed_bytes": raw,
        "bytes_per_masked_position": total_bytes / masked,
        "bytes_per_target_item": total_bytes / targets,
        "bytes_per_target_item_per_pass": per_pass,
        "raw_top_k_bytes_per_target_per_pass": K * (4 + 2) + 4 * len(TEMPERATURES) + 4,
        "column_bytes": columns,
        "write_seconds": write_seconds,
        "decode": decode,
        "environment": {
            "python": platform.python_version(),
            "pyarrow": pa.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "machine": platform.machine(),
            "torch_threads": torch.get_num_threads(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"rows {args.rows}, passes {args.passes}, {masked} masked positions, {targets} target items")
    print(f"shard bytes            {total_bytes:,} (uncompressed {raw:,})")
    print(f"bytes / masked position {total_bytes / masked:,.1f}")
    print(f"bytes / target item     {total_bytes / targets:,.1f}")
    for p, value in per_pass.items():
        print(f"  of which pass {p:9s} {value:,.1f} (raw {result['raw_top_k_bytes_per_target_per_pass']})")
    print(
        f"decode                  {decode['masked_positions_per_second']:,.0f} masked positions / s "
        f"(parquet {decode['parquet_read_seconds']:.3f} s + torch {decode['to_torch_seconds']:.3f} s)"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
