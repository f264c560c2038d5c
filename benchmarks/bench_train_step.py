"""Training-step cost from the cache vs the CE baseline vs an online step that runs the teacher inside.

Three variants on the same tiny student, the same batch and the real 151,646-id shared vocabulary:

* ``ce``: plain BD3LM CE (the baseline the cache path is compared with);
* ``cache``: TIDAL + CompDemo from cached top-k targets (``tide-train``'s step, LM head at masked
  positions only);
* ``online``: the same loss, but the teacher (a tiny WeDLM-shaped Qwen3 built with :mod:`tide.testing.tiny_models`) runs a
  no-grad forward inside the step and its top-k targets are computed on the fly (what the original
  single-stage training does).

Each variant runs in its own subprocess so its peak memory is its own (peak RSS on CPU,
``torch.cuda.max_memory_allocated`` on GPU). Prints a table and writes ``benchmarks/results/train_step.json``.

    .venv/bin/python benchmarks/bench_train_step.py [--batch 4] [--seq-len 128] [--hidden 64] [--steps 5]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "train_step.json"
SHARED = 151_646
K = 64
TEMPS = (1.0, 2.0)
BLOCK = 32
VARIANTS = ("ce", "cache", "cache_kl", "online")
MODES = {"ce": "ce", "cache": "tidal", "cache_kl": "kl", "online": "tidal"}

logger = logging.getLogger("bench_train_step")


def _teacher_logits_at(teacher, x0: torch.Tensor, masked: torch.Tensor, mask_id: int) -> torch.Tensor:
    """Teacher logits (N, V) at the masked positions: x0 ⊕ x_t with the BD3LM mask (WeDLM paper regime)."""
    from tide.bd3lm import bd3lm_attention_mask, bd3lm_position_ids, noise_input_ids

    batch, seq_len = x0.shape
    noised = noise_input_ids(x0, masked, mask_id)
    mask = bd3lm_attention_mask(seq_len, BLOCK, x0_first=True, attn_implementation="sdpa", device=x0.device)
    hidden = teacher.base_model(input_ids=torch.cat([x0, noised], 1), attention_mask=mask,
                                position_ids=bd3lm_position_ids(seq_len, batch, device=x0.device),
                                use_cache=False).last_hidden_state[:, seq_len:]
    return teacher.get_output_embeddings()(hidden[masked]).float()


def build(workdir: Path, args) -> None:
    """Tiny student + teacher checkpoints and a cache of one batch whose targets come from that teacher."""
    from tide.models.teacher import load_teacher
    from tide.testing.synthetic_cache import SyntheticCacheSpec, random_base_rows, write_synthetic_cache
    from tide.testing.tiny_models import build_tiny_model
    from tide.testing.tokenizers import CHATML_WITH_SYSTEM_TEMPLATE, build_qwen_tokenizer
    from tide.tokenizer_fingerprint import tokenizer_fingerprint

    tokenizer = build_qwen_tokenizer(workdir / "tok-student")
    build_tiny_model("student", workdir / "student", tokenizer=tokenizer, hidden_size=args.hidden,
                     num_layers=args.layers)
    wedlm_tok = build_qwen_tokenizer(workdir / "tok-wedlm", chat_template=CHATML_WITH_SYSTEM_TEMPLATE)
    build_tiny_model("wedlm", workdir / "teacher", tokenizer=wedlm_tok, hidden_size=args.teacher_hidden,
                     num_layers=args.teacher_layers)
    teacher = load_teacher(workdir / "teacher", dtype=torch.float32)
    rows = random_base_rows(num_samples=args.batch, replicas=1, seq_len=args.seq_len, block_size=BLOCK,
                            vocab_size=SHARED, eos_token_id=tokenizer.eos_token_id, prompt_len=8, seed=0)
    gen = np.random.default_rng(1)
    for row in rows:
        row.target_positions = np.flatnonzero(row.masked)
        row.compdemo_group = gen.integers(0, 2, size=len(row.target_positions)).astype(np.uint8)
        with torch.no_grad():
            x0 = torch.as_tensor(row.input_ids, dtype=torch.long)[None]
            logits = _teacher_logits_at(teacher, x0, torch.as_tensor(row.masked)[None], teacher.config.mask_token_id)
        row.teacher_logits = {"plain": logits, "compdemo": logits}
    spec = SyntheticCacheSpec(
        pipeline="shared", student_fingerprint=tokenizer_fingerprint(tokenizer),
        mask_token_id=tokenizer.mask_token_id, eos_token_id=tokenizer.eos_token_id, block_size=BLOCK,
        max_length=args.seq_len, student_vocab_size=151_936, replicas=1, passes=("plain", "compdemo"), k=K,
        shared_vocab_size=SHARED, teacher_vocab_size=151_936, temperatures=TEMPS, value_dtype="float16",
        row_group_rows=args.batch, rows_per_shard=args.batch,
    )
    write_synthetic_cache(workdir / "cache", rows, spec)


def run_variant(workdir: Path, variant: str, steps: int, device: str, profile: int = 0) -> dict:
    """Time ``steps`` forward+backward steps of one variant (after one warm-up step); report peak memory and,
    with ``profile``, the ``profile`` most expensive operators of one more step (torch.profiler, self time)."""
    from cache_schema.reader import CacheReader
    from stages.train.collate import CollateSpec
    from stages.train.data import CacheStream, StreamConfig, columns_for
    from stages.train.pipelines import train_pipeline
    from stages.train.step import StudentStep
    from tide.losses import LossOptions
    from tide.models.student import load_student
    from tide.objective import Objective
    from tide.targets import sparse_targets

    reader = CacheReader(workdir / "cache")
    manifest = reader.manifest
    pipeline = None if variant == "ce" else train_pipeline(manifest)
    target_pass = "plain" if variant == "cache_kl" else "compdemo"
    spec = CollateSpec(pad_token_id=manifest.student.eos_token_id, block_size=BLOCK, pipeline=pipeline,
                       target_pass=target_pass)
    stream = CacheStream(reader, spec, columns_for(pipeline, target_pass),
                         StreamConfig(batch_size=reader.num_rows, shuffle=False))
    batch, _ = next(stream.batches(stream.start_cursor(), epochs=1))
    batch = batch.to(device)
    student = load_student(workdir / "student", dtype=torch.float32, device=device)
    teacher = None
    if variant == "online":
        from tide.models.teacher import load_teacher

        teacher = load_teacher(workdir / "teacher", dtype=torch.float32, device=device)
    objective = Objective(mode=MODES[variant], options=LossOptions(temperature=2.0), shared_vocab_size=SHARED)
    step = StudentStep(objective, block_size=BLOCK, mask_token_id=manifest.student.mask_token_id, pipeline=pipeline)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)

    def one_step():
        if teacher is not None:
            # Online: the teacher runs inside the step and its top-k targets are made on the fly.
            with torch.no_grad():
                logits = _teacher_logits_at(teacher, batch.input_ids, batch.masked, teacher.config.mask_token_id)
                flat = batch.masked.reshape(-1).nonzero().squeeze(1)
                item_flat = batch.vocab.row * batch.input_ids.shape[1] + batch.vocab.position
                picked = logits[torch.searchsorted(flat, item_flat)]
                made = sparse_targets(picked, batch.input_ids[batch.vocab.row, batch.vocab.position], k=K,
                                      shared_vocab_size=SHARED, temperatures=TEMPS)
                current = replace(batch, vocab=replace(batch.vocab, teacher=made),
                                  targets=replace(batch.targets, teacher=made))
        else:
            current = batch
        out = step(student, current, progress=0.5)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    one_step()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        one_step()
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    result = {"variant": variant, "mode": MODES[variant], "median_step_s": statistics.median(times),
              "min_step_s": min(times), "step_s": times, "peak_memory_mb": peak / 2**20,
              "memory_kind": "cuda_max_allocated" if device.startswith("cuda") else "process_peak_rss",
              "masked_positions": int(batch.masked.sum()), "tokens": batch.num_tokens}
    if profile:
        result["profile"] = profile_step(one_step, profile)
    return result


def profile_step(one_step, top: int) -> list[dict]:
    """The ``top`` operators of one step by self CPU time (and CUDA time where there is a GPU), as shares."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        one_step()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [{"op": e.key, "self_cpu_share": e.self_cpu_time_total / total, "calls": e.count} for e in events[:top]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=64, help="student hidden size")
    parser.add_argument("--layers", type=int, default=2, help="student layers")
    parser.add_argument("--teacher-hidden", type=int, default=128)
    parser.add_argument("--teacher-layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also profile one step of each variant and keep its N most expensive operators")
    parser.add_argument("--output", default=str(RESULTS), help="where to write the JSON results")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.variant:  # child process: one variant, JSON on stdout
        print(json.dumps(run_variant(Path(args.workdir), args.variant, args.steps, args.device, args.profile)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        build(workdir, args)
        results = {}
        for variant in VARIANTS:
            cmd = [sys.executable, __file__, "--variant", variant, "--workdir", str(workdir), "--steps",
                   str(args.steps), "--device", args.device, "--profile", str(args.profile)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode:
                print(done.stderr, file=sys.stderr)
                return done.returncode
            results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    ce, cache, cache_kl, online = (results[v]["median_step_s"] for v in VARIANTS)
    report = {
        "config": {k: v for k, v in vars(args).items() if k not in ("variant", "workdir", "output")}
        | {"shared_vocab": SHARED, "k": K, "mode": "tidal + CompDemo", "block_size": BLOCK},
        "platform": {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
                     "threads": torch.get_num_threads()},
        "variants": results,
        "cache_over_ce": cache / ce,
        "cache_kl_over_ce": cache_kl / ce,
        "cache_over_online": cache / online,
        "target_cache_over_ce": 1.10,
    }
    print(f"{'variant':<8} {'median step (s)':>16} {'peak memory (MiB)':>18}")
    for variant in VARIANTS:
        r = results[variant]
        print(f"{variant:<8} {r['median_step_s']:>16.4f} {r['peak_memory_mb']:>18.1f}")
    print(f"cache / ce     = {report['cache_over_ce']:.3f}  (tidal + CompDemo; target <= 1.10)")
    print(f"cache_kl / ce  = {report['cache_kl_over_ce']:.3f}  (kl; target <= 1.10)")
    for variant in VARIANTS:
        for entry in results[variant].get("profile", [])[:8]:
            print(f"  {variant:<8} {entry['op']:<40} {100 * entry['self_cpu_share']:5.1f}%")
    print(f"cache / online = {report['cache_over_online']:.3f}")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
