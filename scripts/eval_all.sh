#!/usr/bin/env bash
# Evaluate a student checkpoint on the eight paper benchmarks (docs/design.md#evaluation-protocol) with tide-eval:
#   mmlu_generative_dream, mmlu_pro, hellaswag_gen, gsm8k_cot, bbh (3-shot CoT), minerva_math,
#   humaneval_instruct, mbpp_instruct
# Block size 32, CFG 0, greedy low-confidence remasking, chat template applied; generation length and steps
# 3 for mmlu_generative_dream and hellaswag_gen, 256 for the others. Results go to OUTPUT_DIR/<task>/ and a
# (task, metric, score) table with the average is printed at the end.
#
# Usage:
#   bash scripts/eval_all.sh --model /path/to/checkpoint [--output eval_results] [--limit N]
#                            [--think-block auto|never] [--tasks t1,t2] [any other `tide-eval run` option]
# Environment: PYTHON (default .venv/bin/python when present, else python).
# humaneval_instruct and mbpp_instruct execute generated code; this script confirms that on your behalf.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=""
OUTPUT="eval_results"
EXTRA=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --model) MODEL="$2"; shift 2 ;;
        --output) OUTPUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) EXTRA+=("$1"); shift ;;
    esac
done
if [[ -z "${MODEL}" ]]; then
    echo "error: --model /path/to/checkpoint is required" >&2
    exit 2
fi

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
export HF_ALLOW_CODE_EVAL=1

# block size, CFG, remasking and temperature are tide-eval's defaults, the protocol's (stages/eval/protocol.py)
"${PYTHON}" -m stages.eval.cli run \
    --model "${MODEL}" \
    --tasks all \
    --output "${OUTPUT}" \
    --confirm-run-unsafe-code \
    "${EXTRA[@]}"
