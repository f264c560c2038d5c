#!/usr/bin/env bash
# Stage one, pipeline B (shared vocabulary): build a WeDLM logits cache with the paper's settings, i.e.
# `tide-cache build --config configs/cache/wedlm.yaml` (the settings: that file over tide-cache build's
# defaults, listed by `tide-cache build --help`; flags given here override both). The stored temperatures
# include T = 2.0, the vocabulary modes' default.
# Launches with `accelerate launch` when more than one GPU is visible; re-running resumes.
#
# Usage:
#   bash scripts/build_cache_wedlm.sh --teacher PATH --student-tokenizer PATH --sources SPEC --output DIR
#                                     [any other tide-cache build option, e.g. --replicas 2]
# Environment: PYTHON (default .venv/bin/python when present, else python); NUM_GPUS (default: counted
#   with nvidia-smi); ACCELERATE_ARGS (extra arguments for accelerate launch, e.g. multi-node settings).
set -euo pipefail
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$0")/.."
for arg in "$@"; do
    if [[ "${arg}" == "-h" || "${arg}" == "--help" ]]; then sed -n '2,12p' "${SELF}"; exit 0; fi
done
source scripts/_paper.sh
paper_build configs/cache/wedlm.yaml "$@"
