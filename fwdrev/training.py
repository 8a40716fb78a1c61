"""What the SFT and DPO scripts share: arguments, device setup, policy loading, logging, saving."""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import shutil
import sys
from pathlib import Path

import torch
from transformers import HfArgumentParser, TrainerCallback

from fwdrev.cli import note_process_group_left
from fwdrev.data import RowSelection, load_preference_data
from fwdrev.data_arguments import DataArguments
from fwdrev.deepspeed_ops import check_deepspeed_ops
from fwdrev.errors import UsageError
from fwdrev.io import atomic_path, write_json
from fwdrev.layout import DATA_REPORT, MERGED, METRICS, RUN_CONFIG
from fwdrev.model_arguments import ModelArguments, training_tokenizer_source
from fwdrev.modeling import (
    add_lora,
    default_dtype,
    load_adapter,
    load_causal_lm,
    load_tokenizer,
    make_lora_config,
    pick_attn_implementation,
    zero3_init_disabled,
)
from fwdrev.provenance import resolve_adapter_base, training_record
from fwdrev.recipes import (
    cpu_recipe,
    load_recipe,
    pop_config_flag,
    recipe_path,
    resolve_recipe_paths,
    settle_batch_flags,
)
from fwdrev.run_folder import check_output_dir, run_is_complete
from fwdrev.run_identity import (
    RunRecordCallback,
    adopt_unrecorded_checkpoints,
    check_resume_keeps_the_run,
    decide_run_id,
    resolve_resume_checkpoint,
    write_record,
)
from fwdrev.splits import row_groups, split_train_eval
from fwdrev.tokenization import encode_examples

logger = logging.getLogger(__name__)


def parse_arguments(dataclass_types, defaults: dict, argv=None, stage: str | None = None,
                    default_recipe: str | None = None, recipes_dir: str | Path | None = None):
    """Parse CLI flags into dataclasses: script defaults < recipe (``--config``) < command line.

    ``--config NAME_OR_PATH`` loads a YAML recipe (``<recipes_dir>/<stage>/<NAME>.yaml``, see
    ``fwdrev.recipes``; ``default_recipe`` without the flag); its path is kept in ``args.config``.
    On a machine without CUDA, training runs on CPU processes with the gloo backend, and the
    recipe's GPU settings that no flag overrides become their CPU equivalents
    (``fwdrev.recipes.cpu_recipe``, logged in one line). This has
    to be decided before the TrainingArguments exist: accelerate reads ``use_cpu`` to learn the
    world size, and the DeepSpeed ZeRO-3 config is registered when they are built, which must
    happen before the model is loaded.
    """
    config, argv = pop_config_flag(list(sys.argv[1:] if argv is None else argv))
    parser = HfArgumentParser(dataclass_types)
    checkout = Path(recipes_dir).parent if recipes_dir is not None else None
    recipe, recipe_file = {}, None
    if config or default_recipe:
        recipe_file = recipe_path(config or default_recipe, stage or "", recipes_dir)
        recipe = resolve_recipe_paths(load_recipe(recipe_file, {action.dest for action in parser._actions}),
                                      checkout)
    recipe = settle_batch_flags(recipe, recipe_file, argv)
    if not torch.cuda.is_available():
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        cpu_defaults = {"use_cpu": True}
        if world_size > 1:  # launched by torchrun
            cpu_defaults["ddp_backend"] = "gloo"
        defaults = {**cpu_defaults, **defaults}
        recipe, replaced = cpu_recipe(recipe, argv, world_size, checkout)
        if replaced and int(os.environ.get("RANK", "0")) == 0:  # one line per run, before logging is set up
            logger.warning(replaced)
    parser.set_defaults(**{**defaults, **recipe})
    parsed = parser.parse_args_into_dataclasses(args=argv)
    for group in parsed:
        check_deepspeed_ops(group)  # a DeepSpeed op that cannot load fails now, not after the model loads
        if hasattr(group, "config"):
            group.config = str(recipe_file) if recipe_file else None
    return parsed


def setup_logging(training_args) -> None:
    level = logging.INFO if training_args.process_index == 0 else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level,
                        stream=sys.stdout, force=True)


def check_attention_precision(model_args: ModelArguments, training_args) -> None:
    """flash-attn computes in bf16/fp16 only: a float32 run that would use it stops here (exit 2)."""
    if (model_args.use_flash_attention and not (training_args.bf16 or training_args.fp16)
            and pick_attn_implementation(True) == "flash_attention_2"):
        raise UsageError("--use_flash_attention: flash-attn runs in bf16/fp16 only and this run is "
                         "float32; add --bf16 (or --fp16), or drop --use_flash_attention")


def optimizer_owns_weights(training_args) -> bool:
    """True without DeepSpeed: AdamW then updates the trained weights themselves, which must be
    float32 (bf16 drops updates below ~1/256 of a weight). DeepSpeed keeps fp32 master copies."""
    return not training_args.deepspeed


def _load_base_model(model_args: ModelArguments, training_args):
    attn = pick_attn_implementation(model_args.use_flash_attention)
    dtype = default_dtype(training_args.bf16, training_args.fp16)
    full_finetuning = not (model_args.use_lora or model_args.init_adapter)
    if full_finetuning and optimizer_owns_weights(training_args):
        dtype = torch.float32  # --bf16/--fp16 still compute in half precision, under autocast
    return load_causal_lm(model_args.model_name, dtype, attn, model_args.trust_remote_code)


def load_policy(model_args: ModelArguments, training_args):
    """Load the model to train (after the TrainingArguments, see ``parse_arguments``).

    Trained weights are float32 unless DeepSpeed manages them (``optimizer_owns_weights``).
    """
    model = _load_base_model(model_args, training_args)
    fp32_adapter = optimizer_owns_weights(training_args)
    # --gradient_checkpointing is transformers 5's deprecated alias of --activation_checkpointing
    if training_args.activation_checkpointing:
        model.config.use_cache = False
        if training_args.activation_checkpointing_kwargs is None:
            training_args.activation_checkpointing_kwargs = {"use_reentrant": False}
        # reentrant checkpointing only propagates gradients if the checkpointed inputs require them
        model.enable_input_require_grads()
    if model_args.init_adapter:
        torch.manual_seed(training_args.seed)
        return load_adapter(model, model_args.init_adapter, is_trainable=True, fp32_adapter=fp32_adapter)
    if model_args.use_lora:
        config = make_lora_config(model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout,
                                  model_args.lora_target_modules)
        return add_lora(model, config, training_args.seed, fp32_adapter=fp32_adapter)
    return model


def load_reference_model(model_args: ModelArguments, training_args):
    """A frozen copy of the initial policy: the base model, with ``init_adapter`` applied if given.

    Only needed when the reference log-probs are computed during training and the reference is
    not the policy with its adapter switched off (full fine-tuning, or DPO from an SFT adapter).
    """
    model = _load_base_model(model_args, training_args)
    if model_args.init_adapter:  # in the policy's dtype: the reference is the policy as loaded
        model = load_adapter(model, model_args.init_adapter,
                             fp32_adapter=optimizer_owns_weights(training_args))
    return model.requires_grad_(False).eval()


def prepare_training_data(model_args: ModelArguments, data_args: DataArguments, training_args,
                          tokenizer, with_rejected: bool = True):
    """Load, validate, tokenize and split the training file.

    Returns (data, train items, eval items); evaluation is on when there are eval items (the
    caller switches ``eval_strategy`` off otherwise, before ``write_run_config_and_data_report``).
    ``with_rejected=False`` reads the prompt and the chosen response only (SFT).
    """
    rows = RowSelection.from_args(data_args, **({} if with_rejected else {"rejected_field": None}))
    data = load_preference_data(data_args.train_file_path, rows, tokenizer)
    items = encode_examples(tokenizer, data.examples, data_args.max_length,
                            data_args.max_prompt_length, data.report, include_rejected=with_rejected)
    train_items, eval_items = split_train_eval(
        items, data_args.eval_size, training_args.seed,
        row_groups(data.frame, [item.example_id for item in items]))
    logger.info("%s\n  train rows: %d, eval rows: %d", data.report.summary(), len(train_items),
                len(eval_items))
    return data, train_items, eval_items


def write_run_config_and_data_report(model_args: ModelArguments, data_args: DataArguments, training_args,
                                     data, train_items: list, eval_items: list) -> None:
    """OUTPUT_DIR/run_config.json (arguments + training record) and data_report.json, on rank 0.

    A resumed run must keep the data, start model and settings of the run it continues
    (``run_identity.check_resume_keeps_the_run``, every rank, before anything is written).
    """
    run_id = getattr(training_args, "run_id", None)  # set by start_run
    record = training_record(data, [p.example_id for p in train_items], [p.example_id for p in eval_items],
                             model_args.model_name, model_args.init_adapter, run_id=run_id,
                             stage=getattr(training_args, "run_stage", None))
    config = run_config(model_args, data_args, training_args, records=record)
    check_resume_keeps_the_run(training_args.output_dir, run_id, config)
    if training_args.process_index != 0:
        return
    write_json(Path(training_args.output_dir) / RUN_CONFIG, config)
    data.report.save_json(os.path.join(training_args.output_dir, DATA_REPORT))


def run_config(*argument_groups, records: dict | None = None) -> dict:
    """The resolved arguments, and ``records`` (``fwdrev.provenance.training_record``)."""
    config = {}
    for group in argument_groups:
        values = group.to_dict() if hasattr(group, "to_dict") else dataclasses.asdict(group)
        config[type(group).__name__] = values
    config.update(records or {})
    return config


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
        with atomic_path(Path(args.output_dir) / METRICS) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)


def finish_distributed(trainer, then=None) -> None:
    """End the run: leave the process group together, then call ``then()`` on rank 0.

    ``then`` (the merge) runs after the group is gone, so its minutes of loading and writing
    cannot hit a collective timeout on the other ranks. Under torchrun, ``fwdrev.cli.run_cli``
    ends the process once ``main`` returns (see ``exit_without_teardown`` for why).
    """
    is_rank_zero = trainer.args.process_index == 0
    distributed = torch.distributed.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        trainer.accelerator.wait_for_everyone()
        torch.distributed.destroy_process_group()
        note_process_group_left()
    if then is not None and is_rank_zero:
        then()


def save_final_model(trainer, tokenizer) -> None:
    """Save the adapter (or full model) and tokenizer (every rank: ZeRO-3 gathers collectively).

    The merged copy is made later, by ``merge_final_model`` after ``finish_distributed``.
    """
    output_dir = trainer.args.output_dir
    trainer.save_model(output_dir)
    if trainer.args.process_index == 0:
        tokenizer.save_pretrained(output_dir)


def merge_final_model(model_args: ModelArguments, output_dir: str, tokenizer) -> None:
    """With --merge_weights and an adapter: OUTPUT_DIR/merged = base + the saved adapter."""
    if model_args.merge_weights and (model_args.use_lora or model_args.init_adapter):
        merge_adapter_into_base(model_args, output_dir, os.path.join(output_dir, MERGED), tokenizer)


def merge_adapter_into_base(model_args: ModelArguments, adapter_dir: str, merged_dir: str, tokenizer,
                            dtype: torch.dtype = torch.float32) -> None:
    """Reload the base model on CPU, apply the adapter, merge, save; all in float32 by default.

    A DPO-sized change rounded into bf16 weights keeps ~11% of itself, so a bf16 merge would
    score like the starting model. The folder is written as a hidden sibling and renamed into
    place when complete: a killed merge never leaves a half-written ``merged_dir``.
    """
    with zero3_init_disabled():  # no collective partitioning at load: this is one process
        base = load_causal_lm(model_args.model_name, dtype, "sdpa", model_args.trust_remote_code)
    merged = load_adapter(base, adapter_dir).merge_and_unload()
    target = Path(merged_dir)
    partial, replaced = (target.with_name(f".{target.name}.{suffix}") for suffix in ("partial", "old"))
    for leftover in (partial, replaced):
        shutil.rmtree(leftover, ignore_errors=True)
    merged.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    write_record(adapter_dir, partial)  # a copied merged/ still says which run made it
    if target.exists():  # a merge from an earlier run of this folder
        os.replace(target, replaced)
    os.replace(partial, target)
    shutil.rmtree(replaced, ignore_errors=True)
    logger.info("merged model (%s) saved to %s", str(dtype).removeprefix("torch."), target)


def load_training_tokenizer(model_args: ModelArguments):
    """The tokenizer saved with ``init_adapter`` if any, else the base model's."""
    return load_tokenizer(training_tokenizer_source(model_args), model_args.trust_remote_code)


def start_run(dataclass_types, defaults: dict, argv, stage: str, default_recipe: str, recipes_dir: str | Path):
    """What every training script does first: parse (recipe + flags), log, check, decide the
    run's identity (``fwdrev.run_identity``: ``args.run_id``, ``args.run_stage``), load the
    tokenizer. Returns (model_args, data_args, training_args, tokenizer)."""

    model_args, data_args, args = parse_arguments(dataclass_types, defaults, argv, stage=stage,
                                                  default_recipe=default_recipe, recipes_dir=recipes_dir)
    setup_logging(args)
    check_attention_precision(model_args, args)
    if model_args.overwrite_output_dir and args.resume_from_checkpoint:
        if args.resume_from_checkpoint != "latest":
            raise UsageError(f"--overwrite_output_dir starts a new run; --resume_from_checkpoint "
                             f"{args.resume_from_checkpoint} continues one: give one of them")
        logger.info("--overwrite_output_dir: a new run from scratch (--resume_from_checkpoint latest ignored)")
        args.resume_from_checkpoint = None
    check_output_dir(args.output_dir, args.resume_from_checkpoint, model_args.overwrite_output_dir)
    if model_args.init_adapter:  # continued on the model (content) it was trained on, or exit 2
        resolve_adapter_base(model_args.init_adapter, model_args.model_name, model_args.force_base_model,
                             "--model_name")
    args.run_id = decide_run_id(args, model_args.overwrite_output_dir)
    args.run_stage = stage
    # a checkpoint of another run stops here, before this run writes its record
    resolve_resume_checkpoint(args.resume_from_checkpoint, args.output_dir, args.run_id)
    return model_args, data_args, args, load_training_tokenizer(model_args)


def prepare_run_data(model_args, data_args, args, tokenizer, with_rejected: bool = True):
    """Load, tokenize and split the data, switch evaluation off when nothing is held out, and
    write run_config.json and data_report.json. Returns (data, train items, eval items)."""
    data, train_items, eval_items = prepare_training_data(model_args, data_args, args, tokenizer,
                                                          with_rejected=with_rejected)
    if not eval_items:
        args.eval_strategy = "no"  # nothing held out
    write_run_config_and_data_report(model_args, data_args, args, data, train_items, eval_items)
    return data, train_items, eval_items


def train_and_save(trainer, model_args, tokenizer) -> None:
    """Train (resuming if asked; a finished run trains nothing), save, leave the process group,
    and merge the adapter on rank 0 once the group is gone."""

    args = trainer.args
    resume_from = resolve_resume_checkpoint(args.resume_from_checkpoint, args.output_dir,
                                            getattr(args, "run_id", None))
    if run_is_complete(trainer, resume_from):
        finish_distributed(trainer)
        return
    if resume_from:
        logger.info("resuming from %s", resume_from)
        if args.process_index == 0:
            adopt_unrecorded_checkpoints(args.output_dir)
    trainer.add_callback(RunRecordCallback())  # every checkpoint-<step>/ says which run wrote it
    trainer.train(resume_from_checkpoint=resume_from)
    save_final_model(trainer, tokenizer)
    logger.info("done: %s", args.output_dir)
    finish_distributed(trainer, then=lambda: merge_final_model(model_args, args.output_dir, tokenizer))
