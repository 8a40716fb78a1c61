"""What the SFT and DPO scripts share: arguments, device setup, policy loading, logging, saving."""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from fwdrev.checkpoint_pruning import check_resumable
from fwdrev.data import load_preference_data
from fwdrev.deepspeed_ops import check_deepspeed_ops
from fwdrev.io import atomic_path, write_json
from fwdrev.modeling import (DEFAULT_LORA_TARGETS, zero3_init_disabled, add_lora, default_dtype, load_adapter,
                             load_causal_lm, load_tokenizer, make_lora_config,
                             pick_attn_implementation)
from fwdrev.tokenization import check_lengths, encode_examples

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name: str = field(metadata={"help": "Base model: a local folder or hub name."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run model code from the model folder."})
    use_flash_attention: bool = field(
        default=False, metadata={"help": "flash_attention_2 if flash-attn and CUDA are present, else SDPA."})
    use_lora: bool = field(default=True, metadata={"help": "Train a LoRA adapter (--no_use_lora: full fine-tuning)."})
    lora_r: int = field(default=256, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=512, metadata={"help": "LoRA alpha (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(
        default=DEFAULT_LORA_TARGETS, metadata={"help": "Comma-separated module names, or 'all-linear'."})
    init_adapter: str | None = field(
        default=None, metadata={"help": "Continue training this saved LoRA adapter (e.g. an SFT checkpoint)."})
    merge_weights: bool = field(
        default=False, metadata={"help": "After training, also save base + adapter merged in OUTPUT_DIR/merged."})


@dataclass
class DataArguments:
    train_file_path: str = field(metadata={"help": "Parquet or JSONL training file."})
    prompt_field: str = field(default="question", metadata={"help": "Prompt column (plain data only)."})
    chosen_field: str = field(default="text", metadata={"help": "Preferred response column (y+)."})
    rejected_field: str = field(default="worse-text", metadata={"help": "Rejected response column (y-)."})
    sample_types: str | None = field(
        default=None, metadata={"help": "Keep these sample_type values, e.g. 'original', 'flipped' or "
                                        "'original,flipped' (default: all rows)."})
    drop_invalid_rows: bool = field(
        default=False, metadata={"help": "Exclude invalid rows (reported) instead of failing."})
    max_length: int = field(default=20000, metadata={"help": "Max tokens of prompt + response."})
    max_prompt_length: int = field(default=2048, metadata={"help": "Max prompt tokens (the end is kept)."})
    eval_size: float = field(
        default=0.05, metadata={"help": "Held-out eval rows: a fraction (< 1) or a count (>= 1); 0 = none."})
    probe_file: str | None = field(
        default=None, metadata={"help": "Probe set for in-training log-prob probes (default: train/eval rows)."})
    probe_every: int = field(default=0, metadata={"help": "Probe every N optimizer steps (0 = off)."})
    probe_size: int = field(default=8, metadata={"help": "Probe rows taken from each of train and eval."})

    def __post_init__(self):
        check_lengths(self.max_length, self.max_prompt_length)  # fail before any model is loaded


def parse_arguments(dataclass_types, defaults: dict, argv=None):
    """Parse CLI flags into dataclasses, with script defaults and CPU-friendly device settings.

    On a machine without CUDA, training runs on CPU processes with the gloo backend. This has
    to be decided before the TrainingArguments exist: accelerate reads ``use_cpu`` to learn the
    world size, and the DeepSpeed ZeRO-3 config is registered when they are built, which must
    happen before the model is loaded.
    """
    parser = HfArgumentParser(dataclass_types)
    if not torch.cuda.is_available():
        cpu_defaults = {"use_cpu": True}
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by torchrun
            cpu_defaults["ddp_backend"] = "gloo"
        defaults = {**cpu_defaults, **defaults}
    parser.set_defaults(**defaults)
    parsed = parser.parse_args_into_dataclasses(args=argv)
    for group in parsed:  # a DeepSpeed op that cannot load fails now, not after the model loads
        check_deepspeed_ops(group)
    return parsed


def setup_logging(training_args) -> None:
    level = logging.INFO if training_args.process_index == 0 else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level,
                        stream=sys.stdout, force=True)


def _load_base_model(model_args: ModelArguments, training_args):
    attn = pick_attn_implementation(model_args.use_flash_attention)
    dtype = default_dtype(training_args.bf16, training_args.fp16)
    return load_causal_lm(model_args.model_name, dtype, attn, model_args.trust_remote_code)


def load_policy(model_args: ModelArguments, training_args):
    """Load the model to train (after the TrainingArguments, see ``parse_arguments``)."""
    model = _load_base_model(model_args, training_args)
    # --gradient_checkpointing is transformers 5's deprecated alias of --activation_checkpointing
    if training_args.activation_checkpointing:
        model.config.use_cache = False
        if training_args.activation_checkpointing_kwargs is None:
            training_args.activation_checkpointing_kwargs = {"use_reentrant": False}
        # reentrant checkpointing only propagates gradients if the checkpointed inputs require them
        model.enable_input_require_grads()
    if model_args.init_adapter:
        torch.manual_seed(training_args.seed)
        return load_adapter(model, model_args.init_adapter, is_trainable=True)
    if model_args.use_lora:
        config = make_lora_config(model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout,
                                  model_args.lora_target_modules)
        return add_lora(model, config, training_args.seed)
    return model


def load_reference_model(model_args: ModelArguments, training_args):
    """A frozen copy of the initial policy: the base model, with ``init_adapter`` applied if given.

    Only needed when the reference log-probs are computed during training and the reference is
    not the policy with its adapter switched off (full fine-tuning, or DPO from an SFT adapter).
    """
    model = _load_base_model(model_args, training_args)
    if model_args.init_adapter:
        model = load_adapter(model, model_args.init_adapter)
    return model.requires_grad_(False).eval()


def split_train_eval(items: list, eval_size: float, seed: int) -> tuple[list, list]:
    """Seeded random hold-out of ``eval_size`` items (fraction < 1 or count >= 1)."""
    count = int(round(eval_size * len(items))) if eval_size < 1 else int(eval_size)
    count = min(count, len(items) - 1)
    if count <= 0:
        return list(items), []
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    held_out = set(order[:count])
    train = [item for i, item in enumerate(items) if i not in held_out]
    return train, [item for i, item in enumerate(items) if i in held_out]


def prepare_training_data(model_args: ModelArguments, data_args: DataArguments, training_args,
                          tokenizer, with_rejected: bool = True):
    """Load, validate, tokenize and split the training file; save the run config and data report.

    Returns (data, train items, eval items); without eval items evaluation is switched off.
    ``with_rejected=False`` reads the prompt and the chosen response only (SFT).
    """
    data = load_preference_data(
        data_args.train_file_path, data_args.prompt_field, data_args.chosen_field,
        data_args.rejected_field if with_rejected else None, data_args.sample_types,
        data_args.drop_invalid_rows, tokenizer)
    items = encode_examples(tokenizer, data.examples, data_args.max_length,
                            data_args.max_prompt_length, data.report, include_rejected=with_rejected)
    train_items, eval_items = split_train_eval(items, data_args.eval_size, training_args.seed)
    logger.info("%s\n  train rows: %d, eval rows: %d", data.report.summary(), len(train_items),
                len(eval_items))
    if not eval_items:
        training_args.eval_strategy = "no"
    if training_args.process_index == 0:
        os.makedirs(training_args.output_dir, exist_ok=True)
        save_run_config(training_args.output_dir, model_args, data_args, training_args)
        data.report.save_json(os.path.join(training_args.output_dir, "data_report.json"))
    return data, train_items, eval_items


def resolve_resume_checkpoint(value: str | None, output_dir: str) -> str | None:
    """'latest' -> the newest checkpoint-* in output_dir (None if there is none yet)."""
    if not value:
        return None
    if value == "latest":
        return check_resumable(get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None)
    if not os.path.isdir(value):
        raise FileNotFoundError(f"--resume_from_checkpoint: no such folder {value}")
    return check_resumable(value)  # not one whose optimizer state was pruned


def save_run_config(output_dir: str, *argument_groups) -> None:
    config = {}
    for group in argument_groups:
        values = group.to_dict() if hasattr(group, "to_dict") else dataclasses.asdict(group)
        config[type(group).__name__] = values
    write_json(Path(output_dir) / "run_config.json", config)


class MetricsCSVCallback(TrainerCallback):
    """Mirror the Trainer's log history into OUTPUT_DIR/metrics.csv (rank 0, atomic rewrite).

    Rebuilding from ``state.log_history`` keeps the file consistent after a resume, because the
    history is restored from the checkpoint.
    """

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero:
            return
        rows = [entry for entry in state.log_history if "step" in entry]
        columns = ["step"] + sorted({key for row in rows for key in row} - {"step"})
        with atomic_path(Path(args.output_dir) / "metrics.csv") as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)


def finish_distributed(trainer) -> None:
    """End a torchrun process once every rank is done: leave the process group together, exit.

    The exit skips interpreter teardown on purpose. Process groups that DeepSpeed still holds
    are otherwise destroyed during finalization, and gloo's worker threads then abort a rank
    ("terminate called without an active exception", SIGABRT) after a successful run. Every
    output is written and closed by now.
    """
    if not (torch.distributed.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1):
        return
    trainer.accelerator.wait_for_everyone()
    torch.distributed.destroy_process_group()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def save_final_model(trainer, model_args: ModelArguments, tokenizer) -> None:
    """Save the adapter (or full model) and tokenizer; optionally a merged copy in OUTPUT_DIR/merged."""
    output_dir = trainer.args.output_dir
    trainer.save_model(output_dir)
    if trainer.args.process_index == 0:
        tokenizer.save_pretrained(output_dir)
    if model_args.merge_weights and (model_args.use_lora or model_args.init_adapter):
        if trainer.args.process_index == 0:
            dtype = default_dtype(trainer.args.bf16, trainer.args.fp16)
            merge_adapter_into_base(model_args, output_dir, os.path.join(output_dir, "merged"),
                                    tokenizer, dtype)
        trainer.accelerator.wait_for_everyone()


def merge_adapter_into_base(model_args: ModelArguments, adapter_dir: str, merged_dir: str, tokenizer,
                            dtype: torch.dtype = torch.float32) -> None:
    """Reload the base model on CPU (no ZeRO-3 shards to gather), apply the adapter, merge, save."""
    with zero3_init_disabled():  # this runs on rank 0 alone: no collective partitioning at load
        base = load_causal_lm(model_args.model_name, dtype, "sdpa", model_args.trust_remote_code)
    merged = load_adapter(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(merged_dir)
    tokenizer.save_pretrained(merged_dir)
    logger.info("merged model saved to %s", merged_dir)


def load_training_tokenizer(model_args: ModelArguments):
    """The tokenizer saved with ``init_adapter`` if any, else the base model's."""
    source = model_args.model_name
    if model_args.init_adapter and Path(model_args.init_adapter, "tokenizer_config.json").is_file():
        source = model_args.init_adapter
    return load_tokenizer(source, model_args.trust_remote_code)
