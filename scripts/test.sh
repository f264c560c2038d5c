#!/usr/bin/env bash
# The one test command: creates .venv if missing, installs the project with its test and eval extras,
# runs pytest. Extra arguments go to pytest (e.g. `bash scripts/test.sh -k noise`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
ensure_venv
python -m pip install --quiet -e ".[test,eval]"
python -m pytest -q "$@"
