#!/usr/bin/env bash
# SFT on the preferred responses (y+ = `text`) of the forward, reverse and mixed sets, one
# torchrun job each: D_f (sample_type original), D_r (flipped), D_m (both).
#
# The hyper-parameters are in the recipe (recipes/sft/RECIPE.yaml), not here:
#   RECIPE=s1    (default) s1's full fine-tuning: lr 1e-5 cosine, 5% warm-up, weight decay 1e-4,
#                Adam betas (0.9, 0.95), global batch 16, 6 epochs with a checkpoint after each
#   RECIPE=lora  the same schedule with a LoRA adapter (r=256, alpha=512) at lr 1e-4
# Reference run (the paper's numbers): Qwen2.5-7B-Instruct on s1K-style data (chat-formatted
# think + answer traces), loss on the assistant part only, sequences up to 20,000 tokens, bf16,
# ZeRO-3 + flash attention + gradient checkpointing (all in the recipe):
#   MODEL_PATH=./models/Qwen2.5-7B-Instruct DATA_PATH=./data/split/train.parquet \
#   bash scripts/sft.sh
# Then DPO from an SFT model: dpo/7b-train_multiple_base_models.sh (MODEL_PATHS=OUTPUT/sft_m/merged).
#
# Edit the paths below or override any of them from the environment, e.g.
#   TRAIN_SETS="f" EXTRA_ARGS="--num_train_epochs 2 --merge_weights" bash scripts/sft.sh

# ---- what a user changes ------------------------------------------------------------------
MODEL_PATH="${MODEL_PATH:-./models/your_base_model}"
DATA_PATH="${DATA_PATH:-./data/split/train.parquet}"  # train split of scripts/prepare_data.py
OUTPUT_ROOT="${OUTPUT_ROOT:-./outputs/}"
TRAIN_SETS="${TRAIN_SETS:-f r m}"        # f = D_f (original), r = D_r (flipped), m = D_m (both)
RECIPE="${RECIPE:-s1}"                  # s1 or lora (recipes/sft/), or a YAML path
EXTRA_ARGS="${EXTRA_ARGS:-}"            # any further scripts/sft.py flags (--merge_weights, --num_train_epochs 2)
# OUTPUT_ROOT/sft_<set> already holding a trained run is refused (exit 2): use a new OUTPUT_ROOT
# per base model, or EXTRA_ARGS="--resume_from_checkpoint latest" to continue (finished runs are skipped).
# The recipe also names the DeepSpeed config, bf16, flash attention and gradient checkpointing (on a
# machine without a GPU the scripts run their CPU equivalents). DS_CONFIG=PATH overrides the config,
# DS_CONFIG= (empty) runs without DeepSpeed; PRECISION_ARGS="--bf16 False" overrides precision flags.
# -------------------------------------------------------------------------------------------

source "$(dirname "${BASH_SOURCE[0]}")/launch_common.sh"
cd "${REPO_ROOT}"

device_overrides

require_path "model" "${MODEL_PATH}" || exit 1
require_path "dataset" "${DATA_PATH}" || exit 1

mkdir -p "${OUTPUT_ROOT}/logs"
failed=()
for train_set in ${TRAIN_SETS}; do
    if ! sample_types="$(set_sample_types "${train_set}" 2>/dev/null)"; then
        echo "error: unknown TRAIN_SETS entry '${train_set}' (expected f, r or m)" >&2
        failed+=("${train_set}")
        continue
    fi
    output_dir="${OUTPUT_ROOT%/}/sft_${train_set}"
    log_file="${OUTPUT_ROOT%/}/logs/sft_${train_set}.log"
    echo "=== SFT D_${train_set} (${sample_types}) -> ${output_dir} (log: ${log_file})"
    # shellcheck disable=SC2086  # EXTRA_ARGS is a flag list
    if run_logged "${log_file}" launch scripts/sft.py \
        --model_name "${MODEL_PATH}" --train_file_path "${DATA_PATH}" --output_dir "${output_dir}" \
        --sample_types "${sample_types}" --config "${RECIPE}" \
        ${DEVICE_ARGS[@]+"${DEVICE_ARGS[@]}"} ${EXTRA_ARGS}; then
        echo "    done: ${output_dir}/checkpoints/"
    else
        failed+=("${train_set}")
    fi
done

finish_runs "${OUTPUT_ROOT}" "${failed[@]}"
