"""Run every benchmark and write ``docs/benchmarks.md`` (tables + the k-sweep figure) from their JSON.

Each benchmark script runs in its own subprocess with a timeout and writes its JSON under
``benchmarks/results/``; this script records how each run went in ``benchmarks/results/run_all.json``, then
renders the document from whatever JSON is present (a failed or skipped benchmark keeps its previous JSON,
marked as such in the status table). The machine (CPU model, cores, memory, library versions) is read here.

    .venv/bin/python -m benchmarks.run_all                  # run all, then write the document
    .venv/bin/python -m benchmarks.run_all --only reader fidelity_k
    .venv/bin/python -m benchmarks.run_all --report-only    # re-render docs/benchmarks.md from the JSON
"""

from __future__ import annotations

import argparse
import logging
import sys

from benchmarks.report import render_document
from benchmarks.suite import (
    BY_NAME,
    DOC,
    FIGURE,
    ROOT,
    load_status,
    machine_info,
    now_utc,
    run_benchmark,
    save_status,
)

# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(BY_NAME), help="run only these benchmarks")
    parser.add_argument("--skip", nargs="+", choices=sorted(BY_NAME), default=[], help="do not run these")
    parser.add_argument("--report-only", action="store_true", help="run nothing; re-render the document")
    parser.add_argument("--timeout", type=int, default=None, help="seconds per benchmark (default: its own)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.timeout is not None and args.timeout < 1:
        parser.error(f"--timeout must be >= 1, got {args.timeout}")

    machine = machine_info()
    statuses = load_status()
    failures = 0
    if not args.report_only:
        chosen = [BY_NAME[n] for n in (args.only or BY_NAME) if n not in args.skip]
        for bench in chosen:
            status = run_benchmark(bench, args.timeout)
            statuses[bench.name] = {"status": status.status, "seconds": round(status.seconds or 0.0, 1),
                                    "finished": now_utc(), "commands": status.commands, "detail": status.detail,
                                    "machine": machine}
            failures += status.status != "ok"
            save_status(statuses, machine)
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(render_document(machine, statuses), encoding="utf-8")
    print(f"written: {DOC.relative_to(ROOT)}" + (f" and {FIGURE.relative_to(ROOT)}" if FIGURE.is_file() else ""))
    if failures:
        print(f"{failures} benchmark(s) did not finish; their previous results (if any) are in the document")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
