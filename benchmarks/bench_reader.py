"""Cache size and reader speed of the sparse-target encodings at the paper's shape, and their rounding.

Builds a shared-vocabulary cache at the paper's shape — the 151,646-id slice, temperatures [1.0, 2.0],
student length 512, both passes — whose teacher is the calibrated power-law family of
:mod:`benchmarks.fidelity_families` (ids ranked around their frequency in the Qwen tokenization of the
Python stdlib, mean entropy ≈ 2 nats at T = 1), with the build's default k policy
(:meth:`stages.cache_build.config.BuildConfig.target_policy`). The id table is counted from the rows' own
trained tokens, as a build counts it. Then, for every alternative layout of a pass's targets:

* bytes per target item per pass: compressed bytes of the pass's columns (zstd level 3, the writer's
  defaults) / target items; for the default encoding also bytes per masked position of the whole cache;
* decode speed on one thread: a row group's pass columns → padded ids, values and log tails
  (:meth:`cache_schema.codec.PaddedArrays.from_flat`, then the losses' tensors), target items per second;
* for the default encoding, the training path on one thread: Parquet row groups → :class:`stages.train.data.CacheStream`
  batches (batch 8 × 512) with the pass's :class:`tide.targets.SparseTargets`, masked positions per second
  (steady state; the first read's content checks timed apart);
* the rounding of the default encoding against the float32 targets: values (nats), log tails (nats) and the
  tail mass itself (relative), gold log-probs (nats).

Alternatives: ``v1`` (int32 ids, float16 values, fixed k = 64, log-partitions), ``float32`` (exact v2),
``rank24-delta8`` (the default), the same at fixed k = 64, without an id table, with id tables of 256 /
1024 / all ids, ``rank24-abs8`` (8-bit values from the row max, no delta) and ``split`` (ranks and value steps
in two columns). The last two exist only here.

Writes ``benchmarks/results/reader.json``.

    .venv/bin/python benchmarks/bench_reader.py [--rows 96] [--row-group-rows 48] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.fidelity_families import VOCAB, calibrated_logits, real_text_log_prior, stdlib_tokens
from cache_schema.codec import (
    MAX_DELTA,
    VALUE_STEP,
    IdRanks,
    PaddedArrays,
    SparseArrays,
    V1Codec,
    codec_for,
    dequantise_values,
    id_table_from_counts,
    quantise_values,
)
from cache_schema.reader import CacheReader
from cache_schema.schemas import ENCODING_FLOAT32, ENCODING_PACKED, table_from_rows
from cache_schema.writer import DEFAULT_COMPRESSION_LEVEL, dictionary_columns
from stages.cache_build.config import BuildConfig
from stages.cache_build.pipelines import ID_TABLE_SIZE
from stages.train.collate import CollateSpec
from stages.train.data import CacheStream, StreamConfig, columns_for
from stages.train.pipelines import decoded_targets, train_pipeline
from tide.targets import KPolicy, sparse_targets
from tide.testing.synthetic_cache import SyntheticCacheSpec, write_cache_rows

logger = logging.getLogger("bench_reader")

TEMPERATURES = (1.0, 2.0)
PASSES = ("plain", "compdemo")
LENGTH = 512
BLOCK = 32
CHUNK = 128  # teacher positions generated at once
PASS = "plain"  # the pass whose columns the per-pass figures measure


# ------------------------------------------------------------------------------------------------ the rows


def base_rows(num_rows: int, rng: np.random.Generator, id_counts: np.ndarray) -> list[dict]:
    """Common columns of ``num_rows`` rows: real-text-frequency ids, maskable responses, drawn noise."""
    probs = (id_counts + 0.5) / (id_counts + 0.5).sum()
    rows = []
    for index in range(num_rows):
        content = int(rng.integers(LENGTH // 2, LENGTH))
        prompt = int(content * rng.uniform(0.2, 0.5))
        ids = rng.choice(VOCAB, size=LENGTH, p=probs).astype(np.int32)
        maskable = np.arange(LENGTH) >= prompt
        t = float(1e-3 + (1 - 1e-3) * rng.random())
        masked = np.flatnonzero(maskable & (rng.random(LENGTH) < t)).astype(np.int32)
        if masked.size == 0:
            masked = np.array([prompt], dtype=np.int32)
        targets = masked[rng.random(masked.size) < 0.95]  # a few positions lost to alignment
        rows.append({
            "sample_id": f"synthetic:{index}", "sample_key": int(rng.integers(0, 2**63 - 1)), "replica": 0, "t": t,
            "input_ids": ids, "maskable": maskable, "masked_positions": masked,
            "teacher_input_ids": np.concatenate([np.full(20, 5, np.int32), ids]),
            "compdemo_group": (rng.random(targets.size) < 0.5).astype(np.uint8),
            "target_positions": targets.astype(np.int32), "target_teacher_positions": (targets + 20).astype(np.int32),
        })
    return rows


def to_arrays(targets) -> SparseArrays:
    valid = targets.valid().numpy()
    return SparseArrays(targets.counts.numpy().astype(np.int64), targets.topk_ids.numpy()[valid].astype(np.int64),
                        targets.topk_values.numpy()[valid], targets.log_tails.numpy(), targets.gold_logprob.numpy())


def teacher_targets(rows: list[dict], policies: dict[str, KPolicy], id_counts: np.ndarray, seed: int) -> dict:
    """Per policy, the rows' sparse targets (float32, before encoding), and v1's log-partitions at k = 64.

    Both passes store the same targets: Parquet compresses every column chunk on its own, so a pass's bytes
    and decode time do not depend on the other's content, and one teacher draw per row halves the run time.
    """
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed + 1)
    log_prior = real_text_log_prior(id_counts)
    out = {name: [] for name in (*policies, "log_partitions")}
    for row in rows:
        gold = torch.from_numpy(row["input_ids"][row["target_positions"]].astype(np.int64))
        parts = {name: [] for name in out}
        for start in range(0, gold.numel(), CHUNK):
            g = gold[start:start + CHUNK]
            logits = calibrated_logits(g.numel(), log_prior, gen, rng)
            for name, policy in policies.items():
                parts[name].append(to_arrays(sparse_targets(logits, g, k=policy.ceiling, shared_vocab_size=VOCAB,
                                                            temperatures=TEMPERATURES, policy=policy)))
            centred = logits - logits.max(dim=1, keepdim=True).values
            parts["log_partitions"].append(torch.stack([torch.logsumexp(centred / t, 1) for t in TEMPERATURES],
                                                       1).numpy())
        for name in policies:
            out[name].append(SparseArrays.concat(parts[name], len(TEMPERATURES)))
        out["log_partitions"].append(np.concatenate(parts["log_partitions"]))
    return out


# ------------------------------------------------------------------------------------------- alternatives


def abs8_codes(arrays: SparseArrays, ranks: np.ndarray) -> np.ndarray:
    """rank << 8 | round(−value / step) clipped to 255: values from the row max, no delta."""
    steps = np.clip(np.rint(-arrays.values / VALUE_STEP), 0, MAX_DELTA).astype(np.uint32)
    return (ranks[arrays.ids] << np.uint32(8)) | steps


def alternative_columns(name: str, arrays: SparseArrays, ranks: np.ndarray, log_z: np.ndarray | None
                        ) -> dict[str, np.ndarray]:
    """A pass's columns in a bench-only layout (``rank24-abs8``, ``split``) or v1's (fixed k)."""
    common = {"counts": arrays.counts.astype(np.uint32), "log_tails": arrays.log_tails.astype(np.float16),
              "gold": arrays.gold_logprob.astype(np.float16)}
    if name == "rank24-abs8":
        return {**common, "codes": abs8_codes(arrays, ranks)}
    if name == "split":
        return {**common, "ranks": ranks[arrays.ids],
                "steps": quantise_values(arrays.values, arrays.counts)}
    k = int(arrays.counts[0])
    return {"ids": arrays.ids.reshape(-1, k).astype(np.int32), "values": arrays.values.reshape(-1, k).astype(np.float16),
            "log_partitions": log_z.astype(np.float32), "gold": arrays.gold_logprob.astype(np.float32)}


def _arrow_type(value: np.ndarray) -> pa.DataType:
    inner = pa.from_numpy_dtype(value.dtype)
    return pa.list_(pa.list_(inner, value.shape[1])) if value.ndim == 2 else pa.list_(inner)


def column_bytes(path: Path) -> dict[str, int]:
    meta = pq.ParquetFile(path).metadata
    sizes: dict[str, int] = {}
    for group in range(meta.num_row_groups):
        for index in range(meta.num_columns):
            column = meta.row_group(group).column(index)
            name = column.path_in_schema.split(".")[0]
            sizes[name] = sizes.get(name, 0) + int(column.total_compressed_size)
    return sizes


def write_columns(directory: Path, name: str, rows: list[dict[str, np.ndarray]], row_group_rows: int,
                  dictionary: bool = True) -> Path:
    """A Parquet file of bench-only columns, compressed as the cache writer compresses shards (``dictionary``:
    its dictionary columns, else none)."""
    schema = pa.schema([pa.field(c, _arrow_type(v), nullable=False) for c, v in rows[0].items()])
    path = directory / f"{name}.parquet"
    pq.write_table(table_from_rows(rows, schema), path, row_group_size=row_group_rows, compression="zstd",
                   compression_level=DEFAULT_COMPRESSION_LEVEL,
                   use_dictionary=dictionary_columns(schema) if dictionary else False)
    return path


def _flat(table: pa.Table, name: str) -> np.ndarray:
    array = table.column(name).combine_chunks()
    while pa.types.is_list(array.type) or pa.types.is_fixed_size_list(array.type):
        array = array.flatten()
    return array.to_numpy(zero_copy_only=False)


def decode_speed(path: Path, decode, repeats: int) -> float:
    """Best-of-``repeats`` target items per second of ``decode(table) -> (counts, ids, values, tails)`` followed by
    padding, over every row group of ``path``."""
    parquet = pq.ParquetFile(path)
    tables = [parquet.read_row_group(g) for g in range(parquet.metadata.num_row_groups)]
    best, items = float("inf"), 0
    for _ in range(repeats):
        start = time.perf_counter()
        items = 0
        for table in tables:
            counts, ids, values, tails = decode(table)
            # training's padding (v1 decoders give (N, k) arrays: every count is k, so flattening is exact)
            padded = PaddedArrays.from_flat(counts, ids.reshape(-1), values.reshape(-1), tails,
                                            np.zeros(counts.shape[0], dtype=np.float32))
            items += decoded_targets(padded, TEMPERATURES).counts.shape[0]
        best = min(best, time.perf_counter() - start)
    return items / best


def bench_decoder(name: str, id_of: np.ndarray):
    """Decoder of a bench-only layout: ``rank24-abs8`` (absolute steps), ``split`` (two columns) or ``delta``
    (rank24-delta8 words under another id table)."""
    def decode(table: pa.Table):
        counts = _flat(table, "counts").astype(np.int64)
        tails = _flat(table, "log_tails").astype(np.float32).reshape(counts.shape[0], -1)
        if name == "split":
            ids, steps = id_of[_flat(table, "ranks")], _flat(table, "steps").astype(np.int64)
        else:
            words = _flat(table, "codes")
            ids, steps = id_of[words >> np.uint32(8)], (words & np.uint32(MAX_DELTA)).astype(np.int64)
        if name == "rank24-abs8":
            return counts, ids, (-VALUE_STEP * steps).astype(np.float32), tails
        return counts, ids, dequantise_values(steps, counts), tails

    return decode


def v1_decoder(k: int):
    codec = V1Codec(k, TEMPERATURES)

    def decode(table: pa.Table):
        columns = {f"{PASS}_topk_ids": _flat(table, "ids"), f"{PASS}_topk_values": _flat(table, "values"),
                   f"{PASS}_log_partitions": _flat(table, "log_partitions"), f"{PASS}_gold_logprob": _flat(table, "gold")}
        arrays = codec.decode(columns, PASS)
        return arrays.counts, arrays.ids, arrays.values, arrays.log_tails

    return decode


def cache_decoder(codec):
    def decode(table: pa.Table):
        arrays = codec.decode({c: _flat(table, c) for c in codec.columns(PASS)}, PASS)
        return arrays.counts, arrays.ids, arrays.values, arrays.log_tails

    return decode


# ------------------------------------------------------------------------------------------------- driver


def write_cache(directory: Path, rows: list[dict], targets: dict, encoding: str, policy: KPolicy,
                id_table: list[int], row_group_rows: int) -> SyntheticCacheSpec:
    spec = SyntheticCacheSpec(
        pipeline="shared", student_fingerprint="synthetic", mask_token_id=151_669, eos_token_id=151_645,
        block_size=BLOCK, max_length=LENGTH, student_vocab_size=151_936, replicas=1, passes=PASSES,
        k=policy.ceiling, k_policy=policy, encoding=encoding, id_table=tuple(id_table) if encoding == ENCODING_PACKED
        else (), shared_vocab_size=VOCAB, teacher_vocab_size=151_936, temperatures=TEMPERATURES,
        teacher_model_type="qwen3", teacher_mask_token_id=151_665, row_group_rows=row_group_rows,
        rows_per_shard=len(rows), build={"benchmark": "bench_reader"})
    codec = spec.codec()
    full = []
    for index, row in enumerate(rows):
        full.append({**row, **{c: v for p in PASSES for c, v in codec.encode(targets[p][index], p).items()}})
    write_cache_rows(directory, full, spec)
    return spec


def training_speed(directory: Path, repeats: int, batch_size: int = 8) -> dict[str, float]:
    """Masked positions per second from the shard's row groups to batches carrying the pass's SparseTargets,
    everything on this thread: no read-ahead threads, Arrow on one CPU thread. A first epoch runs the content
    checks training runs once per row group (their time is reported apart); the best of ``repeats`` epochs
    after it is the steady state — under the full permutation a row group is read many times, checked once."""
    reader = CacheReader(directory, read_ahead=0, content_checks=True)
    pipeline = train_pipeline(reader.manifest)
    spec = CollateSpec(pad_token_id=151_645, block_size=BLOCK, pipeline=pipeline, target_pass=PASS)
    threads = pa.cpu_count()
    pa.set_cpu_count(1)
    try:
        times, masked, items = [], 0, 0
        for _ in range(repeats + 1):
            stream = CacheStream(reader, spec, columns_for(pipeline, PASS),
                                 StreamConfig(batch_size=batch_size, shuffle=False, shuffle_window=1))
            start = time.perf_counter()
            masked = items = 0
            for batch, _ in stream.batches(stream.start_cursor(), epochs=1):
                masked += int(batch.masked.sum())
                items += batch.vocab.teacher.num_positions
            times.append(time.perf_counter() - start)
    finally:
        pa.set_cpu_count(threads)
    best = min(times[1:])
    return {"masked_positions": masked, "target_items": items, "seconds": best, "batch_size": batch_size,
            "first_epoch_with_checks_seconds": times[0],
            "masked_positions_per_second": masked / best, "target_items_per_second": items / best}


def rounding(codec, exact: list[SparseArrays]) -> dict[str, float]:
    """Largest and mean errors of the default encoding's decoded numbers against the float32 targets."""
    value_err, tail_err, mass_err, gold_err = [], [], [], []
    for arrays in exact:
        decoded = codec.decode(codec.encode(arrays, PASS), PASS)
        value_err.append(np.abs(decoded.values - arrays.values))
        finite = np.isfinite(arrays.log_tails)
        tail_err.append(np.abs(decoded.log_tails[finite] - arrays.log_tails[finite]))
        mass_err.append(np.abs(np.expm1(decoded.log_tails[finite].astype(np.float64) - arrays.log_tails[finite])))
        gold_err.append(np.abs(decoded.gold_logprob - arrays.gold_logprob))
    out = {}
    for name, parts in (("value_nats", value_err), ("log_tail_nats", tail_err), ("tail_mass_relative", mass_err),
                        ("gold_logprob_nats", gold_err)):
        joined = np.concatenate(parts)
        out[f"{name}_max"] = float(joined.max())
        out[f"{name}_mean"] = float(joined.mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=96)
    parser.add_argument("--row-group-rows", type=int, default=48,
                        help="rows per row group (builds default to 256; the cost per row group read is fixed)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "reader.json")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="keep the tokenized stdlib here between runs (default: a temporary directory)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    workdir = Path(tempfile.mkdtemp(prefix="bench_reader_", dir=args.work_dir))
    try:
        result = run(args, workdir, tokens_dir=args.work_dir or workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for entry in result["alternatives"]:
        print(f"{entry['name']:<42} {entry['bytes_per_target_per_pass']:7.1f} B/target/pass   "
              f"decode {entry['decode_targets_per_second']:>12,.0f} targets/s")
    default = result["default"]
    print(f"default: {default['bytes_per_masked_position']:.1f} B per masked position (both passes), "
          f"training path {default['training']['masked_positions_per_second']:,.0f} masked positions/s")
    print(f"wrote {args.out}")


def run(args: argparse.Namespace, workdir: Path, tokens_dir: Path) -> dict:
    rng = np.random.default_rng(args.seed)
    train, _ = stdlib_tokens(tokens_dir)
    text_counts = np.bincount(train, minlength=VOCAB)[:VOCAB]
    rows = base_rows(args.rows, rng, text_counts)
    trained = np.bincount(np.concatenate([r["input_ids"][r["maskable"]] for r in rows]), minlength=VOCAB)[:VOCAB]
    default_policy = BuildConfig().target_policy()
    policies = {"default": default_policy, "fixed64": KPolicy.fixed(64)}
    t0 = time.perf_counter()
    targets = teacher_targets(rows, policies, text_counts, args.seed)
    logger.info("targets of %d rows in %.1f s", len(rows), time.perf_counter() - t0)
    n_targets = sum(int(r["target_positions"].size) for r in rows)
    masked = sum(int(r["masked_positions"].size) for r in rows)

    tables = {"none": [], "256": id_table_from_counts(trained, 256), "1024": id_table_from_counts(trained, 1024),
              "4096 (default)": id_table_from_counts(trained, ID_TABLE_SIZE), "all": id_table_from_counts(trained)}
    alternatives = []

    def record(name: str, path: Path, columns: list[str], decode, **extra) -> None:
        sizes = column_bytes(path)
        alternatives.append({"name": name, "bytes_per_target_per_pass": sum(sizes[c] for c in columns) / n_targets,
                             "bytes_by_column": {c: sizes[c] / n_targets for c in columns},
                             "decode_targets_per_second": decode_speed(path, decode, args.repeats), **extra})
        logger.info("%s: %.1f B/target/pass", name, alternatives[-1]["bytes_per_target_per_pass"])

    # production encodings: whole caches (the default one also feeds the training-path measurement)
    caches = {}
    for label, encoding, policy_name, table in (
            ("rank24-delta8 (default)", ENCODING_PACKED, "default", tables["4096 (default)"]),
            ("rank24-delta8, fixed k = 64", ENCODING_PACKED, "fixed64", tables["4096 (default)"]),
            ("float32 (exact)", ENCODING_FLOAT32, "default", [])):
        directory = workdir / label.split()[0] / policy_name
        spec = write_cache(directory, rows, {p: targets[policy_name] for p in PASSES}, encoding,
                           policies[policy_name], table, args.row_group_rows)
        reader = CacheReader(directory)
        codec = codec_for(reader.manifest)
        shard = directory / reader.manifest.shards[0].file
        caches[label] = (directory, reader.manifest, codec)
        record(label, shard, codec.columns(PASS), cache_decoder(codec), policy=policy_name,
               mean_k=float(np.mean(np.concatenate([a.counts for a in targets[policy_name]]))),
               encoding=spec.encoding)
    # bench-only layouts and id-table sizes, pass columns only
    for label, table in tables.items():
        ranks_of = _ranks(table)
        rows_out = []
        for arrays in targets["default"]:
            codes = (ranks_of[arrays.ids] << np.uint32(8)) | quantise_values(arrays.values, arrays.counts).astype(np.uint32)
            rows_out.append({"counts": arrays.counts.astype(np.uint32), "codes": codes,
                             "log_tails": arrays.log_tails.astype(np.float16), "gold": arrays.gold_logprob.astype(np.float16)})
        default = label.startswith("4096")  # the default table: its cache is measured above; here without dictionary
        path = write_columns(workdir, f"table-{label.split()[0]}", rows_out, args.row_group_rows, dictionary=not default)
        record(f"rank24-delta8, id table {label}" + (", no dictionary pages" if default else ""), path,
               list(rows_out[0]), bench_decoder("delta", _ids(table)), policy="default")
    id_of = _ids(tables["4096 (default)"])
    ranks_of = _ranks(tables["4096 (default)"])
    for label in ("rank24-abs8", "split"):
        rows_out = [alternative_columns(label, a, ranks_of, None) for a in targets["default"]]
        path = write_columns(workdir, label, rows_out, args.row_group_rows)
        record(label, path, list(rows_out[0]), bench_decoder(label, id_of), policy="default")
    rows_out = [alternative_columns("v1", a, ranks_of, z) for a, z in zip(targets["fixed64"],
                                                                         targets["log_partitions"], strict=True)]
    path = write_columns(workdir, "v1", rows_out, args.row_group_rows)
    record("v1 (int32 ids + float16 values, k = 64)", path, list(rows_out[0]), v1_decoder(64), policy="fixed64")

    directory, manifest, codec = caches["rank24-delta8 (default)"]
    default = {
        "policy": {"kind": default_policy.kind, "ceiling": default_policy.ceiling, "mass": default_policy.mass,
                   "temperature": default_policy.temperature, "floor": default_policy.floor},
        "bytes_per_masked_position": manifest.num_bytes / masked,
        "bytes_per_target_item": manifest.num_bytes / manifest.num_targets,
        "column_bytes": column_bytes(directory / manifest.shards[0].file),
        "training": training_speed(directory, args.repeats),
        "rounding": rounding(codec, targets["default"]),
    }
    logger.info("default: %.1f B/masked position, %.0f masked positions/s", default["bytes_per_masked_position"],
                default["training"]["masked_positions_per_second"])
    return {
        "config": {"vocab": VOCAB, "temperatures": list(TEMPERATURES), "student_length": LENGTH, "rows": len(rows),
                   "passes": list(PASSES), "row_group_rows": args.row_group_rows, "compression": "zstd level 3",
                   "teacher": "llm_calibrated family (benchmarks/fidelity_families.py)", "measured_pass": PASS,
                   "torch_threads": torch.get_num_threads()},
        "masked_positions": masked, "target_items": n_targets, "default": default, "alternatives": alternatives,
        "environment": {"python": platform.python_version(), "pyarrow": pa.__version__, "torch": torch.__version__,
                        "numpy": np.__version__, "machine": platform.machine()},
    }


def _ids(table: list[int]) -> np.ndarray:
    return IdRanks(table, VOCAB).id_of


def _ranks(table: list[int]) -> np.ndarray:
    return IdRanks(table, VOCAB).rank_of


if __name__ == "__main__":
    main()
