#!/usr/bin/env bash
# Pipeline A (cross-tokenizer): train the student from a LLaDA2 ("cross") cache with the paper defaults
# (DESIGN.md §6–§7): lr 5e-5, 10 epochs, cosine schedule, chunk temperature T = 5.0, TIDAL λ0 0.1 → λmax 0.9
# (both axes, cosine, midrange) where a TIDAL variant is used, bf16 where supported.
#
# Usage:
#   bash scripts/distill_llada2.sh --cache DIR --student PATH --output DIR [--variant NAME] [--accelerate ddp|fsdp|deepspeed]
#                                  [any other tide-train option, e.g. --batch_size 8 --grad_accum 4 --max_steps 100]
# Variants (paper name → tide-train mode):
#   tide_cross   reverse_calm                    TIDE-Cross (default)
#   calm         calm                            CALM baseline
#   tidal_calm   tidal_calm                      TIDAL on chunks, plain targets
#   swapped      tidal_calm --comp_demo          TIDE-Shared's strategy (TIDAL + CompDemo) in pipeline A
#   reverse_tidal_calm  reverse_tidal_calm       reverse TIDAL-CALM
#   bd3lm        ce                              BD3LM baseline (no teacher term)
# Environment: PYTHON (default .venv/bin/python when present, else python).
set -euo pipefail
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$0")/.."

VARIANT="tide_cross"
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
    tide_cross) MODE=(--mode reverse_calm) ;;
    calm) MODE=(--mode calm) ;;
    tidal_calm) MODE=(--mode tidal_calm) ;;
    swapped) MODE=(--mode tidal_calm --comp_demo) ;;
    reverse_tidal_calm) MODE=(--mode reverse_tidal_calm) ;;
    bd3lm) MODE=(--mode ce) ;;
    *) echo "error: unknown --variant ${VARIANT} (tide_cross, calm, tidal_calm, swapped, reverse_tidal_calm, bd3lm)" >&2; exit 2 ;;
esac

DEFAULTS=(--lr 5e-5 --epochs 10 --lr_schedule cosine --temperature 5.0 --lambda0 0.1 --lambda_max 0.9
          --tidal_axis both --tidal_decay cosine --tidal_weight midrange --mixed_precision auto)

PYTHON="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}"
if [[ -n "${ACCEL}" ]]; then
    exec "${PYTHON}" -m accelerate.commands.launch --config_file "scripts/accelerate/${ACCEL}.yaml" \
        -m stages.train.cli "${DEFAULTS[@]}" "${MODE[@]}" "${ARGS[@]}"
fi
exec "${PYTHON}" -m stages.train.cli "${DEFAULTS[@]}" "${MODE[@]}" "${ARGS[@]}"
