#!/usr/bin/env bash
# The whole analysis of one training set: the final DPO model, then the training dynamics of
# the SFT series and of the DPO series. Results land where the figure scripts look for them:
#   OUTPUT_ROOT/dpo_model/                          scores, summary.json
#   OUTPUT_ROOT/training_dynamics/TRAIN_SET/sft/    all / first50 / last50, summary.csv
#   OUTPUT_ROOT/training_dynamics/TRAIN_SET/dpo/
#
#   BASE_MODEL=./models/qwen SFT_DIR=./outputs/sft_m DPO_DIR=./outputs/dpo_m TRAIN_SET=m \
#       bash analysis/run_complete_analysis.sh
#
# Every variable below can be set in the environment.
TRAIN_SET="${TRAIN_SET:-m}"                     # f (forward), r (reverse) or m (mixed) training data
BASE_MODEL="${BASE_MODEL:-./models/your_base_model}"
SFT_DIR="${SFT_DIR:-./outputs/sft_${TRAIN_SET}}"  # scripts/sft.sh's run folder (epochs in checkpoints/<epoch>/)
DPO_DIR="${DPO_DIR:-./outputs/dpo_${TRAIN_SET}}"  # final adapter + checkpoint-<step>/ folders
DPO_MODEL="${DPO_MODEL:-${DPO_DIR}}"            # the model scored on its own (final DPO output)
# What DPO's adapters sit on. Empty (default): the base recorded in their adapter_config.json
# (e.g. ./outputs/sft_m/merged when DPO started from it); a different one stops with exit 2.
DPO_BASE_MODEL="${DPO_BASE_MODEL:-}"
DATASET_PATH="${DATASET_PATH:-./data/split/test.parquet}"  # held out: rows of trained problems stop the run
OUTPUT_ROOT="${OUTPUT_ROOT:-./outputs/analysis}"
REF_MODEL_PATH="${REF_MODEL_PATH:-}"            # DPO's reference (the model it started from): adds rewards
                                                # (an adapter there is loaded on its own recorded base)
SCORING="${SCORING:-response}"                  # response, or original (the published figure's scoring)

set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export BASE_MODEL DATASET_PATH SCORING

echo "== DPO model: ${DPO_MODEL}"
BASE_MODEL="${DPO_BASE_MODEL}" MODEL_PATH="${DPO_MODEL}" REF_MODEL_PATH="${REF_MODEL_PATH}" \
    OUTPUT_DIR="${OUTPUT_ROOT}/dpo_model" bash "${here}/run_dpo_analysis.sh"

echo "== SFT training dynamics: ${SFT_DIR}"
CHECKPOINT_DIR="${SFT_DIR}" STAGE=sft INCLUDE_BASE="${INCLUDE_BASE:-1}" \
    OUTPUT_DIR="${OUTPUT_ROOT}/training_dynamics/${TRAIN_SET}/sft" bash "${here}/run_training_dynamics.sh"

echo "== DPO training dynamics: ${DPO_DIR}"
BASE_MODEL="${DPO_BASE_MODEL}" CHECKPOINT_DIR="${DPO_DIR}" STAGE=dpo INCLUDE_BASE=0 \
    OUTPUT_DIR="${OUTPUT_ROOT}/training_dynamics/${TRAIN_SET}/dpo" bash "${here}/run_training_dynamics.sh"

echo "done: ${OUTPUT_ROOT}"
