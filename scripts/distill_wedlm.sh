#!/usr/bin/env bash
# Pipeline B (shared vocabulary): train the student from a WeDLM ("shared") cache in one paper variant, i.e.
# `tide-train --config configs/train/wedlm/<variant>.yaml`. The file holds what makes the variant (its
# mode, CompDemo targets); the settings every variant shares are tide-train's defaults (`tide-train
# --help`: lr 5e-5, 10 epochs, the vocabulary modes' T = 2.0, TIDAL λ0 0.1 → λmax 0.9, ...). Flags given
# here override both. The cache must store T = 2.0 (scripts/build_cache_wedlm.sh does).
#
# Usage:
#   bash scripts/distill_wedlm.sh --cache DIR --student PATH --output DIR [--variant NAME] [--accelerate ddp|fsdp|deepspeed]
#                                 [any other tide-train option]
# Environment: PYTHON (default .venv/bin/python when present, else python).
# Variants (configs/train/wedlm/NAME.yaml; default tide_shared):
set -euo pipefail
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$0")/.."
source scripts/_paper.sh
for arg in "$@"; do
    if [[ "${arg}" == "-h" || "${arg}" == "--help" ]]; then
        sed -n '2,12p' "${SELF}"; paper_variants configs/train/wedlm; exit 0
    fi
done
paper_distill configs/train/wedlm tide_shared "$@"
