"""LoRA-DPO: y+ (the trace whose direction matches the question) vs. y- (the opposite direction).

The hyper-parameters come from a recipe, recipes/dpo/lora.yaml unless --config names another
(--config original: the original run's full fine-tuning); flags given here override it.

Multi-GPU (DeepSpeed ZeRO-3):
    torchrun --nproc_per_node=4 dpo/combined_dpo.py --config lora \
        --model_name ./outputs/sft_m --train_file_path ./data/split/train.parquet \
        --output_dir ./outputs/dpo_m
(the recipe names the DeepSpeed config, bf16, flash attention and gradient checkpointing)

CPU smoke run (tiny model, 2 processes, gloo; the recipe's GPU settings become fp32 and
configs/ds_config_zero3_cpu.json, logged in one line):
    torchrun --nproc_per_node=2 dpo/combined_dpo.py --model_name ./models/tiny-qwen \
        --train_file_path data-100samples.parquet --output_dir ./outputs/dpo-tiny \
        --max_steps 5 --max_length 512

Every flag: ``python dpo/combined_dpo.py --help``. Outputs in OUTPUT_DIR: the LoRA adapter and
tokenizer, checkpoint-<step>/ folders, metrics.csv, TensorBoard logs (runs/), run_config.json,
data_report.json, reference_logps.parquet, and merged/ with --merge_weights.
"""

from pathlib import Path

from fwdrev.checkpoint_pruning import OptimizerStatePruning
from fwdrev.cli import run_cli
from fwdrev.data_arguments import DataArguments
from fwdrev.dpo_trainer import DPOArguments, DPOTrainer, PairCollator
from fwdrev.model_arguments import ModelArguments
from fwdrev.reference import ReferenceMode, reference_cache_key
from fwdrev.tokenization import PairDataset
from fwdrev.training import (
    MetricsCSVCallback,
    load_policy,
    load_reference_model,
    prepare_run_data,
    start_run,
    train_and_save,
)

# Everything about a run (hyper-parameters, DeepSpeed config, precision, logging) is in the
# recipe, recipes/dpo/<DEFAULT_RECIPE>.yaml unless --config names another; flags override it.
DEFAULT_RECIPE = "lora"
RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"  # this checkout's recipes/


def main(argv=None):
    model_args, data_args, args, tokenizer = start_run(
        (ModelArguments, DataArguments, DPOArguments), {}, argv, "dpo", DEFAULT_RECIPE,
        RECIPES_DIR)
    data, train_pairs, eval_pairs = prepare_run_data(model_args, data_args, args, tokenizer)

    model = load_policy(model_args, args)
    reference_mode = ReferenceMode.choose(model_args, args)
    ref_model = load_reference_model(model_args, args) if reference_mode.needs_ref_model else None
    reference_key = None  # only precomputed reference log-probs are cached
    if args.precompute_ref_log_probs:
        reference_key = reference_cache_key(reference_mode, model_args, data_args, args,
                                            [p.example_id for p in train_pairs + eval_pairs])
    callbacks = [MetricsCSVCallback(), OptimizerStatePruning()]  # optimizer state: newest checkpoint only
    if data_args.probe_every > 0:
        from fwdrev.probes import build_probe_callback
        from fwdrev.scoring import sample_types_by_id

        callbacks.append(build_probe_callback(data_args, tokenizer, train_pairs, eval_pairs,
                                              args.output_dir, sample_types=sample_types_by_id(data),
                                              chunk_size=args.logprob_chunk_size))
    trainer = DPOTrainer(
        model=model, args=args, train_dataset=PairDataset(train_pairs),
        eval_dataset=PairDataset(eval_pairs) if eval_pairs else None,
        data_collator=PairCollator(tokenizer.pad_token_id), processing_class=tokenizer,
        callbacks=callbacks, reference_mode=reference_mode, reference_key=reference_key,
        ref_model=ref_model)
    train_and_save(trainer, model_args, tokenizer)


if __name__ == "__main__":
    run_cli(main)
