#!/usr/bin/env bash
# The one command for set-up and the main job: creates .venv if missing (pinned CPU torch first), installs
# the project with its test and eval extras, then runs both pipelines end to end on tiny local models
# (python -m stages.quickstart): caches, tide-cache inspect, a few training steps per mode, a short
# evaluation, and a summary of where everything is. Output goes to quickstart_out/ (git-ignored).
# Extra arguments go to the quickstart (e.g. `bash scripts/quickstart.sh --steps 20`; `--help` lists them).
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
