# Sourced by the paper scripts (build_cache_*.sh, distill_*.sh) from the repository root. They are thin
# wrappers: the settings live in configs/ (what makes a pipeline or a variant) and in the commands' own
# defaults (what every variant shares); these functions only pick the config file and the launcher.
PYTHON="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}"

# paper_build CONFIG ARGS...: `tide-cache build --config CONFIG ARGS...`, through `accelerate launch` on
# every visible GPU when there is more than one (NUM_GPUS overrides the count; ACCELERATE_ARGS adds to it).
paper_build() {
    local config="$1"
    shift
    local gpus="${NUM_GPUS:-$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)}"
    if [[ "${gpus}" -gt 1 ]]; then
        # shellcheck disable=SC2086
        exec "${PYTHON}" -m accelerate.commands.launch --num_processes "${gpus}" ${ACCELERATE_ARGS:-} \
            -m stages.cli build --config "${config}" "$@"
    fi
    exec "${PYTHON}" -m stages.cli build --config "${config}" "$@"
}

# paper_variants DIR: one line per variant file in DIR: its name and the file's first (comment) line.
paper_variants() {
    local file
    for file in "$1"/*.yaml; do
        printf '  %-22s %s\n' "$(basename "${file}" .yaml)" "$(sed -n '1s/^# *//p' "${file}")"
    done
}

# paper_distill DIR DEFAULT_VARIANT ARGS...: `tide-train --config DIR/<variant>.yaml ARGS...`; in ARGS,
# --variant NAME picks the file and --accelerate ddp|fsdp|deepspeed launches with scripts/accelerate/NAME.yaml.
paper_distill() {
    local dir="$1" variant="$2" accel=""
    local args=()
    shift 2
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --variant) variant="$2"; shift 2 ;;
            --accelerate) accel="$2"; shift 2 ;;
            *) args+=("$1"); shift ;;
        esac
    done
    local config="${dir}/${variant}.yaml"
    if [[ ! -f "${config}" ]]; then
        echo "error: unknown --variant ${variant}; the variants are the files in ${dir}/:" >&2
        paper_variants "${dir}" >&2
        exit 2
    fi
    if [[ -n "${accel}" ]]; then
        if [[ ! -f "scripts/accelerate/${accel}.yaml" ]]; then
            echo "error: --accelerate ${accel}: no scripts/accelerate/${accel}.yaml (ddp, fsdp or deepspeed)" >&2
            exit 2
        fi
        exec "${PYTHON}" -m accelerate.commands.launch --config_file "scripts/accelerate/${accel}.yaml" \
            -m stages.train.cli --config "${config}" "${args[@]}"
    fi
    exec "${PYTHON}" -m stages.train.cli --config "${config}" "${args[@]}"
}
