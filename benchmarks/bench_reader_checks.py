"""What the reader's content checks cost training: masked positions per second through the training data
path with the checks on and off, in one process.

Builds a synthetic format-v2 shared cache with :mod:`tide.testing.synthetic_cache` (rank24-delta8 words, the
build's default k policy: mass 0.9 at T = 1, k in [16, 64]; temperatures [1.0, 2.0]; both passes; every
masked position a target position; student length 512) of at least ``--min-masked`` masked positions, then
streams it as a vocabulary-mode run does: row groups → :class:`stages.train.data.CacheStream` batches
carrying the plain pass's :class:`tide.targets.SparseTargets`, on one thread (``read_ahead=0``, one torch
thread), with ``CacheReader(content_checks=False)`` and ``True`` alternately, best of ``--repeats``. Each
row group is checked once per reader, as in training, so the figures are a first epoch's (later epochs
re-read without checking). The teacher is synthetic (Gaussian logits over a ``--vocab``-id slice, scaled
so the mass policy keeps tens of entries): what the checks cost depends on the entries and rows, not on
where the logits came from. The ratio is the figure to compare between machines.

Writes ``benchmarks/results/reader_checks.json``.

    .venv/bin/python benchmarks/bench_reader_checks.py [--samples 800] [--repeats 3] [--out FILE]
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
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cache_schema.reader import CacheReader  # noqa: E402
from stages.train.collate import CollateSpec  # noqa: E402
from stages.train.data import CacheStream, StreamConfig, columns_for  # noqa: E402
from stages.train.pipelines import train_pipeline  # noqa: E402
from tide.targets import KPolicy  # noqa: E402
from tide.testing.synthetic_cache import SyntheticCacheSpec, random_base_rows, write_synthetic_cache  # noqa: E402

SEQ, BLOCK, EOS, MASK = 512, 32, 151_645, 151_665
PASS = "plain"
DEFAULT_POLICY = KPolicy(kind="mass", ceiling=64, mass=0.9, temperature=1.0, floor=16)  # the build's default
LOGIT_SCALE = 2.5  # Gaussian logits times this: the mass policy keeps tens of entries (the figure is printed)


def build_cache(directory: Path, samples: int, vocab: int, seed: int) -> dict:
    rows = random_base_rows(num_samples=samples, replicas=1, seq_len=SEQ, block_size=BLOCK, vocab_size=vocab,
                            eos_token_id=EOS, prompt_len=16, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    for row in rows:
        row.target_positions = np.flatnonzero(row.masked)
        row.teacher_logits = {p: LOGIT_SCALE * torch.randn(len(row.target_positions), vocab, generator=gen)
                              for p in ("plain", "compdemo")}
    spec = SyntheticCacheSpec(
        pipeline="shared", student_fingerprint="bench", mask_token_id=MASK, eos_token_id=EOS, block_size=BLOCK,
        max_length=SEQ, student_vocab_size=151_936, replicas=1, passes=("plain", "compdemo"),
        k=DEFAULT_POLICY.ceiling, k_policy=DEFAULT_POLICY, shared_vocab_size=vocab, teacher_vocab_size=151_936,
        temperatures=(1.0, 2.0), row_group_rows=64, rows_per_shard=256,
    )
    manifest = CacheReader(write_synthetic_cache(directory, rows, spec)).manifest
    return {"rows": manifest.num_rows, "target_items": manifest.num_targets, "shards": len(manifest.shards),
            "bytes": manifest.num_bytes, "masked_positions": int(sum(int(r.masked.sum()) for r in rows))}


def stream_once(directory: Path, checks: bool, batch_size: int) -> tuple[float, int, int]:
    """Seconds, masked positions and target entries of one pass over the cache through the training path."""
    reader = CacheReader(directory, read_ahead=0, content_checks=checks)
    pipeline = train_pipeline(reader.manifest)
    spec = CollateSpec(pad_token_id=EOS, block_size=BLOCK, pipeline=pipeline, target_pass=PASS)
    stream = CacheStream(reader, spec, columns_for(pipeline, PASS),
                         StreamConfig(batch_size=batch_size, shuffle=False, shuffle_window=1))
    masked = entries = 0
    start = time.perf_counter()
    for batch, _ in stream.batches(stream.start_cursor(), epochs=1):
        masked += int(batch.masked.sum())
        entries += int(batch.vocab.teacher.counts.sum())
    seconds = time.perf_counter() - start
    reader.close()
    return seconds, masked, entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=800, help="rows of the cache (one replica)")
    parser.add_argument("--vocab", type=int, default=2048, help="ids of the synthetic shared vocabulary slice")
    parser.add_argument("--min-masked", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "reader_checks.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    workdir = Path(tempfile.mkdtemp(prefix="bench_reader_checks_"))
    try:
        started = time.perf_counter()
        cache = build_cache(workdir / "cache", args.samples, args.vocab, args.seed)
        logging.info("built %d rows, %d masked positions in %.1f s", cache["rows"], cache["masked_positions"],
                     time.perf_counter() - started)
        if cache["masked_positions"] < args.min_masked:
            raise SystemExit(f"only {cache['masked_positions']} masked positions (< --min-masked "
                             f"{args.min_masked}); raise --samples")
        best = {False: float("inf"), True: float("inf")}
        masked = entries = 0
        for _ in range(args.repeats):
            for checks in (False, True):  # alternated, so drift in the machine's speed hits both alike
                seconds, masked, entries = stream_once(workdir / "cache", checks, args.batch_size)
                best[checks] = min(best[checks], seconds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "threads": 1},
        "cache": cache | {"vocab": args.vocab, "k_policy": "mass 0.9 at T=1, k 16..64", "temperatures": [1.0, 2.0],
                          "seq_len": SEQ, "row_group_rows": 64},
        "masked_positions": masked, "target_entries": entries, "repeats": args.repeats,
        "checks_off": {"seconds": best[False], "masked_positions_per_second": masked / best[False]},
        "checks_on": {"seconds": best[True], "masked_positions_per_second": masked / best[True]},
        "ratio_on_over_off": best[True] / best[False],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{masked:,} masked positions (each a target), {entries / max(masked, 1):.1f} entries per target")
    print(f"checks off: {result['checks_off']['masked_positions_per_second']:>12,.0f} masked positions/s")
    print(f"checks on:  {result['checks_on']['masked_positions_per_second']:>12,.0f} masked positions/s")
    print(f"ratio (checks-on time / checks-off time): {result['ratio_on_over_off']:.3f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
