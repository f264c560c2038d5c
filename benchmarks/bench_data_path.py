"""Does the data path keep a training step fed? The time the training thread waits for its next batch, as a
share of the step, with the batches read by DataLoader workers and on the training thread itself.

Builds a synthetic format-v2 shared cache as :mod:`bench_reader_checks` does (rank24-delta8 words, the build's
default k policy, temperatures [1.0, 2.0], student length 512, every masked position a target; reader content
checks on, as in training), a student of the 0.6B width (hidden 1024, ``--layers`` layers, the real
151,936-row LM head) and trains ``--steps`` ``kl`` steps at T = 2 from it, timing for each step the wait in
``next()`` (decode + collate + hand-over; on CPU the transfer is a no-op) and the compute. The first step is
left out (worker start-up, allocator warm-up). Also reports what one core supplies on its own: batches and
masked positions per second through the same path with no training, the figure to hold against a GPU's
step rate (a share is only meaningful next to the step it feeds: on CPU the step is seconds long).

Writes ``benchmarks/results/data_path.json``.

    .venv/bin/python benchmarks/bench_data_path.py [--samples 40] [--batch-size 4] [--steps 6] [--layers 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_reader_checks import BLOCK, EOS, PASS, build_cache  # noqa: E402
from cache_schema.reader import CacheReader  # noqa: E402
from stages.train.collate import CollateSpec  # noqa: E402
from stages.train.data import CacheStream, StreamConfig, columns_for  # noqa: E402
from stages.train.loader import batch_loader  # noqa: E402
from stages.train.pipelines import train_pipeline  # noqa: E402
from stages.train.step import StudentStep  # noqa: E402
from tide.losses import LossOptions  # noqa: E402
from tide.objective import Objective  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "data_path.json"
TARGET_SHARE = 0.02


def open_stream(cache: Path, batch_size: int) -> tuple[CacheStream, object]:
    reader = CacheReader(cache, content_checks=True)
    pipeline = train_pipeline(reader.manifest)
    spec = CollateSpec(pad_token_id=EOS, block_size=BLOCK, pipeline=pipeline, target_pass=PASS)
    stream = CacheStream(reader, spec, columns_for(pipeline, PASS), StreamConfig(batch_size=batch_size, seed=1))
    return stream, pipeline


def supply_rate(cache: Path, batch_size: int) -> dict[str, float]:
    """Batches and masked positions per second one core turns out through the training data path."""
    stream, _ = open_stream(cache, batch_size)
    batches = masked = 0
    start = time.perf_counter()
    for batch, _ in stream.batches(stream.start_cursor(), epochs=1):
        batches += 1
        masked += int(batch.masked.sum())
    seconds = time.perf_counter() - start
    return {"batches_per_s": batches / seconds, "masked_positions_per_s": masked / seconds,
            "seconds_per_batch": seconds / batches, "batches": batches}


def fed_steps(cache: Path, student_dir: Path, batch_size: int, steps: int, workers: int, device: str) -> dict:
    """Train ``steps`` steps; per step the seconds spent waiting for the batch and computing."""
    from tide.models.student import load_student

    stream, pipeline = open_stream(cache, batch_size)
    manifest = stream.reader.manifest
    student = load_student(student_dir, dtype=torch.float32, device=device)
    objective = Objective(mode="kl", options=LossOptions(temperature=2.0),
                          shared_vocab_size=manifest.teacher.shared_vocab_size)
    step = StudentStep(objective, block_size=BLOCK, mask_token_id=manifest.student.mask_token_id, pipeline=pipeline)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)
    batches = iter(batch_loader(stream, stream.start_cursor(), epochs=1 << 20, workers=workers))
    waits, computes = [], []
    for _ in range(steps + 1):
        start = time.perf_counter()
        batch, _ = next(batches)
        batch = batch.to(device)
        fed = time.perf_counter()
        out = step(student, batch, progress=0.5)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        waits.append(fed - start)
        computes.append(time.perf_counter() - fed)
    waits, computes = waits[1:], computes[1:]  # the first step starts the workers and warms the allocator
    return {"workers": workers, "wait_s": waits, "compute_s": computes,
            "wait_share": sum(waits) / (sum(waits) + sum(computes)),
            "median_wait_s": statistics.median(waits), "median_compute_s": statistics.median(computes)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=40, help="rows of the synthetic cache")
    parser.add_argument("--vocab", type=int, default=8192, help="ids of the synthetic teacher's slice (the bytes "
                        "per position depend on the entries kept, not on this)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--layers", type=int, default=2, help="student layers (hidden 1024, the 0.6B width)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 0], help="data worker counts to compare")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from tide.testing.tiny_models import build_tiny_model
    from tide.testing.tokenizers import build_qwen_tokenizer

    workdir = Path(tempfile.mkdtemp(prefix="bench_data_path_"))
    try:
        cache = build_cache(workdir / "cache", args.samples, args.vocab, seed=0)
        tokenizer = build_qwen_tokenizer(workdir / "tok")
        build_tiny_model("student", workdir / "student", tokenizer=tokenizer, hidden_size=1024,
                         num_layers=args.layers)
        supply = supply_rate(workdir / "cache", args.batch_size)
        runs = [fed_steps(workdir / "cache", workdir / "student", args.batch_size, args.steps, w, args.device)
                for w in args.workers]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "platform": {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
                     "threads": torch.get_num_threads()},
        "cache": cache, "supply_one_core": supply, "runs": runs, "target_wait_share": TARGET_SHARE,
    }
    print(f"one core supplies {supply['batches_per_s']:.2f} batches/s ({supply['masked_positions_per_s']:,.0f} masked "
          f"positions/s, {1000 * supply['seconds_per_batch']:.1f} ms per batch of {args.batch_size} x 512)")
    for run in runs:
        print(f"workers={run['workers']}: wait {1000 * run['median_wait_s']:.1f} ms, step "
              f"{run['median_compute_s']:.2f} s (medians); wait share {100 * run['wait_share']:.2f}% "
              f"(target <= {100 * TARGET_SHARE:.0f}%)")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
