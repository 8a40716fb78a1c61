#!/usr/bin/env bash
# Benchmark accuracy (analysis/evaluate_benchmarks.py): the paper's table for the SFT models
# (D_f, D_r, D_m) and the DPO model on AIME24, MATH500 and GPQA Diamond, plus D_r vs D_f.
#
#   bash analysis/run_benchmarks.sh                                  # the defaults below
#   BACKEND=hf BENCHMARKS=heldout DATA_FILES="heldout=./data/split/test.parquet" bash analysis/run_benchmarks.sh
#   bash analysis/run_benchmarks.sh --max_thinking_tokens auto --num_wait 1   # extra flags
#
# Every variable below can be set in the environment; extra arguments go to the Python script.
# BACKEND=vllm runs in .venv-eval (create it once: bash scripts/setup_env.sh eval).
MODELS="${MODELS:-sft_f=./outputs/sft_f sft_r=./outputs/sft_r sft_m=./outputs/sft_m dpo_m=./outputs/dpo_m}"
CHECKPOINT_DIR="${CHECKPOINT_DIR:-}"      # instead of MODELS: every checkpoint of one run
BENCHMARKS="${BENCHMARKS:-aime24,math500,gpqa_diamond}"
DATA_FILES="${DATA_FILES:-}"              # offline: "aime24=PATH math500=PATH gpqa_diamond=PATH"
PAIRED="${PAIRED-sft_f,sft_r}"            # paired differences B - A (space-separated pairs; "" none)
OUTPUT_DIR="${OUTPUT_DIR:-./outputs/benchmarks}"
BACKEND="${BACKEND:-vllm}"                # vllm on GPUs, hf on CPUs
MAX_TOKENS="${MAX_TOKENS:-32768}"         # s1's max_gen_toks
MAX_THINKING_TOKENS="${MAX_THINKING_TOKENS-auto}"  # s1's max_tokens_thinking (N, auto; "" = no forcing)
NUM_WAIT="${NUM_WAIT:-0}"                 # s1's thinking_n_ignore ("Wait" N times)
TENSOR_PARALLEL_SIZE="${TENSOR_PARALLEL_SIZE:-}"  # default: every visible GPU

source "$(dirname "${BASH_SOURCE[0]}")/../scripts/launch_common.sh"

PYTHON_BIN=python
if [[ "${BACKEND}" == vllm && -x "${REPO_ROOT}/.venv-eval/bin/python" ]]; then
    PYTHON_BIN="${REPO_ROOT}/.venv-eval/bin/python"  # vLLM's own environment
fi
models=()
if [[ -n "${CHECKPOINT_DIR}" ]]; then
    require_path "checkpoint folder" "${CHECKPOINT_DIR}"
    models=(--checkpoint_dir "${CHECKPOINT_DIR}")
else
    # shellcheck disable=SC2206  # MODELS is a list of LABEL=PATH words
    models=(--model_path ${MODELS})
fi
optional=()
# shellcheck disable=SC2206  # lists of words
[[ -n "${DATA_FILES}" ]] && optional+=(--data_files ${DATA_FILES})
# shellcheck disable=SC2206
[[ -n "${PAIRED}" && -z "${CHECKPOINT_DIR}" ]] && optional+=(--paired ${PAIRED})
[[ -n "${MAX_THINKING_TOKENS}" ]] && optional+=(--max_thinking_tokens "${MAX_THINKING_TOKENS}")
if [[ "${BACKEND}" == vllm ]]; then
    optional+=(--tensor_parallel_size "${TENSOR_PARALLEL_SIZE:-$((GPU_COUNT > 0 ? GPU_COUNT : 1))}")
fi

"${PYTHON_BIN}" "${REPO_ROOT}/analysis/evaluate_benchmarks.py" "${models[@]}" --benchmarks "${BENCHMARKS}" \
    --backend "${BACKEND}" --max_tokens "${MAX_TOKENS}" --num_wait "${NUM_WAIT}" --output_dir "${OUTPUT_DIR}" \
    "${optional[@]}" "$@"
