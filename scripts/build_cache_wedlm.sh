#!/usr/bin/env bash
# Stage one, pipeline B (shared vocabulary): build a WeDLM logits cache with the paper defaults
# (DESIGN.md §7): student / teacher length 512 / 768, block 32, bf16 teacher, top-64 targets with
# log-partitions at T = 1.0 and 2.0 (TIDAL's T), plain + CompDemo passes, paper attention regime.
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
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
NUM_GPUS="${NUM_GPUS:-$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)}"

DEFAULTS=(--pipeline shared --max-length 512 --teacher-max-length 768 --block-size 32 --k 64
          --temperatures 1.0 2.0 --passes plain,compdemo --regime paper --value-dtype float16
          --dtype bfloat16 --replicas 1 --seed 0)

if [[ "${NUM_GPUS}" -gt 1 ]]; then
    # shellcheck disable=SC2086
    exec "${PYTHON}" -m accelerate.commands.launch --num_processes "${NUM_GPUS}" ${ACCELERATE_ARGS:-} \
        -m stages.cli build "${DEFAULTS[@]}" "$@"
fi
exec "${PYTHON}" -m stages.cli build "${DEFAULTS[@]}" "$@"
