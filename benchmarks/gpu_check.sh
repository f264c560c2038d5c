#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): the build's teachers and the training step at real shape with
# random weights, each part in its own process with its own time limit; JSON under
# benchmarks/results/gpu_check/ (benchmarks/results/gpu_check_tiny/ with --tiny). Installs nothing and
# downloads nothing: it runs with the Python of .venv (made by `bash scripts/test.sh`), else $PYTHON, else
# python3, which must already hold the project's dependencies (`pip install -e .`).
#   bash benchmarks/gpu_check.sh [--tiny] [--out DIR] [--only PART ...] [--budget-s S] [--device cuda:N]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then
    py="$PYTHON"
elif [ -x .venv/bin/python ]; then
    py=.venv/bin/python
else
    py=python3
fi
found='import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))'
if ! "$py" -c "$found" torch transformers pyarrow >/dev/null 2>&1; then
    echo "gpu_check: $py has no torch, transformers or pyarrow; install the project first" \
         "(bash scripts/test.sh, or pip install -e . into a Python with CUDA torch), or set PYTHON" >&2
    exit 2
fi
# The repository root on the path: the check also runs from a checkout whose dependencies are installed
# but which was not itself pip-installed.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1
exec "$py" -m benchmarks.gpu_check "$@"
