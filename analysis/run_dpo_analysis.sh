#!/usr/bin/env bash
# Score a DPO model (LoRA adapter or full model) on a preference file: per-example log p(y+),
# log p(y-), their gap and, with REF_MODEL_PATH, the DPO implicit rewards. One process per GPU.
#
#   MODEL_PATH=./outputs/dpo_m DATASET_PATH=./data/split/test.parquet bash analysis/run_dpo_analysis.sh
#   bash analysis/run_dpo_analysis.sh --sample_types original --max_tokens 500   # extra flags
#
# Every variable below can be set in the environment; extra arguments go to the Python script.
MODEL_PATH="${MODEL_PATH:-./outputs/dpo_m}"   # a DPO output dir (adapter) or a full model
BASE_MODEL="${BASE_MODEL:-}"            # base of a LoRA adapter (default, and checked: the adapter config's)
REF_MODEL_PATH="${REF_MODEL_PATH:-}"    # e.g. ./models/your_base_model to add rewards
DATASET_PATH="${DATASET_PATH:-./data/split/test.parquet}"  # held out (scripts/prepare_data.py)
OUTPUT_DIR="${OUTPUT_DIR:-./outputs/dpo_analysis}"
BETA="${BETA:-}"                        # empty: the beta the model was trained with (its run record)
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
require_path "model" "${MODEL_PATH}"
require_path "dataset" "${DATASET_PATH}"

optional=()
[[ "${GPU_COUNT}" -gt 0 ]] && optional+=(--use_flash_attention)  # SDPA, with a warning, without flash-attn
[[ -n "${BASE_MODEL}" ]] && optional+=(--base_model "${BASE_MODEL}")
[[ -n "${REF_MODEL_PATH}" ]] && optional+=(--ref_model_path "${REF_MODEL_PATH}")

launch "${REPO_ROOT}/analysis/analyze_dpo_model.py" \
    --model_path "${MODEL_PATH}" --dataset_path "${DATASET_PATH}" --output_dir "${OUTPUT_DIR}" \
    ${BETA:+--beta "${BETA}"} --max_tokens "${MAX_TOKENS}" ${MAX_LENGTH:+--max_length "${MAX_LENGTH}"} \
    ${MAX_PROMPT_LENGTH:+--max_prompt_length "${MAX_PROMPT_LENGTH}"} --scoring "${SCORING}" \
    ${SCORE_TOKENS:+--score_tokens "${SCORE_TOKENS}"} \
    ${PROBES:+--probes "${PROBES}"} ${PROBE_FIELDS:+--probe_fields "${PROBE_FIELDS}"} \
    ${PROBE_TRAIN_FILE:+--probe_train_file "${PROBE_TRAIN_FILE}"} --token_positions "${TOKEN_POSITIONS}" \
    --batch_size "${BATCH_SIZE}" "${optional[@]}" "$@"
