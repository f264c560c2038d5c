#!/usr/bin/env bash
# Pipeline A (cross tokenizer): train the student from a LLaDA2 ("cross") cache in one paper variant, i.e.
# `tide-train --config configs/train/llada2/<variant>.yaml`. The file holds what makes the variant (its
# mode, CompDemo targets); the settings every variant shares are tide-train's defaults (`tide-train
# --help`: lr 5e-5, 10 epochs, the chunk modes' T = 5.0, ...). Flags given here override both.
#
# Usage:
#   bash scripts/distill_llada2.sh --cache DIR --student PATH --output DIR [--variant NAME] [--accelerate ddp|fsdp|deepspeed]
#                                  [any other tide-train option, e.g. --batch-size 8 --grad-accum 4 --max-steps 100]
# Environment: PYTHON (default .venv/bin/python when present, else python).
# Variants (configs/train/llada2/NAME.yaml; default tide_cross):
set -euo pipefail
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$0")/.."
source scripts/_paper.sh
for arg in "$@"; do
    if [[ "${arg}" == "-h" || "${arg}" == "--help" ]]; then
        sed -n '2,11p' "${SELF}"; paper_variants configs/train/llada2; exit 0
    fi
done
paper_distill configs/train/llada2 tide_cross "$@"
