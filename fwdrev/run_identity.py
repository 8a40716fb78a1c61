"""Every training run has an identity (``run_id``), and every model folder it writes carries it.

* A fresh run gets a random ``run_id`` (uuid4); a resumed run keeps the one in OUTPUT_DIR's
  run_config.json. Rank 0 decides and every rank gets its answer (``decide_run_id``).
* ``--overwrite_output_dir`` removes what the previous run wrote (``fwdrev.layout.run_outputs``)
  before this run writes anything, and logs what it removed.
* The run's record (run_config.json: arguments, run_id, training data, the start model and that
  model's own record) is copied as ``run_record.json`` into every checkpoint-<step>/,
  checkpoints/<epoch>/ and merged/ folder. A copied or moved model folder keeps its whole chain:
  DPO <- SFT <- base.
* Readers trust the record, not the path: ``model_record`` reads a model folder's own record
  (path lookups only for folders written before records existed), resume and the analysis accept
  only checkpoints of the run folder's ``run_id`` (``check_same_run``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path

from transformers import TrainerCallback

from fwdrev.checkpoint_pruning import check_resumable
from fwdrev.errors import UsageError
from fwdrev.io import atomic_write_text
from fwdrev.layout import (
    EPOCH_CHECKPOINT,
    EPOCH_CHECKPOINTS,
    MERGED,
    RUN_CONFIG,
    RUN_RECORD,
    STEP_CHECKPOINT,
    run_outputs,
    step_checkpoints,
)
from fwdrev.rank_zero import decide_on_main_process

logger = logging.getLogger(__name__)


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def run_config_of(output_dir: str | Path) -> dict | None:
    return read_json(Path(output_dir) / RUN_CONFIG)


def run_id_of(folder: str | Path) -> str | None:
    """The run_id a model or run folder carries (its run_record.json, else run_config.json)."""
    record = read_json(Path(folder) / RUN_RECORD) or run_config_of(folder) or {}
    return record.get("run_id")


def legacy_run_folder(model_path: str | Path) -> Path | None:
    """The run folder above a checkpoint/merged folder, by the layout's names (older runs only)."""
    path = Path(model_path)
    if path.name == EPOCH_CHECKPOINTS or STEP_CHECKPOINT.match(path.name) or path.name == MERGED:
        return path.parent
    if EPOCH_CHECKPOINT.match(path.name) and path.parent.name == EPOCH_CHECKPOINTS:
        return path.parent.parent
    return None


def model_record(model_path: str | Path) -> tuple[dict, Path] | None:
    """(record, file it was read from) of the run that wrote ``model_path``, or None.

    The folder's own run_record.json, else its run_config.json (a run's OUTPUT_DIR holds its
    final model). A folder without either is looked up by path (the run folder above it) only
    when that run predates run ids: a run folder with a run_id writes a record into every
    checkpoint, so a checkpoint without one is not of that run.
    """
    path = Path(model_path)
    for name in (RUN_RECORD, RUN_CONFIG):
        if (record := read_json(path / name)) is not None:
            return record, path / name
    folder = legacy_run_folder(path)
    if folder is not None and (record := run_config_of(folder)) is not None and not record.get("run_id"):
        return record, folder / RUN_CONFIG
    return None


def new_run_id() -> str:
    return uuid.uuid4().hex


def remove_previous_run(output_dir: str | Path) -> list[str]:
    """Delete what an earlier run wrote into ``output_dir``; returns the names removed."""
    removed = []
    for path in run_outputs(output_dir):
        removed.append(path.name + ("/" if path.is_dir() else ""))
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return removed


def choose_run_id(output_dir: str, resume: str | None, overwrite: bool) -> str:
    """Rank 0's decision: the resumed run's id, or a new one (after clearing an overwritten run)."""
    previous = (run_config_of(output_dir) or {}).get("run_id")
    if resume and not previous and resume != "latest" and Path(resume).is_dir():
        previous = run_id_of(resume)  # continuing another folder's checkpoint: its run
    if resume and previous:
        logger.info("resuming run %s", previous)
        return previous
    if overwrite:
        removed = remove_previous_run(output_dir)
        if removed:
            logger.info("--overwrite_output_dir: removed the previous run%s from %s: %s",
                        f" {previous}" if previous else "", output_dir, ", ".join(removed))
    run_id = new_run_id()
    logger.info("run_id %s", run_id)
    return run_id


def decide_run_id(args, overwrite: bool) -> str:
    """Every rank's run_id, decided (and the folder cleared) by rank 0 before anything is written."""
    return decide_on_main_process(
        lambda: choose_run_id(args.output_dir, args.resume_from_checkpoint, overwrite),
        args.process_index, args.world_size)


# What a resumed run must share with the record of the run it continues: its data, start model
# and every setting its updates depend on. The rest (--max_steps / --num_train_epochs to train
# further, saving, logging, memory settings) may change on resume.
RESUME_FIXED_ENTRIES = {"training_data": ("sha256", "train_example_ids", "eval_example_ids"),
                        "base_model": ("fingerprint",), "init_adapter": ("fingerprint",)}
RESUME_FIXED_ARGUMENTS = frozenset({
    "use_lora", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "trust_remote_code",
    "prompt_field", "flipped_prompt_field", "chosen_field", "rejected_field", "sample_types",
    "drop_invalid_rows", "max_length", "max_prompt_length", "eval_size",
    "learning_rate", "lr_scheduler_type", "lr_schedule", "warmup_steps", "warmup_ratio", "weight_decay",
    "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "optim", "seed",
    "per_device_train_batch_size", "gradient_accumulation_steps", "bf16", "fp16",
    "beta", "loss_type", "sft_weight", "disable_dropout"})  # not precompute_ref_log_probs: same reference


def resume_differences(recorded: dict, wanted: dict) -> list[str]:
    """What a resumed run (``wanted``, its new run_config) changes of the run it continues
    (``recorded``): 'entry.field (recorded -> now)' for every fixed setting that differs."""
    recorded, wanted = (json.loads(json.dumps(r, default=str)) for r in (recorded, wanted))
    differ = []
    for entry, fields in RESUME_FIXED_ENTRIES.items():
        for name in fields:
            old, new = ((r.get(entry) or {}).get(name) for r in (recorded, wanted))
            if old != new:
                differ.append(f"{entry}.{name}" + ("" if isinstance(old, list) else f" ({old!r} -> {new!r})"))
    for group, values in wanted.items():
        if group.endswith("Arguments") and isinstance(values, dict):
            old_values = recorded.get(group) or {}
            differ += [f"{group}.{name} ({old_values.get(name)!r} -> {values.get(name)!r})"
                       for name in sorted(RESUME_FIXED_ARGUMENTS & values.keys())
                       if old_values.get(name) != values.get(name)]
    return differ


def check_resume_keeps_the_run(output_dir: str | Path, run_id: str | None, wanted: dict) -> None:
    """Refuse (exit 2) to resume the run recorded in ``output_dir`` with other data, start model or
    settings: its checkpoints would mix two runs under one run_id, and its record would describe
    a run that never happened (checked before anything is written)."""
    recorded = run_config_of(output_dir)
    if not recorded or not run_id or recorded.get("run_id") != run_id:
        return  # a fresh run, or a new folder continuing another folder's checkpoint
    differ = resume_differences(recorded, wanted)
    if differ:
        raise UsageError(f"--resume_from_checkpoint: run {run_id} in {output_dir} was trained with other "
                         f"settings than these: {'; '.join(differ)}. Resume it with its recorded settings "
                         "(run_config.json), or start over with --overwrite_output_dir or in a new --output_dir")


def write_record(output_dir: str | Path, model_folder: str | Path) -> None:
    """Copy the run's record (OUTPUT_DIR/run_config.json) into a model folder it wrote."""
    source = Path(output_dir) / RUN_CONFIG
    if source.is_file():
        atomic_write_text(Path(model_folder) / RUN_RECORD, source.read_text())


class RunRecordCallback(TrainerCallback):
    """Put the run's record into every checkpoint-<step>/ the Trainer saves (the saving rank)."""

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if args.should_save and folder.is_dir():
            write_record(args.output_dir, folder)


def check_same_run(folders, wanted: str | None, where: str | Path, what: str) -> None:
    """Refuse (exit 2) model ``folders`` not written by the run ``wanted`` (a run_id).

    ``wanted`` None (a run folder written before run ids): folders without a record pass with a
    warning; folders that carry different run ids are refused either way.
    """
    ids = {Path(f): run_id_of(f) for f in folders}

    def listed(found: dict) -> str:
        return ", ".join(f"{f.name} (run {i or 'without record'})" for f, i in found.items())

    if wanted is None:
        if len(set(ids.values())) > 1:
            raise UsageError(f"{what} in {where} are of different runs: {listed(ids)}; "
                             "keep the folders of one run only")
        if None in ids.values():
            print(f"warning: {what} in {where} carry no run record (written by an older "
                  "version): cannot check that they are of one run")
        return
    foreign = {f: i for f, i in ids.items() if i != wanted}
    if foreign:
        raise UsageError(f"{what} of other runs in {where}: {listed(foreign)}; the run of "
                         f"{where} (run_config.json) is {wanted}. Remove them, or train with "
                         "--overwrite_output_dir (removes an earlier run's outputs) or into a new folder")


def resolve_resume_checkpoint(value: str | None, output_dir: str, run_id: str | None = None) -> str | None:
    """'latest' -> the newest checkpoint-* in output_dir (None if there is none yet).

    Every checkpoint considered must carry this run's ``run_id`` (exit 2 otherwise): resuming
    another run's checkpoint would continue, or declare complete, a run this one is not.
    """
    if not value:
        return None
    if value != "latest" and not os.path.isdir(value):
        raise FileNotFoundError(f"--resume_from_checkpoint: no such folder {value}")
    checkpoints = step_checkpoints(output_dir) if value == "latest" else [Path(value)]
    if not checkpoints:
        return None
    if all(run_id_of(c) is None for c in checkpoints):
        run_id = None  # checkpoints of a run made before run ids: warned about, accepted
    check_same_run(checkpoints, run_id, output_dir, "--resume_from_checkpoint: checkpoints")
    return check_resumable(str(checkpoints[-1]))  # not one whose optimizer state was pruned


def adopt_unrecorded_checkpoints(output_dir: str | Path) -> None:
    """A run made before run ids, now resumed under one: its checkpoints (none carries a record)
    get the run's record, so the analysis sees one run, not two."""
    folders = step_checkpoints(output_dir) + [p for p in (Path(output_dir) / EPOCH_CHECKPOINTS).glob("*")
                                              if p.is_dir() and EPOCH_CHECKPOINT.match(p.name)]
    if folders and all(run_id_of(f) is None for f in folders):
        for folder in folders:
            write_record(output_dir, folder)
        logger.info("checkpoints of this run made before run ids now carry its record: %s",
                    ", ".join(f.name for f in folders))
