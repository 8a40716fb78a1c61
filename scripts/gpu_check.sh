#!/usr/bin/env bash
# One-command proof that a GPU machine (N >= 1 GPUs) runs the study's heavy path, with numbers:
#   (a) 2-step LoRA-DPO under ZeRO-3 (configs/ds_config_zero3.json), bf16, flash attention (SDPA
#       with a warning when flash-attn is missing), gradient checkpointing, LoRA r=256, on a
#       Qwen2.5-7B-shaped model built from its config (random weights, nothing downloaded), with
#       synthetic rows of exactly 8,192 and 20,000 tokens per sequence;
#   (b) the analysis (analysis/analyze_dpo_model.py) of each run's checkpoint-2 (on its own
#       training rows, so --allow_train_overlap: this checks the path, not held-out numbers);
#   (c) a table: peak memory per GPU, tokens/s, MFU (formula printed; GPU_PEAK_TFLOPS, default
#       989 = H100/H200 dense bf16);
#   (d) scoring speed: the analysis against the original's full logits + per-token log_softmax
#       loop (scripts/benchmark_scoring.py) on 2 rows of the first length, on one GPU;
#   (e) generation speed of the benchmark evaluation's vllm backend on one GPU: tokens/s for
#       GENERATION_REQUESTS (64) greedy requests of GENERATION_TOKENS (2048) new tokens each
#       (needs .venv-eval: bash scripts/setup_env.sh eval; skipped with a note without it).
# Exit status non-zero on any failure.
#
#   bash scripts/gpu_check.sh            # GPUs: 7B shape, 8k and 20k tokens (disk: ~16 GB model)
#   bash scripts/gpu_check.sh --tiny     # CPU/CI: the tiny model, 192 tokens, 1 process
# Variables: GPU_CHECK_DIR (default ./outputs/gpu_check), SEQ_LENGTHS, GPU_PEAK_TFLOPS, NUM_PROCS.
SHAPE=7b
if [[ "${1:-}" == "--tiny" ]]; then
    SHAPE=tiny
    NUM_PROCS="${NUM_PROCS:-1}"  # CPU: one process keeps the check short
elif [[ $# -gt 0 ]]; then
    echo "usage: bash scripts/gpu_check.sh [--tiny]" >&2
    exit 2
fi

source "$(dirname "${BASH_SOURCE[0]}")/launch_common.sh"
cd "${REPO_ROOT}"

if [[ "${SHAPE}" == tiny ]]; then
    SEQ_LENGTHS="${SEQ_LENGTHS:-192}"
    PROMPT_LENGTH=32
    LORA=(--lora_r 8 --lora_alpha 16)
else
    # 8,192 and the study's --max_length (fwdrev.data_arguments.DEFAULT_MAX_LENGTH, 20,000)
    SEQ_LENGTHS="${SEQ_LENGTHS:-8192 $(python -c 'from fwdrev.data_arguments import DEFAULT_MAX_LENGTH as n; print(n)')}"
    PROMPT_LENGTH=256
    LORA=(--lora_r 256 --lora_alpha 512)
fi
CHECK_DIR="${GPU_CHECK_DIR:-${REPO_ROOT}/outputs/gpu_check}"
CHECK_DIR="${CHECK_DIR%/}/${SHAPE}"
GPU_PEAK_TFLOPS="${GPU_PEAK_TFLOPS:-989}"
# GPUs: bf16 + flash attention + checkpointing (as the recipes); CPU: fp32, same flags.
if [[ -z "${PRECISION_ARGS:-}" ]]; then
    PRECISION_ARGS="--use_flash_attention --gradient_checkpointing"
    [[ "${GPU_COUNT}" -gt 0 ]] && PRECISION_ARGS="--bf16 ${PRECISION_ARGS}"
fi
# LoRA: no offload needed; no GPU: the CPU ZeRO-3 config, even for one process
if [[ "${GPU_COUNT}" -gt 0 ]]; then
    DS_CONFIG="${DS_CONFIG-configs/ds_config_zero3.json}"
else
    DS_CONFIG="${DS_CONFIG-configs/ds_config_zero3_cpu.json}"
fi
device_overrides
MODEL_DIR="${CHECK_DIR}/model"
mkdir -p "${CHECK_DIR}"

sampler_pid=""
stop_sampler() {
    if [[ -n "${sampler_pid}" ]]; then
        kill "${sampler_pid}" 2>/dev/null || true
        wait "${sampler_pid}" 2>/dev/null || true
        sampler_pid=""
    fi
}
trap stop_sampler EXIT

world_size=$((NUM_PROCS * NUM_NODES))
echo "=== the ${SHAPE} model (random weights, built once: ${MODEL_DIR}) and synthetic rows"
# shellcheck disable=SC2086  # SEQ_LENGTHS is a list
run_logged "${CHECK_DIR}/prepare.log" python -m fwdrev.devtools.gpu_check prepare --shape "${SHAPE}" \
    --check_dir "${CHECK_DIR}" --lengths ${SEQ_LENGTHS} --world_size "${world_size}" \
    --sample_texts r1k.parquet --gpus "$([[ ${GPU_COUNT} -gt 0 ]] && echo "${world_size}" || echo 0)"

check_dirs=()
for seq_len in ${SEQ_LENGTHS}; do
    run_dir="${CHECK_DIR}/len${seq_len}"
    rm -rf "${run_dir}/dpo" "${run_dir}/analysis" "${run_dir}/memory.json"
    echo "=== (a) LoRA-DPO, 2 steps, ${seq_len} tokens per sequence, ${world_size} rank(s) (log: ${run_dir}/dpo.log)"
    python -m fwdrev.devtools.gpu_check sample-memory --output "${run_dir}/memory.json" --pid $$ &
    sampler_pid=$!
    run_logged "${run_dir}/dpo.log" launch dpo/combined_dpo.py --model_name "${MODEL_DIR}" \
        --train_file_path "${run_dir}/data.parquet" --output_dir "${run_dir}/dpo" \
        ${DEVICE_ARGS[@]+"${DEVICE_ARGS[@]}"} "${LORA[@]}" \
        --max_steps 2 --save_steps 2 --per_device_train_batch_size 1 --gradient_accumulation_steps 1 \
        --per_device_eval_batch_size 1 --eval_size 0 --learning_rate 1e-5 --warmup_steps 0 \
        --max_length "${seq_len}" --max_prompt_length "${PROMPT_LENGTH}" --logging_steps 1 \
        --report_to tensorboard
    stop_sampler

    echo "=== (b) analysis of ${run_dir}/dpo/checkpoint-2 (log: ${run_dir}/analysis.log)"
    run_logged "${run_dir}/analysis.log" launch analysis/analyze_dpo_model.py \
        --model_path "${run_dir}/dpo/checkpoint-2" --base_model "${MODEL_DIR}" \
        --dataset_path "${run_dir}/data.parquet" --output_dir "${run_dir}/analysis" \
        --max_length "${seq_len}" --max_prompt_length "${PROMPT_LENGTH}" --max_tokens "${seq_len}" \
        --allow_train_overlap --batch_size 1 $([[ "${GPU_COUNT}" -gt 0 ]] && echo --use_flash_attention)
    check_dirs+=("${run_dir}")
done

first_run="${check_dirs[0]}"
echo "=== (d) scoring: analysis/analyze_dpo_model.py vs. the original's full logits + per-token loop (log: ${CHECK_DIR}/scoring.log)"
run_logged "${CHECK_DIR}/scoring.log" python scripts/benchmark_scoring.py --model_path "${MODEL_DIR}" \
    --dataset_path "${first_run}/data.parquet" --rows 2 --repeats 1 --methods original,analysis \
    --analysis_args "$([[ "${GPU_COUNT}" -gt 0 ]] && echo --use_flash_attention)"  # both: default lengths, same tokens
tail -n 4 "${CHECK_DIR}/scoring.log"

echo "=== (e) generation: vLLM tokens/s on the ${SHAPE} model, one GPU (scripts/benchmark_generation.py)"
if [[ "${GPU_COUNT}" -eq 0 ]]; then
    echo "    skipped: no GPU"
elif [[ ! -x "${REPO_ROOT}/.venv-eval/bin/python" ]]; then
    echo "    skipped: no vLLM environment; create it with: bash scripts/setup_env.sh eval"
else
    run_logged "${CHECK_DIR}/generation.log" env CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}" \
        "${REPO_ROOT}/.venv-eval/bin/python" scripts/benchmark_generation.py --backend vllm \
        --model_path "${MODEL_DIR}" --batch_size "${GENERATION_REQUESTS:-64}" \
        --new_tokens "${GENERATION_TOKENS:-2048}" --output "${CHECK_DIR}/generation.json"
    cat "${CHECK_DIR}/generation.json"
fi

echo "=== (c) results"
python -m fwdrev.devtools.gpu_check report "${check_dirs[@]}" --peak_tflops "${GPU_PEAK_TFLOPS}"
