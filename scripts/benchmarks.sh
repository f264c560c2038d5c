#!/usr/bin/env bash
# Run every benchmark (each in its own process, with a timeout), write their JSON under benchmarks/results/
# and regenerate docs/benchmarks.md with the k-sweep figure docs/benchmarks_fidelity_k.png.
# Extra arguments go to `python -m benchmarks.run_all` (e.g. `--only reader fidelity_k`, `--report-only`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
ensure_venv
python -m pip install --quiet -e ".[test,eval]"
python -m benchmarks.run_all "$@"
