#!/usr/bin/env bash
# The whole study end to end on one CPU machine, with the shipped tiny default:
#   full-parameter SFT (as in s1) on D_f (forward rows), D_r (reverse rows) and D_m (both),
#   a checkpoint per epoch; LoRA-DPO from the last D_m SFT checkpoint, a checkpoint every few steps; log-probs of y+ and y- on the
#   held-out test sets T_f and T_r at every checkpoint; benchmark accuracy before and after;
#   the paper's figures from these results; a summary table.
# Every stage runs the same scripts and distributed path (torchrun, DeepSpeed ZeRO-3) as a GPU
# run, only small. Usage: bash scripts/quickstart.sh   (sizes below, overridable by environment)
set -Eeuo pipefail  # -E: the ERR trap below also fires inside functions (launch, run_logged)

# ---- paths and sizes ------------------------------------------------------------------------
QUICKSTART_OUT="${QUICKSTART_OUT:-./outputs/quickstart}"
MODEL_DIR="${MODEL_DIR:-./models/tiny-qwen}"
SOURCE_DATA="${SOURCE_DATA:-r1k.parquet}"       # shipped synthetic forward/reverse set
TRAIN_PROBLEMS="${TRAIN_PROBLEMS:-200}"          # each problem = one original + one flipped row
TEST_PROBLEMS="${TEST_PROBLEMS:-50}"
SFT_EPOCHS="${SFT_EPOCHS:-4}"
SFT_LR="${SFT_LR:-3e-3}"
SFT_BATCH="${SFT_BATCH:-8}"
DPO_STEPS="${DPO_STEPS:-24}"
DPO_SAVE_STEPS="${DPO_SAVE_STEPS:-4}"
DPO_LR="${DPO_LR:-5e-4}"
DPO_BATCH="${DPO_BATCH:-4}"
LORA_R="${LORA_R:-64}"
LORA_ALPHA="${LORA_ALPHA:-128}"
MAX_LENGTH="${MAX_LENGTH:-256}"
MAX_NEW_TOKENS="${MAX_NEW_TOKENS:-96}"
export NUM_PROCS="${NUM_PROCS:-2}"
DS_CONFIG="${DS_CONFIG:-configs/ds_config_zero3_cpu.json}"
# ---------------------------------------------------------------------------------------------

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${REPO_ROOT}"
STAGE="setup"
trap 'echo; echo "quickstart FAILED in stage: ${STAGE} (see the output above)" >&2' ERR
banner() {
    STAGE="$1"
    printf '\n==== [%s] %s ====\n' "$(date +%H:%M:%S)" "$1"
}
started=$(date +%s)

banner "setup: environment"
# shellcheck disable=SC1091
source scripts/setup_env.sh
source scripts/launch_common.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

OUT="${QUICKSTART_OUT%/}"
DATA="${OUT}/data"
RESULTS="${OUT}/analysis"
mkdir -p "${OUT}"
# The recipes (recipes/sft/s1.yaml, recipes/dpo/lora.yaml) with the tiny run's sizes on top:
COMMON=(--max_length "${MAX_LENGTH}" --max_prompt_length 128 --lora_r "${LORA_R}"
        --lora_alpha "${LORA_ALPHA}" --lora_dropout 0.0 --deepspeed "${DS_CONFIG}"
        --logging_steps 5 --report_to tensorboard --seed 0
        --resume_from_checkpoint latest)  # a rerun continues unfinished runs and skips finished ones

banner "setup: tiny model and data"
if [[ ! -f r1k.parquet ]]; then  # the shipped set (the tiny model's tokenizer is trained on it)
    python scripts/make_sample_data.py --num_rows 1000 --seed 0 --output r1k.parquet
fi
if [[ ! -f "${MODEL_DIR}/config.json" ]]; then
    python scripts/make_tiny_model.py --output_dir "${MODEL_DIR}"
fi
python scripts/prepare_data.py --input "${SOURCE_DATA}" --output_dir "${DATA}" \
    --test_groups "${TEST_PROBLEMS}" --train_groups "${TRAIN_PROBLEMS}"

sft() {  # sft SET SAMPLE_TYPES: full-parameter SFT, s1's recipe with the tiny run's sizes
    banner "SFT on D_$1 ($2), ${SFT_EPOCHS} epochs"
    launch scripts/sft.py --config s1 --model_name "${MODEL_DIR}" --train_file_path "${DATA}/train.parquet" \
        --sample_types "$2" --output_dir "${OUT}/sft_$1" --num_train_epochs "${SFT_EPOCHS}" \
        --learning_rate "${SFT_LR}" --per_device_train_batch_size "${SFT_BATCH}" \
        --gradient_accumulation_steps 1 "${COMMON[@]}"
}
for set in f r m; do  # D_f, D_r, D_m (fwdrev/sets.py)
    sft "${set}" "$(set_sample_types "${set}")"
done

SFT_M_MODEL="${OUT}/sft_m/checkpoints/${SFT_EPOCHS}"
banner "LoRA-DPO on D_m from the D_m SFT model, ${DPO_STEPS} steps"
launch dpo/combined_dpo.py --config lora --model_name "${SFT_M_MODEL}" \
    --train_file_path "${DATA}/train.parquet" --output_dir "${OUT}/dpo_m" \
    --max_steps "${DPO_STEPS}" --save_steps "${DPO_SAVE_STEPS}" --learning_rate "${DPO_LR}" \
    --warmup_steps 0 --per_device_train_batch_size "${DPO_BATCH}" --gradient_accumulation_steps 1 \
    --eval_size 0 --probe_every "${DPO_SAVE_STEPS}" --probe_size 8 "${COMMON[@]}"

score() {  # score RUN_DIR OUTPUT_DIR: every checkpoint of a run (models on their recorded base)
    banner "log-probs of y+ and y- on T_f and T_r: $1"
    launch analysis/analyze_training_dynamics.py --checkpoint_dir "$1" \
        --dataset_path "${DATA}/test.parquet" --output_dir "$2" \
        --max_length "${MAX_LENGTH}" --max_prompt_length 128
}
score "${OUT}/sft_f" "${RESULTS}/f/sft"
score "${OUT}/sft_r" "${RESULTS}/r/sft"
score "${OUT}/sft_m" "${RESULTS}/m/sft"
score "${OUT}/dpo_m" "${RESULTS}/m/dpo"

probe_series() {  # probe_series RUN_DIR OUTPUT_DIR: probe responses and per-token log-probs (docs/probes.md)
    banner "where the mass goes: probe responses and token dynamics, $1"
    launch analysis/analyze_training_dynamics.py --checkpoint_dir "$1" --include_base \
        --dataset_path "${DATA}/test.parquet" --output_dir "$2" --max_length "${MAX_LENGTH}" \
        --max_prompt_length 128 --probes all --token_positions 1000 --probe_max_new_tokens "${MAX_NEW_TOKENS}"
}
probe_series "${OUT}/sft_m" "${OUT}/probes/m/sft"  # outside RESULTS: the summary table stays the study's
probe_series "${OUT}/dpo_m" "${OUT}/probes/m/dpo"

banner "benchmark accuracy: held-out T_f/T_r and a tiny MATH500-shaped fixture, hf backend"
# analysis/evaluate_benchmarks.py as for the paper's table (docs/benchmarks.md), on the tiny model:
# greedy, chat template, math-verify grading; accuracy near 0 is expected, the path is what is shown.
python analysis/evaluate_benchmarks.py --backend hf --benchmarks heldout,math500 \
    --data_files "heldout=${DATA}/test.parquet" "math500=tests/fixtures/benchmarks/math500.jsonl" \
    --model_path "base=${MODEL_DIR}" "sft_f=${OUT}/sft_f" "sft_r=${OUT}/sft_r" "sft_m=${OUT}/sft_m" \
        "dpo_m=${OUT}/dpo_m" \
    --paired sft_f,sft_r --max_tokens "${MAX_NEW_TOKENS}" --output_dir "${OUT}/benchmarks" > "${OUT}/benchmarks.log"
sed -n '/^accuracy in %/,$p' "${OUT}/benchmarks.log"  # the table; the rest is in the log

banner "figures"
python visualization/plot_with_wider_middle.py --results_dir "${RESULTS}" \
    --output_stem "${OUT}/figures/wider_middle"
python visualization/visualize_training_dynamics.py --results_dir "${RESULTS}" \
    --output_dir "${OUT}/figures/dynamics"
python visualization/visualize_training_dynamics.py --results_dir "${OUT}/dpo_m" \
    --output_dir "${OUT}/figures/probes"
python visualization/plot_probes.py --results_dir "${OUT}/probes" --output_dir "${OUT}/figures/mass" \
    | tee "${OUT}/figures/mass.txt"  # prints the figures and one sentence on what they show

banner "summary"
python analysis/summarize_results.py --results_dir "${RESULTS}"
echo
echo "benchmark accuracy in % [95% bootstrap CI] (n) (${OUT}/benchmarks/accuracy_table.md):"
cat "${OUT}/benchmarks/accuracy_table.md"
echo
echo "figures:"
find "${OUT}/figures" -name '*.png' | sort | sed 's/^/  /'
echo
echo "quickstart finished in $(( $(date +%s) - started )) s; outputs in ${OUT}"
