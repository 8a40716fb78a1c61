#!/usr/bin/env bash
# Shared preamble of the shell launchers: `source scripts/launch_common.sh` after the user's
# variables. Provides NUM_PROCS (GPUs found, else CPU processes), a free MASTER_PORT, the
# project root on PYTHONPATH, GPU_COUNT, and `launch SCRIPT ARGS...` = torchrun on this machine.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="${REPO_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"

# Use the project-local virtual environment when one exists and none is active.
if [[ -z "${VIRTUAL_ENV:-}" && -x "${REPO_ROOT}/.venv/bin/python" ]]; then
    export PATH="${REPO_ROOT}/.venv/bin:${PATH}"
fi

count_gpus() {
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true
    else
        echo 0
    fi
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
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-$(free_port)}"
# DeepSpeed builds its C++ ops once and caches them here.
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-${HOME}/.cache/torch_extensions}"

launch() {
    torchrun --nnodes="${NUM_NODES}" --node_rank="${NODE_RANK}" --nproc_per_node="${NUM_PROCS}" \
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

choose_precision() {  # choose_precision GPU_DS_CONFIG: set DS_CONFIG and PRECISION_ARGS by device
    # Either can be set beforehand; DS_CONFIG set but empty runs without DeepSpeed.
    if [[ "${GPU_COUNT}" -eq 0 ]]; then
        # No GPU: fp32 and the CPU ZeRO-3 config (PyTorch AdamW, no offload, no C++ Adam build).
        DS_CONFIG="${DS_CONFIG-configs/ds_config_zero3_cpu.json}"
        PRECISION_ARGS="${PRECISION_ARGS:-}"
        echo "no GPU found: running ${NUM_PROCS} CPU processes${DS_CONFIG:+ with ${DS_CONFIG}}"
    else
        DS_CONFIG="${DS_CONFIG-$1}"
        PRECISION_ARGS="${PRECISION_ARGS:---bf16 --use_flash_attention --gradient_checkpointing}"
    fi
}
