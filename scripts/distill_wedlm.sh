#!/usr/bin/env bash
# Pipeline B (shared vocabulary): train the student from a WeDLM ("shared") cache with the paper defaults
# (DESIGN.md §6–§7): lr 5e-5, 10 epochs, cosine schedule, vocabulary temperature T = 2.0, TIDAL λ0 0.1 →
# λmax 0.9 on both axes with a cosine curve and the midrange weight, CompDemo targets, bf16 where supported.
# The cache must store T = 2.0 among its temperatures (tide-cache build --temperatures 1.0 2.0).
#
# Usage:
#   bash scripts/distill_wedlm.sh --cache DIR --student PATH --output DIR [--variant NAME] [--accelerate ddp|fsdp|deepspeed]
#                                 [any other tide-train option]
# Variants (paper name → tide-train mode):
#   tide_shared  tidal --comp_demo               TIDE-Shared (default)
#   tidal        tidal                           TIDAL with plain targets (no CompDemo)
#   kl           kl                              KL baseline
#   swapped      reverse_kl                      TIDE-Cross's strategy (reverse objective) in pipeline B
#   bd3lm        ce                              BD3LM baseline (no teacher term)
# Environment: PYTHON (default .venv/bin/python when present, else python).
set -euo pipefail
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$0")/.."

VARIANT="tide_shared"
ACCEL=""
ARGS=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --variant) VARIANT="$2"; shift 2 ;;
        --accelerate) ACCEL="$2"; shift 2 ;;
        -h|--help) sed -n '2,18p' "${SELF}"; exit 0 ;;
        *) ARGS+=("$1"); shift ;;
    esac
done

case "${VARIANT}" in
    tide_shared) MODE=(--mode tidal --comp_demo) ;;
    tidal) MODE=(--mode tidal) ;;
    kl) MODE=(--mode kl) ;;
    swapped) MODE=(--mode reverse_kl) ;;
    bd3lm) MODE=(--mode ce) ;;
    *) echo "error: unknown --variant ${VARIANT} (tide_shared, tidal, kl, swapped, bd3lm)" >&2; exit 2 ;;
esac

DEFAULTS=(--lr 5e-5 --epochs 10 --lr_schedule cosine --temperature 2.0 --lambda0 0.1 --lambda_max 0.9
          --tidal_axis both --tidal_decay cosine --tidal_weight midrange --mixed_precision auto)

PYTHON="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}"
if [[ -n "${ACCEL}" ]]; then
    exec "${PYTHON}" -m accelerate.commands.launch --config_file "scripts/accelerate/${ACCEL}.yaml" \
        -m stages.train.cli "${DEFAULTS[@]}" "${MODE[@]}" "${ARGS[@]}"
fi
exec "${PYTHON}" -m stages.train.cli "${DEFAULTS[@]}" "${MODE[@]}" "${ARGS[@]}"
