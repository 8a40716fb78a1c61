#!/usr/bin/env bash
# Score every checkpoint of one SFT or DPO run (log p(y+), log p(y-) per example and
# checkpoint). Resumable: rerun after an interruption and finished checkpoints are skipped.
#
#   CHECKPOINT_DIR=./outputs/sft_m STAGE=sft OUTPUT_DIR=./outputs/training_dynamics/m/sft \
#       bash analysis/run_training_dynamics.sh
#   EPOCHS=1,2,3 INCLUDE_BASE=1 bash analysis/run_training_dynamics.sh
#
# Every variable below can be set in the environment; extra arguments go to the Python script.
# Base of the run's LoRA checkpoints; set but empty: the base recorded in their adapter_config.json.
BASE_MODEL="${BASE_MODEL-./models/your_base_model}"
CHECKPOINT_DIR="${CHECKPOINT_DIR:-./outputs/sft_m}"  # an SFT run folder (or its checkpoints/), or a DPO output dir
DATASET_PATH="${DATASET_PATH:-./data/split/test.parquet}"  # held out (scripts/prepare_data.py)
OUTPUT_DIR="${OUTPUT_DIR:-./outputs/training_dynamics}"
STAGE="${STAGE:-auto}"                  # sft (<epoch>/ folders), dpo (checkpoint-<step>/), auto
EPOCHS="${EPOCHS:-}"                    # e.g. 1,2,3 (default: every checkpoint found)
INCLUDE_BASE="${INCLUDE_BASE:-0}"       # 1: also score the base model as epoch 0
MAX_TOKENS="${MAX_TOKENS:-1000}"
MAX_LENGTH="${MAX_LENGTH:-}"                # empty: the scripts' default (fwdrev.data_arguments.DEFAULT_MAX_LENGTH)
MAX_PROMPT_LENGTH="${MAX_PROMPT_LENGTH:-}"  # below MAX_LENGTH; empty: min(2048, MAX_LENGTH / 2)
BATCH_SIZE="${BATCH_SIZE:-2}"
SCORING="${SCORING:-response}"        # response, or original: the published figure's definition (docs/data_format.md)
SCORE_TOKENS="${SCORE_TOKENS:-}"      # empty: whole responses; 1000 (= MAX_TOKENS): only the first-K
                                      # columns of the headline metric (the rest NaN), faster
PROBES="${PROBES:-}"                  # e.g. all, or irr_test,permuted,argmax (docs/probes.md); empty: none
PROBE_FIELDS="${PROBE_FIELDS:-}"      # extra response columns of the data to score as probes
PROBE_TRAIN_FILE="${PROBE_TRAIN_FILE:-}"  # training split for irr_train (default: the run's record)
TOKEN_POSITIONS="${TOKEN_POSITIONS:-0}"   # 1000: per-position log-probs of y+/y- (token_logps.parquet)

source "$(dirname "${BASH_SOURCE[0]}")/../scripts/launch_common.sh"
require_path "checkpoint folder" "${CHECKPOINT_DIR}"
require_path "dataset" "${DATASET_PATH}"

optional=()
if [[ -n "${BASE_MODEL}" ]]; then
    require_path "base model" "${BASE_MODEL}"
    optional+=(--base_model "${BASE_MODEL}")
fi
[[ "${GPU_COUNT}" -gt 0 ]] && optional+=(--use_flash_attention)  # SDPA, with a warning, without flash-attn
[[ -n "${EPOCHS}" ]] && optional+=(--epochs "${EPOCHS}")
[[ "${INCLUDE_BASE}" == 1 ]] && optional+=(--include_base)

launch "${REPO_ROOT}/analysis/analyze_training_dynamics.py" \
    --checkpoint_dir "${CHECKPOINT_DIR}" \
    --dataset_path "${DATASET_PATH}" --output_dir "${OUTPUT_DIR}" --stage "${STAGE}" \
    --max_tokens "${MAX_TOKENS}" ${MAX_LENGTH:+--max_length "${MAX_LENGTH}"} \
    ${MAX_PROMPT_LENGTH:+--max_prompt_length "${MAX_PROMPT_LENGTH}"} --batch_size "${BATCH_SIZE}" --scoring "${SCORING}" \
    ${SCORE_TOKENS:+--score_tokens "${SCORE_TOKENS}"} \
    ${PROBES:+--probes "${PROBES}"} ${PROBE_FIELDS:+--probe_fields "${PROBE_FIELDS}"} \
    ${PROBE_TRAIN_FILE:+--probe_train_file "${PROBE_TRAIN_FILE}"} --token_positions "${TOKEN_POSITIONS}" \
    "${optional[@]}" "$@"
