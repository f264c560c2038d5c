#!/usr/bin/env bash
# The one command for set-up and the main job: creates .venv if missing (pinned CPU torch first), installs
# the project with its test and eval extras, then (python -m stages.quickstart) pre-trains two small
# teachers on a toy task and runs both pipelines end to end on them: caches, tide-cache inspect, students
# trained with CE only and with every pipeline's modes, held-out scores of teachers and students, a short
# evaluation, and a summary of where everything is. Output goes to quickstart_out/ (git-ignored).
# Extra arguments go to the quickstart (e.g. `bash scripts/quickstart.sh --steps 300`; `--help` lists them).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
echo "[0/5] environment: .venv and pip install -e '.[test,eval]'"
ensure_venv
# pip's output (resolver notes, build-backend warnings) goes to a log that is shown only if it fails.
pip_log="$(mktemp "${TMPDIR:-/tmp}/tide-quickstart-pip.XXXXXX")"
if ! python -m pip install --quiet -e ".[test,eval]" >"$pip_log" 2>&1; then
    cat "$pip_log" >&2
    echo "quickstart: pip install failed (log above, also in $pip_log)" >&2
    exit 1
fi
rm -f "$pip_log"
python -m stages.quickstart "$@"
