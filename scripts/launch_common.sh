#!/usr/bin/env bash
# Shared preamble of the shell launchers: `source scripts/launch_common.sh` after the user's
# variables. Provides NUM_PROCS (visible GPUs, else CPU processes), GPU_COUNT, `set_sample_types SET`,
# and `launch SCRIPT ARGS...` = torchrun on this machine (single node: a
# fresh free MASTER_PORT per run unless the user set one; NUM_NODES > 1: c10d rendezvous at
# MASTER_ADDR:MASTER_PORT, both required, one rendezvous id per run).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Use the project-local virtual environment when one exists and none is active.
if [[ -z "${VIRTUAL_ENV:-}" && -x "${REPO_ROOT}/.venv/bin/python" ]]; then
    export PATH="${REPO_ROOT}/.venv/bin:${PATH}"
fi

set_sample_types() {  # set_sample_types SET: the --sample_types value of f, r or m (fwdrev/sets.py)
    python -m fwdrev.sets sample_types "$1"
}

count_gpus() {  # GPUs this job may use: nvidia-smi's list, narrowed by CUDA_VISIBLE_DEVICES
    local installed visible=() entry count=0
    if ! command -v nvidia-smi >/dev/null 2>&1; then
        echo 0
        return
    fi
    installed="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)"
    if [[ -z "${CUDA_VISIBLE_DEVICES+set}" ]]; then
        echo "${installed}"
        return
    fi
    # CUDA reads the list up to its first invalid entry (e.g. -1); "" hides every device.
    IFS=',' read -r -a visible <<< "${CUDA_VISIBLE_DEVICES}"
    for entry in "${visible[@]}"; do
        entry="${entry// /}"
        [[ -z "${entry}" || "${entry}" == -* ]] && break
        count=$((count + 1))
    done
    echo $((count < installed ? count : installed))
}

free_port() {
    python - <<'PY'
import socket
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])
PY
}

GPU_COUNT="$(count_gpus)"
if [[ "${GPU_COUNT}" -gt 0 ]]; then
    NUM_PROCS="${NUM_PROCS:-${GPU_COUNT}}"
else
    NUM_PROCS="${NUM_PROCS:-${CPU_PROCS:-2}}"
fi
NUM_NODES="${NUM_NODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
USER_MASTER_PORT="${MASTER_PORT:-}"  # a port the user set is used for every run, never re-picked
if [[ "${NUM_NODES}" -gt 1 && ( -z "${MASTER_ADDR:-}" || -z "${USER_MASTER_PORT}" ) ]]; then
    echo "error: NUM_NODES=${NUM_NODES} needs MASTER_ADDR (the first node's address) and" \
         "MASTER_PORT (a free port there), the same on every node" >&2
    exit 2
fi
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
# DeepSpeed builds its C++ ops once and caches them here.
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-${HOME}/.cache/torch_extensions}"
# Long sequences of varying length fragment the CUDA caching allocator (as the original set).
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"

rendezvous_id() {  # rendezvous_id SCRIPT ARGS...: the same on every node, different per run
    local previous="" argument name=""
    for argument in "$@"; do
        [[ "${previous}" == "--output_dir" ]] && name="${argument}"
        [[ "${argument}" == --output_dir=* ]] && name="${argument#--output_dir=}"
        previous="${argument}"
    done
    name="$(basename "${1%.py}")_$(basename "${name:-run}")"
    echo "${RDZV_ID:-${name//[^A-Za-z0-9_.-]/_}}"
}

launch() {
    if [[ "${NUM_NODES}" -gt 1 ]]; then
        # Static rendezvous would need NODE_RANK per node; c10d assigns ranks at the endpoint.
        torchrun --nnodes="${NUM_NODES}" --nproc_per_node="${NUM_PROCS}" --rdzv_backend=c10d \
            --rdzv_endpoint="${MASTER_ADDR}:${USER_MASTER_PORT}" --rdzv_id="$(rendezvous_id "$@")" "$@"
        return
    fi
    MASTER_PORT="${USER_MASTER_PORT:-$(free_port)}"  # fresh per run: the last one may linger
    torchrun --nnodes=1 --nproc_per_node="${NUM_PROCS}" \
        --master_addr="${MASTER_ADDR}" --master_port="${MASTER_PORT}" "$@"
}

run_logged() {  # run_logged LOG_FILE COMMAND...: output to LOG_FILE; on failure show its tail
    local log_file="$1"
    shift
    "$@" > "${log_file}" 2>&1 && return 0
    local status=$?
    echo "    FAILED (exit ${status}): see ${log_file}" >&2
    tail -n 20 "${log_file}" >&2
    return "${status}"
}

require_path() {  # require_path WHAT PATH: report a missing input and return non-zero
    if [[ ! -e "$2" ]]; then
        echo "error: $1 not found: $2" >&2
        return 1
    fi
}

finish_runs() {  # finish_runs OUTPUT_ROOT [FAILED_RUN...]: the closing line; non-zero if any failed
    local output_root="$1"
    shift
    if [[ $# -gt 0 ]]; then
        echo "failed runs: $*" >&2
        return 1
    fi
    echo "all runs finished: ${output_root}"
}

device_overrides() {  # sets DEVICE_ARGS: DS_CONFIG and PRECISION_ARGS as flags over the recipe
    # The recipe names the DeepSpeed config and precision; without a GPU the scripts run their
    # CPU equivalents (fwdrev.recipes.cpu_recipe). DS_CONFIG=PATH replaces the recipe's config and
    # DS_CONFIG set but empty runs without DeepSpeed; PRECISION_ARGS is a list of flags ("--bf16 False").
    local precision=()
    DEVICE_ARGS=()
    if [[ -n "${DS_CONFIG+set}" ]]; then
        DEVICE_ARGS+=(--deepspeed "${DS_CONFIG}")
    fi
    read -r -a precision <<< "${PRECISION_ARGS:-}"
    DEVICE_ARGS+=(${precision[@]+"${precision[@]}"})
    if [[ "${GPU_COUNT}" -eq 0 ]]; then
        echo "no GPU found: running ${NUM_PROCS} CPU processes (the recipe's CPU equivalents)"
    fi
}
