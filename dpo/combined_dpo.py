"""LoRA-DPO on forward (y+) vs. reverse (y-) reasoning traces.

Multi-GPU (DeepSpeed ZeRO-3, CPU offload):
    torchrun --nproc_per_node=4 dpo/combined_dpo.py \
        --model_name ./models/your_base_model --train_file_path ./data/your_dataset.parquet \
        --output_dir ./outputs/dpo --deepspeed configs/ds_config_zero3_10k.json \
        --bf16 --use_flash_attention --gradient_checkpointing \
        --max_steps 50 --learning_rate 5e-7 --max_length 20000

CPU smoke run (tiny model, 2 processes, gloo):
    torchrun --nproc_per_node=2 dpo/combined_dpo.py --model_name ./models/tiny-qwen \
        --train_file_path data-100samples.parquet --output_dir ./outputs/dpo-tiny \
        --deepspeed configs/ds_config_zero3_cpu.json --max_steps 5 --max_length 512

Every flag: ``python dpo/combined_dpo.py --help``. Outputs in OUTPUT_DIR: the LoRA adapter and
tokenizer, checkpoint-<step>/ folders, metrics.csv, TensorBoard logs (runs/), run_config.json,
data_report.json, reference_logps.parquet, and merged/ with --merge_weights.
"""

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fwdrev.checkpoint_pruning import OptimizerStatePruning  # noqa: E402
from fwdrev.cli import run_cli  # noqa: E402
from fwdrev.dpo_trainer import DPOArguments, DPOTrainer, PairCollator, PairDataset  # noqa: E402
from fwdrev.training import (DataArguments, MetricsCSVCallback, ModelArguments,  # noqa: E402
                             finish_distributed,
                             load_policy, load_reference_model, load_training_tokenizer, parse_arguments,
                             prepare_training_data, resolve_resume_checkpoint,
                             save_final_model, setup_logging)

logger = logging.getLogger("combined_dpo")

# The original run's recipe; every value can be overridden on the command line.
DPO_DEFAULTS = dict(
    learning_rate=5e-7,
    lr_scheduler_type="cosine",
    warmup_steps=20,
    weight_decay=0.0,
    per_device_train_batch_size=1,
    per_device_eval_batch_size=1,
    gradient_accumulation_steps=4,
    num_train_epochs=1,
    logging_steps=1,
    eval_strategy="steps",
    eval_steps=50,
    save_steps=50,
    report_to=["tensorboard"],
    remove_unused_columns=False,
    save_only_model=False,
)


def main(argv=None):
    model_args, data_args, args = parse_arguments(
        (ModelArguments, DataArguments, DPOArguments), DPO_DEFAULTS, argv)
    setup_logging(args)
    tokenizer = load_training_tokenizer(model_args)
    data, train_pairs, eval_pairs = prepare_training_data(model_args, data_args, args, tokenizer)
    num_pairs = len(train_pairs) + len(eval_pairs)

    model = load_policy(model_args, args)
    # The reference is the initial policy: a fresh adapter switched off; otherwise (full
    # fine-tuning, or continuing an SFT adapter) the policy before its first update, scored
    # up front, or a frozen copy when nothing is precomputed.
    adapter_off = model_args.use_lora and not model_args.init_adapter
    ref_model = None
    if not (adapter_off or args.precompute_ref_log_probs):
        ref_model = load_reference_model(model_args, args)
    reference_key = {  # what the cached reference log-probs depend on
        "reference": "adapter_off" if adapter_off else "initial_policy",
        "model_name": model_args.model_name, "init_adapter": model_args.init_adapter,
        "train_file_path": os.path.abspath(data_args.train_file_path),
        "sample_types": data_args.sample_types, "max_length": data_args.max_length,
        "max_prompt_length": data_args.max_prompt_length, "num_pairs": num_pairs,
    }
    callbacks = [MetricsCSVCallback(), OptimizerStatePruning()]  # optimizer state: newest checkpoint only
    if data_args.probe_every > 0:
        from fwdrev.probes import build_probe_callback

        sample_types = {e.example_id: e.sample_type for e in data.examples}
        callbacks.append(build_probe_callback(data_args, tokenizer, train_pairs, eval_pairs,
                                              args.output_dir, sample_types=sample_types,
                                              chunk_size=args.logprob_chunk_size))
    trainer = DPOTrainer(
        model=model, args=args, train_dataset=PairDataset(train_pairs),
        eval_dataset=PairDataset(eval_pairs) if eval_pairs else None,
        data_collator=PairCollator(tokenizer.pad_token_id), processing_class=tokenizer,
        callbacks=callbacks, reference_key=reference_key, reference_disables_adapter=adapter_off,
        ref_model=ref_model)
    trainer.train(resume_from_checkpoint=resolve_resume_checkpoint(args.resume_from_checkpoint,
                                                                   args.output_dir))
    save_final_model(trainer, model_args, tokenizer)
    logger.info("done: %s", args.output_dir)
    finish_distributed(trainer)  # under torchrun this ends the process


if __name__ == "__main__":
    run_cli(main)
