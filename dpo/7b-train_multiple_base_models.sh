#!/usr/bin/env bash
# DPO for several base models in a row, one torchrun job each, with one recipe.
#
# The hyper-parameters are in the recipe (recipes/dpo/RECIPE.yaml), not here:
#   RECIPE=lora      (default) LoRA r=256/alpha=512, lr 5e-6 cosine, 50 steps, a checkpoint every 7,
#                    global batch 16
#   RECIPE=original  what the original run executed: full fine-tuning with a frozen reference,
#                    lr 5e-7 under DeepSpeed's WarmupDecayLR, 50 steps, global batch 16, 7 checkpoints
# Reference run (the study): Qwen2.5-7B-Instruct SFT models on 4 GPUs, sequences up to 20,000
# tokens, bf16 + flash attention + gradient checkpointing (all in the recipe).
#
# Edit the paths below (or: sed -i 's#./models/your_base_model#/data/qwen7b#' this file),
# or override any of them from the environment:
#   MODEL_PATHS="./models/a ./models/b" DATA_PATH=/data/x_split/train.parquet bash dpo/7b-train_multiple_base_models.sh
# One-off overrides of the recipe go in EXTRA_ARGS (e.g. EXTRA_ARGS="--max_steps 100").

# ---- what a user changes ------------------------------------------------------------------
MODEL_PATHS="${MODEL_PATHS:-./models/your_base_model}"      # space-separated list
MODEL_NAMES="${MODEL_NAMES:-}"                               # optional, same order; default: PARENT-FOLDER
DATA_PATH="${DATA_PATH:-./data/split/train.parquet}"      # train split of scripts/prepare_data.py
OUTPUT_ROOT="${OUTPUT_ROOT:-./outputs/}"
SAMPLE_TYPES="${SAMPLE_TYPES:-}"                             # e.g. original,flipped (default: all rows)
RECIPE="${RECIPE:-lora}"                                     # lora or original (recipes/dpo/), or a YAML path
EXTRA_ARGS="${EXTRA_ARGS:-}"                                 # any further combined_dpo.py flags
# Each model trains into OUTPUT_ROOT/dpo_NAME, NAME = its parent and own folder name
# (./outputs/sft_f/merged -> dpo_sft_f-merged). A folder that already holds a trained run is
# refused; EXTRA_ARGS="--resume_from_checkpoint latest" continues (or skips) finished runs.
# The recipe also names the DeepSpeed config, bf16, flash attention and gradient checkpointing (on a
# machine without a GPU the scripts run their CPU equivalents). DS_CONFIG=PATH overrides the config,
# DS_CONFIG= (empty) runs without DeepSpeed; PRECISION_ARGS="--bf16 False" overrides precision flags.
# -------------------------------------------------------------------------------------------

source "$(dirname "${BASH_SOURCE[0]}")/../scripts/launch_common.sh"
cd "${REPO_ROOT}"

device_overrides

run_name() {  # run_name MODEL_PATH: PARENT-FOLDER, e.g. ./outputs/sft_f/merged -> sft_f-merged
    local path
    path="$(realpath -m "$1")"
    echo "$(basename "$(dirname "${path}")")-$(basename "${path}")"
}

read -r -a models <<< "${MODEL_PATHS}"
read -r -a given_names <<< "${MODEL_NAMES}"
names=()
for i in "${!models[@]}"; do
    names+=("${given_names[$i]:-$(run_name "${models[$i]}")}")
done
duplicates="$(printf '%s\n' "${names[@]}" | sort | uniq -d)"
if [[ -n "${duplicates}" ]]; then  # two runs would write the same output folder
    echo "error: several MODEL_PATHS get the run name(s) ${duplicates//$'\n'/, }; set MODEL_NAMES" \
        "(one unique name per model, same order)" >&2
    exit 2
fi
mkdir -p "${OUTPUT_ROOT}/logs"
failed=()
for i in "${!models[@]}"; do
    model="${models[$i]}"
    name="${names[$i]}"
    output_dir="${OUTPUT_ROOT%/}/dpo_${name}"
    log_file="${OUTPUT_ROOT%/}/logs/dpo_${name}.log"
    if ! require_path "model" "${model}" || ! require_path "dataset" "${DATA_PATH}"; then
        echo "skipping ${name}" >&2
        failed+=("${name}")
        continue
    fi
    echo "=== DPO ${name}: ${model} -> ${output_dir} (log: ${log_file})"
    # shellcheck disable=SC2086  # EXTRA_ARGS is a flag list
    if run_logged "${log_file}" launch dpo/combined_dpo.py \
        --model_name "${model}" --train_file_path "${DATA_PATH}" --output_dir "${output_dir}" \
        ${SAMPLE_TYPES:+--sample_types "${SAMPLE_TYPES}"} \
        --config "${RECIPE}" ${DEVICE_ARGS[@]+"${DEVICE_ARGS[@]}"} ${EXTRA_ARGS}; then
        echo "    done"
    else
        failed+=("${name}")
    fi
done

finish_runs "${OUTPUT_ROOT}" "${failed[@]}"
