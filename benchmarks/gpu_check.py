"""GPU check: the build's teachers and the training step at real shape, random weights, one command.

Run it on a machine with one GPU (an H200 was the target: ≤ 8 minutes including set-up) after the
project's own install (``bash scripts/test.sh`` creates ``.venv``; ``pip install -e .`` into any Python with
CUDA torch works too). Nothing is downloaded: every model is built from its config with random weights,
every input is synthetic, and the Hugging Face libraries are put offline.

    bash benchmarks/gpu_check.sh                 # writes benchmarks/results/gpu_check/gpu_check.json
    bash benchmarks/gpu_check.sh --tiny          # the same end to end at a tiny shape on the CPU (~1 min)
    bash benchmarks/gpu_check.sh --only student --budget-s 200 --out /tmp/check

Parts, each in its own process with its own hard time limit (a part that fails, runs out of memory or of
time is recorded as such and the next one still runs; inside a part every measurement is guarded the same
way and the results are written after each one, so a killed part keeps what it finished):

* ``llada2_teacher`` — LLaDA2.0-mini (20 layers, 256 experts top-8 + 1 shared, hidden 2048, vocabulary
  157,184) in bf16, pipeline A (cross) at teacher length 1024: the build's own ``ShardBuilder.build`` over
  synthetic prepared samples (noise, teacher requests, length-sorted batches of ``batch_tokens``, the
  ``TeacherRunner``, rows), then the same batches through the runner alone (``bare teacher``) and through
  the decoder alone; teacher tokens/s, peak GPU memory, build ÷ bare-teacher; and the MoE check: one
  batch's hidden states with the grouped-matmul experts and with the per-expert loop (time, difference).
* ``wedlm_teacher`` — WeDLM-8B-shaped Qwen3 (36 layers, hidden 4096, vocabulary 151,936) in bf16, pipeline
  B (shared) at teacher length 768 with top-64 targets, the same measurements.
* ``student`` — the 0.6B student (Qwen3-0.6B shape: 28 layers, hidden 1024, vocabulary 151,936) at length
  512, batch 8, fp32 weights with bf16 autocast as ``tide-train`` runs it, from a synthetic cache
  (``tide.testing.synthetic_cache``): the CE-only step and the ``kl`` and ``tidal --comp_demo`` steps
  (``stages/train/step.py`` ``StudentStep``), each with SDPA and with flex attention (compiled by
  transformers on first use; the first step's time, compile included, is reported apart), median of the
  timed steps, peak memory; cache-step ÷ CE-step per attention; and flex-vs-SDPA hidden states.

Time limits: 140, 110 and 180 s for the three parts, 450 s for all of them (``--budget-s``); a part gets
the smaller of its own limit and what is left, and a measurement that would not fit in its part's time is
skipped and recorded as such. Timings synchronise the device before and after (``torch.cuda.synchronize``);
memory is ``torch.cuda.max_memory_allocated`` after a reset (on the CPU, the process's peak resident set,
which only grows). Written to the results folder (``--out``): ``gpu_check.json`` — the environment (GPU,
capability, torch, transformers, CUDA, whether ``grouped_mm`` and flex attention exist), every part's
status (``ok``, ``partial`` when a measurement failed or was skipped, ``failed``, ``timeout``, ``skipped``),
seconds, results, errors and log tail, and ``summary``: teacher tokens/s, peak memory, build ÷ bare teacher
and build ÷ decoder per teacher, the MoE grouped ÷ loop time, and each cache step ÷ CE step per attention;
``<part>.json`` and ``<part>.log`` are each part's own. The command exits 0 when every part ran to its end
(``ok`` or ``partial``), 1 otherwise. At ``--tiny`` on the CPU the flex-attention training steps are
recorded as errors (flex attention has no backward on the CPU); everything else runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.gpu_check_common import PartRecord

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "gpu_check"
DEFAULT_TINY_OUT = ROOT / "benchmarks" / "results" / "gpu_check_tiny"
# Part name -> (module running it, seconds allowed at real shape, at the tiny shape).
PARTS: dict[str, tuple[str, int, int]] = {
    "llada2_teacher": ("benchmarks.gpu_check_teacher", 140, 60),
    "wedlm_teacher": ("benchmarks.gpu_check_teacher", 110, 60),
    "student": ("benchmarks.gpu_check_student", 180, 90),
}
LOG_TAIL = 40
logger = logging.getLogger("gpu_check")


# ------------------------------------------------------------------------------------------ orchestration


def environment() -> dict[str, Any]:
    """Versions, the GPU and what this torch offers (grouped matmul, flex attention); imports torch only."""
    import importlib.metadata

    import torch

    cuda = torch.cuda.is_available()
    info: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": importlib.metadata.version("transformers"),
        "cuda_available": cuda, "cuda_version": torch.version.cuda, "cpu_count": os.cpu_count(),
        "torch.nn.functional.grouped_mm": hasattr(torch.nn.functional, "grouped_mm"),
        "torch._grouped_mm": hasattr(torch, "_grouped_mm"),
    }
    if cuda:
        props = torch.cuda.get_device_properties(0)
        info.update({"gpu": props.name, "capability": list(torch.cuda.get_device_capability(0)),
                     "gpu_memory_gib": props.total_memory / 2**30, "bf16_supported": torch.cuda.is_bf16_supported()})
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401

        info["flex_attention_importable"] = True
    except ImportError:
        info["flex_attention_importable"] = False
    return info


def run_part(name: str, args: argparse.Namespace, limit_s: float) -> dict[str, Any]:
    """Run one part in a child process with a hard time limit; its status, seconds, results, log tail."""
    out_dir = Path(args.out)
    result_file, log_file = out_dir / f"{name}.json", out_dir / f"{name}.log"
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--part", name, "--out", str(out_dir),
           "--part-seconds", str(int(limit_s)), "--device", args.device]
    if args.tiny:
        cmd.append("--tiny")
    start = time.perf_counter()
    status, returncode = "ok", 0
    with log_file.open("w", encoding="utf-8") as log:
        # its own process group, so that a timeout also ends the compile workers it may have started
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            returncode = proc.wait(timeout=limit_s)
            status = "ok" if returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            status = "timeout"
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    record: dict[str, Any] = {"status": status, "seconds": time.perf_counter() - start, "limit_s": int(limit_s)}
    if returncode:
        record["returncode"] = returncode
    if result_file.is_file():
        record.update(json.loads(result_file.read_text(encoding="utf-8")))
    if status == "ok" and (record.get("errors") or record.get("skipped")):
        status = record["status"] = "partial"
    if status != "ok":
        lines = log_file.read_text(encoding="utf-8", errors="replace").splitlines()
        record["log_tail"] = "\n".join(lines[-LOG_TAIL:])
    return record


def summary(parts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The headline figures, by name, from whichever parts produced them."""
    out: dict[str, Any] = {}
    for teacher in ("llada2_teacher", "wedlm_teacher"):
        results = parts.get(teacher, {}).get("results", {})
        build, bare = results.get("build", {}), results.get("bare_teacher", {})
        out[f"{teacher}.tokens_per_s"] = build.get("teacher_tokens_per_s")
        out[f"{teacher}.peak_memory_gib"] = build.get("peak_memory", {}).get("gib")
        out[f"{teacher}.build_over_bare_teacher"] = bare.get("build_over_bare_teacher")
        out[f"{teacher}.build_over_decoder"] = bare.get("build_over_decoder")
    out["llada2_teacher.moe_grouped_over_loop"] = (
        parts.get("llada2_teacher", {}).get("results", {}).get("moe_check", {}).get("grouped_over_loop"))
    ratios = parts.get("student", {}).get("results", {}).get("ratios", {})
    out.update({f"student.{key}": value for key, value in ratios.items()})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (runs on the CPU in about a minute)")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results/gpu_check, "
                                                    "or gpu_check_tiny with --tiny)")
    parser.add_argument("--only", nargs="+", choices=sorted(PARTS), help="run only these parts")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="seconds for all parts together (default 450, tiny 240); each part also has its own")
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    parser.add_argument("--part", choices=sorted(PARTS), help=argparse.SUPPRESS)
    parser.add_argument("--part-seconds", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    args.out = Path(args.out or (DEFAULT_TINY_OUT if args.tiny else DEFAULT_OUT))
    args.out.mkdir(parents=True, exist_ok=True)
    if args.part:
        return _child(args)

    started = time.monotonic()
    budget = args.budget_s if args.budget_s is not None else (240.0 if args.tiny else 450.0)
    report: dict[str, Any] = {"tiny": args.tiny, "budget_s": budget, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                              "environment": environment(), "parts": {}}
    from tide.runtime import resolve_device

    device = resolve_device(args.device)
    report["device"] = str(device)
    if device.type != "cuda" and not args.tiny:
        logger.warning("no CUDA device: the real-shape parts will run on %s (slowly) or fail", device)
    for name in args.only or PARTS:
        left = budget - (time.monotonic() - started)
        own = PARTS[name][2 if args.tiny else 1]
        if left < 10:
            report["parts"][name] = {"status": "skipped", "reason": f"total budget spent ({left:.0f} s left)"}
            continue
        logger.info("part %s (limit %.0f s)", name, min(own, left))
        report["parts"][name] = run_part(name, args, min(own, left))
        logger.info("part %s: %s in %.0f s", name, report["parts"][name]["status"],
                    report["parts"][name]["seconds"])
    report["seconds"] = time.monotonic() - started
    report["summary"] = summary(report["parts"])
    from cache_schema.files import atomic_write_json

    atomic_write_json(args.out / "gpu_check.json", report)
    for key, value in report["summary"].items():
        print(f"{key:<48} {value}")
    print(f"wrote {args.out / 'gpu_check.json'} ({report['seconds']:.0f} s)")
    # a guarded measurement that failed leaves its part "partial" (recorded, not fatal); a part that crashed
    # or ran out of time fails the command
    return 0 if all(p["status"] in ("ok", "partial") for p in report["parts"].values()) else 1


def _child(args: argparse.Namespace) -> int:
    """One part in this process: its module's ``run(name, record, device, tiny)``."""
    import importlib

    from tide.runtime import resolve_device

    limit = args.part_seconds or PARTS[args.part][2 if args.tiny else 1]
    # leave a margin inside the parent's hard limit for the last write and the process exit
    record = PartRecord(Path(args.out) / f"{args.part}.json", time.monotonic() + 0.92 * limit - 3)
    module = importlib.import_module(PARTS[args.part][0])
    module.run(args.part, record, resolve_device(args.device), args.tiny)
    return 0


if __name__ == "__main__":
    sys.exit(main())
