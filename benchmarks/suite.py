"""The benchmark suite: which scripts run with which arguments, how a run went, and the machine it ran on.

Each benchmark script runs in its own subprocess with a timeout and writes its JSON under
``benchmarks/results/``; how each run went is recorded in ``benchmarks/results/run_all.json``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "benchmarks"
RESULTS = BENCH_DIR / "results"
DOC = ROOT / "docs" / "benchmarks.md"
FIGURE = ROOT / "docs" / "benchmarks_fidelity_k.png"
FIDELITY_FIGURE = ROOT / "docs" / "benchmarks_fidelity.png"
STATUS_FILE = RESULTS / "run_all.json"
LOG_TAIL = 30

logger = logging.getLogger("run_all")


@dataclass(frozen=True)
class Benchmark:
    """One benchmark script, the arguments run_all gives it and the JSON files it writes."""

    name: str
    title: str
    script: str
    args: tuple[str, ...]
    results: tuple[str, ...]
    timeout_s: int = 1800
    extra_runs: tuple[tuple[str, ...], ...] = field(default_factory=tuple)

    def commands(self) -> list[list[str]]:
        """The command lines (the script once per argument set), run from the repository root."""
        return [[sys.executable, str(BENCH_DIR / self.script), *args] for args in (self.args, *self.extra_runs)]


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark(
        "build", "Cache build time over bare teacher time", "bench_build.py",
        ("--max-length", "256", "--replicas", "2", "--output", "benchmarks/results/build.json"),
        ("build.json",),
    ),
    Benchmark(
        "train_step", "Training step: from the cache vs CE vs online teacher", "bench_train_step.py",
        ("--batch", "4", "--seq-len", "128", "--output", "benchmarks/results/train_step.json"),
        ("train_step.json", "train_step_wide_student.json", "train_step_qwen06b_width.json"),
        extra_runs=(("--batch", "4", "--seq-len", "128", "--hidden", "512", "--layers", "4", "--steps", "3",
                     "--output", "benchmarks/results/train_step_wide_student.json"),
                    # the 0.6B student's width (hidden 1024) with 2 of its 28 layers: the LM head's share
                    # of the step as at real scale, the body still far smaller than the real one
                    ("--batch", "4", "--seq-len", "128", "--hidden", "1024", "--layers", "2", "--steps", "5",
                     "--profile", "12", "--output", "benchmarks/results/train_step_qwen06b_width.json")),
    ),
    Benchmark(
        "data_path", "Data path: the training thread's wait for a batch, as a share of the step", "bench_data_path.py",
        ("--output", "benchmarks/results/data_path.json"),
        ("data_path.json",),
    ),
    Benchmark(
        "fidelity_k", "Top-k targets: bytes and fidelity for k in {8, ..., 256}", "bench_fidelity_k.py",
        ("--positions", "256", "--out", "benchmarks/results/fidelity_k.json"),
        ("fidelity_k.json",),
    ),
    Benchmark(
        "fidelity", "Sparse-target cache: bytes against gradient error per k policy, encoding and tail",
        "bench_fidelity.py",
        # the storage measurement holds 4096 positions in one row group (a build's row group holds ~40k: zstd
        # gains from tails repeated across positions, so fewer would overstate the bytes); the compare step
        # grows with --positions
        ("--positions", "128", "--storage-positions", "4096", "--out", "benchmarks/results/fidelity.json"),
        ("fidelity.json",),
        timeout_s=3000,
    ),
    Benchmark(
        "reader", "Cache size and reader throughput", "bench_reader.py",
        ("--rows", "96", "--out", "benchmarks/results/reader.json"),
        ("reader.json",),
        timeout_s=900,
    ),
    Benchmark(
        "teacher_runner", "TeacherRunner peak memory vs full logits", "bench_teacher_runner.py",
        ("--batch", "2", "--length", "256", "--chunk", "64"),
        ("teacher_runner.json",),
        timeout_s=900,
    ),
    Benchmark(
        "remote", "Fast start (lazy checksums) and reading from S3 vs local disk", "bench_remote.py",
        ("--cache-gb", "2.0", "--s3-mb", "256", "--out", "benchmarks/results/remote.json"),
        ("remote.json",),
        timeout_s=2400,
    ),
    Benchmark(
        "exact", "Exact tier: hidden states and the LM head, bytes, step time, int8 error", "bench_exact.py",
        ("--positions", "256", "--rows", "1", "--seq-len", "96", "--steps", "2",
         "--output", "benchmarks/results/exact.json"),
        ("exact.json",),
        timeout_s=2400,
    ),
    Benchmark(
        "moe", "LLaDA2 MoE block: grouped matmul over the per-expert loop", "bench_moe.py",
        ("--tokens", "4096", "--repeats", "3", "--out", "benchmarks/results/moe.json"),
        ("moe.json",),
        timeout_s=1200,
    ),
)
BENCHMARKS += (
    Benchmark(
        "alignment", "Preparation time per sample against content length (64 KiB to 8 MiB)", "bench_alignment.py",
        ("--sizes-kib", "64", "256", "1024", "2048", "8192", "--repeats", "3",
         "--out", "benchmarks/results/alignment.json"),
        ("alignment.json",),
        timeout_s=900,
    ),
    Benchmark(
        "tail_summaries", "What a richer tail summary could buy: per-bucket tail masses", "bench_tail_summaries.py",
        ("--positions", "128", "--out", "benchmarks/results/tail_summaries.json"),
        ("tail_summaries.json",),
        timeout_s=1800,
    ),
)
BY_NAME = {b.name: b for b in BENCHMARKS}


# ------------------------------------------------------------------------------------------------ running


@dataclass
class RunStatus:
    """How one benchmark's run went: ``ok``, ``failed``, ``timeout`` or ``not run``."""

    name: str
    status: str
    seconds: float | None = None
    commands: list[str] = field(default_factory=list)
    detail: str = ""


def run_benchmark(bench: Benchmark, timeout_s: int | None = None) -> RunStatus:
    """Run every command of ``bench`` in order; the first failure or timeout stops it."""
    status = RunStatus(bench.name, "ok", 0.0)
    limit = timeout_s or bench.timeout_s
    started = time.perf_counter()
    for argv in bench.commands():
        status.commands.append(shlex.join(["python", str(Path(argv[1]).relative_to(ROOT)), *argv[2:]]))
        print(f"$ {shlex.join(argv)}", flush=True)
        try:
            proc = subprocess.run(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  timeout=max(1.0, limit - (time.perf_counter() - started)))
        except subprocess.TimeoutExpired:
            status.status, status.detail = "timeout", f"over {limit} s"
            break
        if proc.returncode != 0:
            tail = "\n".join(proc.stdout.splitlines()[-LOG_TAIL:])
            status.status, status.detail = "failed", f"exit code {proc.returncode}:\n{tail}"
            break
    status.seconds = time.perf_counter() - started
    print(f"  {bench.name}: {status.status} in {status.seconds:.0f} s", flush=True)
    if status.status != "ok":
        print(status.detail, flush=True)
    return status


def load_status() -> dict[str, dict[str, Any]]:
    if STATUS_FILE.is_file():
        return json.loads(STATUS_FILE.read_text(encoding="utf-8")).get("benchmarks", {})
    return {}


def save_status(statuses: dict[str, dict[str, Any]], machine: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"written": now_utc(), "machine": machine, "benchmarks": statuses}
    STATUS_FILE.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------------ machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, GPU and library versions of this machine."""
    import numpy
    import pyarrow
    import torch
    import transformers

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    memory = _memory_gib()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_gib": round(memory, 1) if memory else None,
        "gpu": gpu,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "pyarrow": pyarrow.__version__,
        "numpy": numpy.__version__,
    }


def now_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
