"""SFT on the preferred responses (y+ = `text`) of a preference file, loss on the assistant part only.

The hyper-parameters come from a recipe, recipes/sft/s1.yaml (s1's full fine-tuning) unless
--config names another (--config lora); flags given here override it.

Multi-GPU (DeepSpeed ZeRO-3), e.g. the forward set D_f (`--sample_types flipped` = D_r,
`original,flipped` = D_m):
    torchrun --nproc_per_node=4 scripts/sft.py --config s1 \
        --model_name ./models/your_base_model --train_file_path ./data/split/train.parquet \
        --output_dir ./outputs/sft_f --sample_types original
(the recipe names the DeepSpeed config, bf16, flash attention and gradient checkpointing)

CPU smoke run (tiny model, 2 processes, gloo; the recipe's GPU settings become fp32 and
configs/ds_config_zero3_cpu.json, logged in one line):
    torchrun --nproc_per_node=2 scripts/sft.py --model_name ./models/tiny-qwen \
        --train_file_path data-100samples.parquet --output_dir ./outputs/sft-tiny \
        --num_train_epochs 2 --max_length 512

Accepts a preference file or any Parquet/JSONL with a chat-formatted `text` column (or a
question column + a plain response column, rendered with the chat template). Every flag:
``python scripts/sft.py --help``. Outputs in OUTPUT_DIR: checkpoints/<epoch>/ after every epoch
(LoRA adapter or full model + tokenizer), the final model and tokenizer, checkpoint-<step>/ for
--resume_from_checkpoint latest, metrics.csv, TensorBoard logs (runs/), run_config.json,
data_report.json, and merged/ with --merge_weights.
"""

from pathlib import Path

from fwdrev.cli import run_cli
from fwdrev.model_arguments import ModelArguments
from fwdrev.sft import EpochCheckpointCallback, SFTArguments, SFTCollator, SFTDataArguments, SFTTrainer
from fwdrev.tokenization import PairDataset
from fwdrev.training import (
    MetricsCSVCallback,
    load_policy,
    prepare_run_data,
    start_run,
    train_and_save,
)

# Everything about a run (hyper-parameters, DeepSpeed config, precision, logging) is in the
# recipe, recipes/sft/<DEFAULT_RECIPE>.yaml unless --config names another; flags override it.
DEFAULT_RECIPE = "s1"
RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"  # this checkout's recipes/


def main(argv=None):
    model_args, data_args, args, tokenizer = start_run(
        (ModelArguments, SFTDataArguments, SFTArguments), {}, argv, "sft", DEFAULT_RECIPE,
        RECIPES_DIR)
    data, train_rows, eval_rows = prepare_run_data(model_args, data_args, args, tokenizer, with_rejected=False)

    callbacks = [MetricsCSVCallback()]
    if data_args.probe_every > 0:
        from fwdrev.probes import build_probe_callback, preference_pairs_of_rows

        # SFT rows carry y+ only; without --probe_file the probes are the same rows with y-
        probe_train, probe_eval = ([], []) if data_args.probe_file else \
            preference_pairs_of_rows(data_args, tokenizer, train_rows, eval_rows)
        callbacks.append(build_probe_callback(data_args, tokenizer, probe_train, probe_eval,
                                              args.output_dir,
                                              chunk_size=args.logprob_chunk_size))
    model = load_policy(model_args, args)  # after the data and probes: bad input fails fast
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=PairDataset(train_rows),
        eval_dataset=PairDataset(eval_rows) if eval_rows else None,
        data_collator=SFTCollator(tokenizer.pad_token_id), processing_class=tokenizer,
        callbacks=callbacks)
    if args.save_every_epoch:
        trainer.add_callback(EpochCheckpointCallback(trainer))
    train_and_save(trainer, model_args, tokenizer)


if __name__ == "__main__":
    run_cli(main)
