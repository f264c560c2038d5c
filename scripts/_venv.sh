# Sourced by the scripts: create and activate .venv, installing the pinned CPU torch before anything
# else so that no dependency resolves a bare `torch` to a multi-GB CUDA build.
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"

ensure_venv() {
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv
        .venv/bin/python -m pip install --quiet --upgrade pip
    fi
    # shellcheck disable=SC1091
    source .venv/bin/activate
    if ! python -c "import torch" >/dev/null 2>&1; then
        python -m pip install --quiet "torch==${TORCH_VERSION}"
    fi
}
