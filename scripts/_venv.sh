# Sourced by the scripts: create and activate .venv, installing a pinned torch before anything else so
# that no dependency resolves a bare `torch` on its own. Which build `torch==2.13.0` is depends on the
# machine: PyPI's Linux x86_64 wheel is the CUDA build (several GB); TORCH_INDEX_URL picks another index,
# e.g. https://download.pytorch.org/whl/cpu for a CPU-only install (see the README, "Installing torch").
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
TORCH_INDEX_URL="${TORCH_INDEX_URL:-}"

ensure_venv() {
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv
        .venv/bin/python -m pip install --quiet --upgrade pip
    fi
    # shellcheck disable=SC1091
    source .venv/bin/activate
    if ! python -c "import torch" >/dev/null 2>&1; then
        python -m pip install --quiet "torch==${TORCH_VERSION}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
    fi
}
