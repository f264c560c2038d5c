"""Peak memory of TeacherRunner (hidden states gathered first, LM head in chunks) vs the full-logits path.

Model: a tiny LLaDA2-MoE (hidden 64, 2 layers, layer 0 dense) with the real LLaDA2.0-mini vocabulary of
157,184 rows, so the LM head dominates memory exactly as it does for the real teacher. Batch: B rows of T
tokens, right-padded (the last row is 3/4 long), about 15 % of the real tokens masked; the wanted outputs
are the masked positions (N of them). Both paths compute the teacher log-prob of the gold token at those
positions in the LLaDA2 ``paper`` regime (full bidirectional attention, padded keys masked out):

* ``runner``: ``TeacherRunner.gold_logprobs`` — gather the N final hidden states, LM head over chunks of
  ``--chunk`` rows, fp32 log-sum-exp per chunk;
* ``full``: ``model(...).logits`` over all B·T positions, fp32 ``log_softmax``, then gather — the path the
  runner replaces.

Method: each path runs in its own fresh Python process, so one path's freed memory cannot hide the
other's peak. The process builds the model and inputs, records ``resource.getrusage(RUSAGE_SELF).ru_maxrss``
(the peak resident set so far), runs the path once, and reports the increase of ``ru_maxrss``: the extra
peak resident memory the path needed on top of model + inputs. (``tracemalloc`` does not see torch's CPU
allocations, and there is no warm-up run because ``ru_maxrss`` is monotonic: a warm-up would set the
peak.) The expected size of the full path's dominant tensors — B·T·V·4 bytes of fp32 logits, and as much
again for ``log_softmax`` — is reported next to it. Both paths' results are compared (max |Δ log p|).

    .venv/bin/python benchmarks/bench_teacher_runner.py [--batch 2] [--length 256] [--chunk 64]

Prints a table and writes ``benchmarks/results/teacher_runner.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

logger = logging.getLogger("bench_teacher_runner")

VOCAB = 157_184  # LLaDA2.0-mini embedding rows
MASK_ID = 156_895  # LLaDA2.0-mini mask id
RESULTS = Path(__file__).resolve().parent / "results" / "teacher_runner.json"


def _maxrss_bytes() -> int:
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage if sys.platform == "darwin" else usage * 1024  # Linux reports KiB


def _setup(batch: int, length: int, seed: int):
    from tide.models.llada2_moe import LLaDA2MoeConfig, LLaDA2MoeForCausalLM

    config = LLaDA2MoeConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=8, num_experts_per_tok=2,
        n_group=2, topk_group=1, first_k_dense_replace=1, mask_token_id=MASK_ID, pad_token_id=0,
    )
    torch.manual_seed(seed)
    model = LLaDA2MoeForCausalLM(config).eval()
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, 150_000, (batch, length), generator=gen)
    lengths = torch.full((batch,), length)
    lengths[-1] = length * 3 // 4
    valid = torch.arange(length)[None, :] < lengths[:, None]
    masked = (torch.rand(batch, length, generator=gen) < 0.15) & valid
    noised = torch.where(masked, torch.full_like(clean, MASK_ID), clean)
    rows, positions = masked.nonzero(as_tuple=True)
    return model, noised, clean, lengths, valid, rows, positions


def _run_full(model, noised, clean, lengths, valid, rows, positions) -> torch.Tensor:
    with torch.inference_mode():
        allowed = valid[:, None, :] | torch.eye(noised.shape[1], dtype=torch.bool)[None]
        logits = model(input_ids=noised, attention_mask=allowed[:, None]).logits.float()
        logprobs = torch.log_softmax(logits, dim=-1)
        return logprobs[rows, positions].gather(1, clean[rows, positions][:, None]).squeeze(1)


def _run_runner(model, noised, clean, lengths, valid, rows, positions, chunk: int) -> torch.Tensor:
    from tide.models.teacher import TeacherRunner

    runner = TeacherRunner(model, regime="paper", head_chunk_size=chunk)
    return runner.gold_logprobs(noised, lengths, rows, positions, clean[rows, positions])


def child(args: argparse.Namespace) -> None:
    """Run one path in this process and print a JSON line with its figures."""
    model, noised, clean, lengths, valid, rows, positions = _setup(args.batch, args.length, args.seed)
    before = _maxrss_bytes()
    start = time.perf_counter()
    if args.child == "full":
        out = _run_full(model, noised, clean, lengths, valid, rows, positions)
    else:
        out = _run_runner(model, noised, clean, lengths, valid, rows, positions, args.chunk)
    seconds = time.perf_counter() - start
    peak_delta = _maxrss_bytes() - before
    torch.save(out, args.out)
    print(json.dumps({"path": args.child, "peak_rss_delta_bytes": peak_delta, "seconds": seconds,
                      "positions": int(rows.numel())}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=64, help="TeacherRunner head_chunk_size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", choices=["full", "runner"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    results, outputs = {}, {}
    for path in ("runner", "full"):
        out_file = RESULTS.parent / f".teacher_runner_{path}.pt"
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, __file__, "--child", path, "--out", str(out_file), "--batch", str(args.batch),
               "--length", str(args.length), "--chunk", str(args.chunk), "--seed", str(args.seed)]
        proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
        results[path] = json.loads(proc.stdout.strip().splitlines()[-1])
        outputs[path] = torch.load(out_file)
        out_file.unlink()

    full_logits_bytes = args.batch * args.length * VOCAB * 4
    max_diff = float((outputs["runner"] - outputs["full"]).abs().max())
    report = {
        "model": {"type": "llada2_moe", "vocab_size": VOCAB, "hidden_size": 64, "layers": 2},
        "batch": args.batch, "length": args.length, "head_chunk_size": args.chunk,
        "selected_positions": results["runner"]["positions"],
        "runner_peak_rss_delta_mib": results["runner"]["peak_rss_delta_bytes"] / 2**20,
        "full_peak_rss_delta_mib": results["full"]["peak_rss_delta_bytes"] / 2**20,
        "full_logits_fp32_mib_expected": full_logits_bytes / 2**20,
        "runner_chunk_logits_fp32_mib_expected": min(args.chunk, results["runner"]["positions"]) * VOCAB * 4 / 2**20,
        "runner_seconds": results["runner"]["seconds"],
        "full_seconds": results["full"]["seconds"],
        "max_abs_logprob_diff": max_diff,
        "method": "ru_maxrss increase over model+inputs setup, one fresh process per path",
        "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
    }
    print(f"{'path':<8} {'peak RSS Δ (MiB)':>18} {'time (s)':>10}")
    print(f"{'runner':<8} {report['runner_peak_rss_delta_mib']:>18.1f} {report['runner_seconds']:>10.3f}")
    print(f"{'full':<8} {report['full_peak_rss_delta_mib']:>18.1f} {report['full_seconds']:>10.3f}")
    print(f"N = {report['selected_positions']} positions; full fp32 logits alone = "
          f"{report['full_logits_fp32_mib_expected']:.1f} MiB; one runner chunk = "
          f"{report['runner_chunk_logits_fp32_mib_expected']:.1f} MiB; max |Δ log p| = {max_diff:.2e}")
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    logger.info("wrote %s", RESULTS)


if __name__ == "__main__":
    main()
