"""Running one CLI command of the quickstart as a subprocess, its full output kept in a log file."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

LOG_TAIL_LINES = 40


def run_cli(argv: Sequence[str], log_file: Path, *, echo: bool = False) -> str:
    """Run one CLI command, writing its output to ``log_file``; returns the output.

    Raises RuntimeError with the command and the last lines of its output when it fails.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    print(f"$ {shlex.join(argv)}", flush=True)
    started = time.perf_counter()
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", TQDM_DISABLE="1")
    proc = subprocess.run(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    log_file.write_text(proc.stdout, encoding="utf-8")
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-LOG_TAIL_LINES:])
        raise RuntimeError(
            f"command failed with exit code {proc.returncode}: {shlex.join(argv)}\n"
            f"(full output in {log_file})\n{tail}"
        )
    if echo:
        print(proc.stdout.rstrip(), flush=True)
    print(f"  ok in {time.perf_counter() - started:.0f} s (log: {log_file})", flush=True)
    return proc.stdout
