"""LLaDA2 MoE block at real shape: the grouped matmul (the default) over the per-expert loop (the reference).

Shape: one LLaDA2.0-mini MoE layer — hidden 2048, 256 SwiGLU experts of width 512, top-8 routing
(8 groups, 4 kept) plus the shared expert — on 4,096 tokens in fp32 on the CPU. Random weights (std 0.02,
expert biases N(0, 0.1²)), inputs N(0, 1). The same block runs under ``experts_implementation="grouped_mm"``
and ``"eager"`` (``LLaDA2MoeExperts``); gate and shared expert are the same code in both, so the ratio is the
routed experts' cost plus a common part.

Method: timing — one process, the two implementations interleaved, ``--repeats`` runs each after one warm-up
run each (under ``torch.profiler``, which counts the matmul kernels each implementation issues); median and
minimum seconds, ratio of medians. Equality — the outputs of the two are compared (max abs and max relative
difference, ``torch.allclose`` at rtol 1e-5 / atol 1e-5). Memory — each implementation runs once in its own
fresh process: build block and inputs, read ``ru_maxrss``, run, report the increase (the extra peak resident
memory of one forward); next to it the sizes of the tensors each formulation must hold, computed from the
measured routing: the grouped form's (token, expert) rows, a padded ``bmm`` form at the largest expert's
load (E × capacity × hidden), and transformers' ``batched_mm`` form (one weight matrix per pair).

    .venv/bin/python benchmarks/bench_moe.py [--tokens 4096] [--repeats 3] [--out benchmarks/results/moe.json]

Prints the figures and writes ``benchmarks/results/moe.json``.
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
import time
from pathlib import Path

import torch

logger = logging.getLogger("bench_moe")

RESULTS = Path(__file__).resolve().parent / "results" / "moe.json"
IMPLEMENTATIONS = ("grouped_mm", "eager")
FP32 = 4


def _maxrss_bytes() -> int:
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage if sys.platform == "darwin" else usage * 1024  # Linux reports KiB


def build_block(args: argparse.Namespace):
    """The MoE block of layer 1 of a LLaDA2.0-mini-shaped config (or the smaller one the flags ask for)."""
    from tide.models.llada2_moe import LLaDA2MoeConfig, LLaDA2MoeSparseMoeBlock

    config = LLaDA2MoeConfig(hidden_size=args.hidden, moe_intermediate_size=args.width,
                             num_experts=args.experts, num_experts_per_tok=args.top_k)
    config._experts_implementation = "grouped_mm"
    torch.manual_seed(args.seed)
    block = LLaDA2MoeSparseMoeBlock(config).eval()
    with torch.no_grad():
        for param in block.parameters():
            param.normal_(0.0, 0.02)  # touches every page, so the resident set includes the weights
        block.gate.expert_bias.normal_(0.0, 0.1)
    x = torch.randn(1, args.tokens, args.hidden, generator=torch.Generator().manual_seed(args.seed + 1))
    return config, block, x


def run_once(config, block, x, implementation: str) -> tuple[torch.Tensor, float]:
    config._experts_implementation = implementation
    with torch.inference_mode():
        start = time.perf_counter()
        out = block(x)
        return out, time.perf_counter() - start


def matmul_kernels(config, block, x, implementation: str) -> dict[str, int]:
    """How many of each matmul kernel one forward issues (the warm-up run)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run_once(config, block, x, implementation)
    counts = {e.key: e.count for e in prof.key_averages() if e.key in ("aten::_grouped_mm", "aten::mm", "aten::addmm")}
    return dict(sorted(counts.items()))


def routing_load(block, x) -> torch.Tensor:
    """Tokens routed to each expert (E,)."""
    with torch.inference_mode():
        ids, _, _ = block.gate(x.reshape(-1, x.shape[-1]))
    return torch.bincount(ids.flatten(), minlength=block.experts.num_experts)


def formulation_bytes(args: argparse.Namespace, load: torch.Tensor) -> dict[str, int]:
    """Bytes of the per-forward tensors each formulation materialises (fp32)."""
    pairs = args.tokens * args.top_k
    h, w = args.hidden, args.width
    capacity = int(load.max())
    return {
        # sorted inputs, gate/up output, activation, down output, weighted, restored order (pairs × ...)
        "grouped_pairs_tensors": pairs * (h + 2 * w + w + h + h + h) * FP32,
        # inputs, gate/up and activation, outputs of a (E, capacity, ·) padded batch
        "padded_bmm_tensors": args.experts * capacity * (h + 2 * w + w + h) * FP32,
        # the gathered gate/up and down weights of every (token, expert) pair
        "batched_mm_gathered_weights": pairs * (2 * w * h + h * w) * FP32,
    }


def child(args: argparse.Namespace) -> None:
    """Run one implementation once in this process and print its peak-memory increase as a JSON line."""
    config, block, x = build_block(args)
    before = _maxrss_bytes()
    _, seconds = run_once(config, block, x, args.child)
    print(json.dumps({"implementation": args.child, "peak_rss_delta_bytes": _maxrss_bytes() - before,
                      "seconds": seconds}))


def measure_memory(args: argparse.Namespace) -> dict[str, dict]:
    out = {}
    for implementation in IMPLEMENTATIONS:
        cmd = [sys.executable, __file__, "--child", implementation, "--tokens", str(args.tokens),
               "--hidden", str(args.hidden), "--width", str(args.width), "--experts", str(args.experts),
               "--top-k", str(args.top_k), "--seed", str(args.seed)]
        proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
        out[implementation] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--width", type=int, default=512, help="moe_intermediate_size")
    parser.add_argument("--experts", type=int, default=256)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")

    memory = measure_memory(args)  # before this process holds a block of its own
    config, block, x = build_block(args)
    load = routing_load(block, x)
    kernels = {impl: matmul_kernels(config, block, x, impl) for impl in IMPLEMENTATIONS}
    seconds: dict[str, list[float]] = {impl: [] for impl in IMPLEMENTATIONS}
    outputs = {}
    for _ in range(args.repeats):
        for impl in IMPLEMENTATIONS:
            outputs[impl], took = run_once(config, block, x, impl)
            seconds[impl].append(took)
    diff = (outputs["grouped_mm"] - outputs["eager"]).abs()
    median = {impl: statistics.median(s) for impl, s in seconds.items()}
    sizes = formulation_bytes(args, load)
    report = {
        "config": {"hidden": args.hidden, "moe_intermediate": args.width, "experts": args.experts,
                   "top_k": args.top_k, "shared_experts": config.num_shared_experts, "tokens": args.tokens,
                   "dtype": "float32", "device": "cpu", "repeats": args.repeats, "torch_threads": torch.get_num_threads()},
        "grouped_mm_available": {"torch.nn.functional.grouped_mm": hasattr(torch.nn.functional, "grouped_mm"),
                                 "torch._grouped_mm": hasattr(torch, "_grouped_mm")},
        "routing": {"empty_experts": int((load == 0).sum()), "min_tokens_per_expert": int(load.min()),
                    "median_tokens_per_expert": float(load.float().median()), "max_tokens_per_expert": int(load.max())},
        "seconds": {impl: {"median": median[impl], "min": min(s), "all": s} for impl, s in seconds.items()},
        "grouped_over_loop": median["grouped_mm"] / median["eager"],
        "outputs": {"max_abs_diff": float(diff.max()),
                    "max_rel_diff": float(diff.max() / outputs["eager"].abs().max()),
                    "allclose_rtol1e-5_atol1e-5": bool(torch.allclose(outputs["grouped_mm"], outputs["eager"],
                                                                        rtol=1e-5, atol=1e-5))},
        "matmul_kernels_per_forward": kernels,
        "memory": {
            "method": "ru_maxrss increase over block+inputs setup, one fresh process per implementation",
            "peak_rss_delta_mib": {impl: m["peak_rss_delta_bytes"] / 2**20 for impl, m in memory.items()},
            "expert_weights_mib": (block.experts.gate_up_proj.numel() + block.experts.down_proj.numel()) * FP32 / 2**20,
            "formulation_tensors_mib": {k: v / 2**20 for k, v in sizes.items()},
        },
        "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
    }
    print(f"MoE block: hidden {args.hidden}, {args.experts} experts x {args.width}, top-{args.top_k} + shared, "
          f"{args.tokens} tokens, fp32 CPU, {torch.get_num_threads()} threads")
    print(f"routing: {report['routing']}")
    for impl in IMPLEMENTATIONS:
        print(f"{impl:<11} median {median[impl]:8.3f} s  min {min(seconds[impl]):8.3f} s  "
              f"peak RSS +{report['memory']['peak_rss_delta_mib'][impl]:8.1f} MiB  kernels {kernels[impl]}")
    print(f"grouped / loop = {report['grouped_over_loop']:.3f}; outputs max |diff| {report['outputs']['max_abs_diff']:.2e}"
          f" (relative {report['outputs']['max_rel_diff']:.2e}), allclose {report['outputs']['allclose_rtol1e-5_atol1e-5']}")
    print("formulation tensors (MiB): " + ", ".join(f"{k} {v:,.0f}"
                                                    for k, v in report["memory"]["formulation_tensors_mib"].items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
