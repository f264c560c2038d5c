"""Fast start and remote reading: tide-train's start-up on a large cache with lazy vs up-front checksums,
and reader throughput from a loopback S3 server vs local disk.

1. **Start-up.** A synthetic ``cross`` cache of at least ``--cache-gb`` GB (random ids and chunk log-probs, so
   zstd cannot shrink it; written one shard at a time with ``tide.testing.synthetic_cache``) and a tiny
   student. ``train()`` runs one optimizer step, timed from the call to the end of that step, with the
   default lazy checksums (start-up reads sizes and Parquet footers; a shard is hashed the first time this
   process reads it) and with ``--verify-checksums`` (every shard hashed before the first step: what every
   start did before). Both orders are run and the best of each is kept; the cache sits in the page cache
   either way (it was just written), so the difference is hashing, not disk.
2. **Throughput.** A smaller cache (``--s3-mb``) pushed to a moto S3 server started on 127.0.0.1 in its own
   process (so it does not compete with the reader for the interpreter), then read whole through
   ``CacheReader.iter_batches`` (the training columns, read-ahead on and off) from S3 and from local disk:
   compressed MB/s and rows/s.

Every cache is deleted afterwards. Prints the figures and writes ``benchmarks/results/remote.json``.

    .venv/bin/python benchmarks/bench_remote.py [--cache-gb 2.0] [--s3-mb 256]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

logger = logging.getLogger("bench_remote")

SEQ = 2048  # tokens per cached row (training truncates to TRAIN_LENGTH: the step stays small)
CHUNK = 8  # tokens per chunk
TRAIN_LENGTH = 64
ROWS_PER_SHARD = 2048  # start-up cache: ~60 MB shards
S3_ROWS_PER_SHARD = 256  # throughput cache: ~8 MB shards (moto copies the whole object for each ranged GET, so
# its cost per request grows with the object; real object stores serve ranges without that)
ROW_GROUP_ROWS = 64


def _spec(tokenizer, rows_per_shard: int):
    from tide.testing.synthetic_cache import SyntheticCacheSpec
    from tide.tokenizer_fingerprint import tokenizer_fingerprint

    return SyntheticCacheSpec(
        pipeline="cross", student_fingerprint=tokenizer_fingerprint(tokenizer), mask_token_id=tokenizer.mask_token_id,
        eos_token_id=tokenizer.eos_token_id, block_size=32, max_length=SEQ, student_vocab_size=len(tokenizer),
        replicas=2, passes=("plain", "compdemo"), teacher_vocab_size=len(tokenizer), row_group_rows=ROW_GROUP_ROWS,
        rows_per_shard=rows_per_shard)


def _shard_rows(shard: int, rows: int, vocab: int, eos: int):
    from tide.noise import chunk_consistent_mask
    from tide.testing.synthetic_cache import random_base_rows

    base = random_base_rows(num_samples=rows // 2, replicas=2, seq_len=SEQ, block_size=32, vocab_size=vocab,
                            eos_token_id=eos, prompt_len=16, seed=1000 + shard)
    gen = np.random.default_rng(shard)
    starts = np.arange(0, SEQ, CHUNK)
    for row in base:
        row.sample_id = f"synthetic:{shard}:{row.sample_id}"
        row.sample_key = int(gen.integers(0, 2**62))
        row.chunk_start, row.chunk_end = starts, starts + CHUNK
        row.masked = chunk_consistent_mask(np.asarray(row.masked), starts, starts + CHUNK)[0]  # as pipeline A masks
        row.chunk_in_prompt = starts < 16
        row.chunk_logprob = {p: -gen.exponential(2.0, size=len(starts)).astype(np.float32)
                             for p in ("plain", "compdemo")}
    return base


def write_cache(path: Path, tokenizer, target_bytes: int, rows_per_shard: int) -> dict:
    """A cache of at least ``target_bytes`` bytes: the first shard is measured, the rest follow its size."""
    from tide.testing.synthetic_cache import write_synthetic_shards

    started = time.perf_counter()
    probe = path.parent / (path.name + "-probe")
    vocab, eos = len(tokenizer), tokenizer.eos_token_id
    write_synthetic_shards(probe, [_shard_rows(0, rows_per_shard, vocab, eos)], _spec(tokenizer, rows_per_shard), 1)
    shard_bytes = sum(f.stat().st_size for f in (probe / "data").iterdir())
    _remove(probe)
    shards = max(1, -(-target_bytes // shard_bytes))
    write_synthetic_shards(path, (_shard_rows(s, rows_per_shard, vocab, eos) for s in range(shards)),
                           _spec(tokenizer, rows_per_shard), shards)
    size = sum(f.stat().st_size for f in (path / "data").iterdir())
    return {"bytes": size, "shards": shards, "rows": shards * rows_per_shard, "seconds": time.perf_counter() - started}


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def time_start(cache: Path, student: Path, out: Path, verify: bool) -> float:
    """Seconds from ``train()`` to the end of its first optimizer step."""
    from stages.train.config import TrainConfig
    from stages.train.loop import train

    _remove(out)
    config = TrainConfig(cache=str(cache), student=str(student), output=str(out), mode="calm", batch_size=2,
                         max_steps=1, save_every=0, log_every=1, warmup_steps=1, mixed_precision="no", seed=0,
                         keep_checkpoints=0, truncate_length=TRAIN_LENGTH, val_fraction=0.0,
                         verify_checksums=verify, report_to=["jsonl"])
    marks: dict[str, float] = {}
    started = time.perf_counter()
    train(config, after_step=lambda step: marks.setdefault("first", time.perf_counter()))
    _remove(out)
    return marks["first"] - started


def time_reader_open(cache: str, checksums: str) -> float:
    from cache_schema.reader import CacheReader

    started = time.perf_counter()
    CacheReader(cache, checksums=checksums).close()
    return time.perf_counter() - started


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_s3() -> tuple[subprocess.Popen, str]:
    """A moto S3 server in its own process on a free loopback port."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return server, endpoint
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError("the moto S3 server did not start")


def read_throughput(cache: str, columns: list[str], read_ahead: int, passes: int = 2) -> dict:
    """Best of ``passes`` full reads through CacheReader.iter_batches."""
    from cache_schema.reader import CacheReader

    best = None
    for _ in range(passes):
        reader = CacheReader(cache, checksums="off", read_ahead=read_ahead)
        started = time.perf_counter()
        rows = sum(table.num_rows for table in reader.iter_batches(columns))
        seconds = time.perf_counter() - started
        reader.close()
        best = seconds if best is None else min(best, seconds)
    size = reader.manifest.num_bytes
    return {"seconds": best, "rows_per_second": rows / best, "mb_per_second": size / best / 1e6, "bytes": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-gb", type=float, default=2.0, help="size of the start-up cache (GB, >= 2)")
    parser.add_argument("--s3-mb", type=float, default=256.0, help="size of the cache read from S3 (MB)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the caches go (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "remote.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from tide.testing.tiny_models import build_tiny_model
    from tide.testing.tokenizers import build_qwen_tokenizer

    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="bench-remote-") as tmp:
        work = Path(tmp)
        tokenizer = build_qwen_tokenizer(work / "tokenizer")
        student = build_tiny_model("student", work / "student", tokenizer=tokenizer, hidden_size=16, num_layers=1)
        big = work / "big"
        written = write_cache(big, tokenizer, int(args.cache_gb * 1e9), ROWS_PER_SHARD)
        print(f"start-up cache: {written['bytes'] / 1e9:.2f} GB in {written['shards']} shards, {written['rows']} rows "
              f"(written in {written['seconds']:.0f} s)")
        lazy, eager = [], []
        for verify in (False, True, False, True):
            (eager if verify else lazy).append(time_start(big, student, work / "run", verify))
        open_lazy = min(time_reader_open(str(big), "lazy") for _ in range(2))
        open_eager = time_reader_open(str(big), "open")
        startup = {"lazy_seconds": min(lazy), "verify_at_start_seconds": min(eager),
                   "verify_at_start_over_lazy": min(eager) / min(lazy), "runs_lazy": lazy, "runs_verify": eager,
                   "reader_open_lazy_seconds": open_lazy, "reader_open_verify_seconds": open_eager,
                   "cache_bytes": written["bytes"], "shards": written["shards"], "rows": written["rows"]}
        print(f"tide-train start to first step: {min(eager):.2f} s hashing every shard first, {min(lazy):.2f} s "
              f"lazy: {startup['verify_at_start_over_lazy']:.1f}x; opening the reader {open_eager:.2f} s vs "
              f"{open_lazy:.3f} s")
        _remove(big)

        small = work / "small"
        written_small = write_cache(small, tokenizer, int(args.s3_mb * 1e6), S3_ROWS_PER_SHARD)
        server, endpoint = start_s3()
        os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                          AWS_DEFAULT_REGION="us-east-1")
        try:
            import s3fs

            from cache_schema.store import open_store
            from cache_schema.transfer import copy_cache

            s3fs.S3FileSystem().mkdir("bench")
            url = "s3://bench/cache"
            started = time.perf_counter()
            copy_cache(open_store(small), open_store(url), verify=False)
            push_seconds = time.perf_counter() - started
            columns = ["input_ids", "maskable", "masked_positions", "t", "replica", "chunk_student_start",
                       "chunk_student_end", "chunk_masked", "chunk_in_prompt", "plain_chunk_logprob"]
            reads = {"local_read_ahead_4": read_throughput(str(small), columns, 4),
                     "s3_read_ahead_4": read_throughput(url, columns, 4),
                     "s3_read_ahead_0": read_throughput(url, columns, 0)}
            s3_open = time_reader_open(url, "lazy")
        finally:
            server.terminate()
            server.wait(timeout=30)
        throughput = {**reads, "s3_over_local": reads["s3_read_ahead_4"]["mb_per_second"] /
                      reads["local_read_ahead_4"]["mb_per_second"],
                      "read_ahead_gain_s3": reads["s3_read_ahead_4"]["mb_per_second"] /
                      reads["s3_read_ahead_0"]["mb_per_second"],
                      "push_seconds": push_seconds, "s3_reader_open_seconds": s3_open,
                      "cache_bytes": written_small["bytes"], "shards": written_small["shards"], "columns": columns}
        for name, value in reads.items():
            print(f"reader {name:20s} {value['mb_per_second']:8.1f} MB/s  {value['rows_per_second']:9.0f} rows/s")
        print(f"S3 / local throughput {throughput['s3_over_local']:.2f}; read-ahead gain on S3 "
              f"{throughput['read_ahead_gain_s3']:.2f}x; push {push_seconds:.1f} s; open from S3 {s3_open:.2f} s")

    result = {"config": {"cache_gb": args.cache_gb, "s3_mb": args.s3_mb, "seq": SEQ, "chunk": CHUNK,
                         "rows_per_shard": ROWS_PER_SHARD, "s3_rows_per_shard": S3_ROWS_PER_SHARD, "row_group_rows": ROW_GROUP_ROWS,
                         "train_length": TRAIN_LENGTH},
              "startup": startup, "throughput": throughput}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
