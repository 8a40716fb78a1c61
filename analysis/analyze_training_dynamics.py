"""Score every checkpoint of an SFT or DPO run: how log p(y+) and log p(y-) move in training.

    python analysis/analyze_training_dynamics.py --base_model ./models/your_base_model \\
        --checkpoint_dir ./outputs/sft_m --dataset_path ./data/split/test.parquet \\
        --output_dir ./outputs/training_dynamics/m/sft [--epochs 1,2,3] [--include_base]
    torchrun --nproc_per_node=4 analysis/analyze_training_dynamics.py ...  # examples split over GPUs

Checkpoints: ``CHECKPOINT_DIR/<epoch>`` (SFT) or ``CHECKPOINT_DIR/checkpoint-<step>`` (DPO; epoch
= ordinal 1..K in step order), found automatically; each a LoRA adapter (the base model is
loaded once, adapters are swapped) or a full model.

Outputs in OUTPUT_DIR: all / first50 / last50 (.parquet and .csv; one row per checkpoint and
example, columns ``fwdrev.score_summaries.SCORE_COLUMNS`` with the --scoring used, and ``group_id``,
the problem of the row), summary.csv (per checkpoint and subset),
data_report.json, scoring_settings.json and parts/<checkpoint>.part (one finished checkpoint
each). The tables are written once every checkpoint asked for has its part, by the run (or the
separate --shard_id run) that scores the last one. Rerunning skips the checkpoints already
scored, so an interrupted run resumes. Each part
records what it was scored from (fingerprints of the checkpoint and the base model, the data
file's hash, the scoring settings): a checkpoint retrained into the same folder, or data
regenerated at the same path, is rescored, and parts that no longer match are left out.

LoRA checkpoints are loaded on the base recorded in their adapter_config.json (the default of
--base_model; another one, or a base whose content changed since training, stops with exit 2
unless --force_base_model). Every checkpoint must carry the run_id of the run folder's
run_config.json (docs/run_identity.md). Rows of problems the run was trained on (its record)
stop the run with exit 2 unless --allow_train_overlap; --require_provenance: no record is exit 2.
"""

import argparse
import json
import os
from pathlib import Path

import pandas as pd

from fwdrev.checkpoints import CheckpointModels, base_checkpoint, discover_checkpoints, parse_epochs, series_base_model
from fwdrev.cli import run_cli
from fwdrev.data_arguments import LENGTH_FLAGS, ROW_FLAGS
from fwdrev.errors import UsageError
from fwdrev.fingerprint import file_sha256, model_fingerprint
from fwdrev.io import exclusive_lock, write_json, write_table
from fwdrev.modeling import is_adapter_dir, load_tokenizer, pick_attn_implementation
from fwdrev.probe_scoring import ProbeRun, add_probe_arguments
from fwdrev.provenance import check_base_content, recorded_base, train_overlap
from fwdrev.run_identity import run_id_of
from fwdrev.score_keys import SCORING_FLAGS, content_settings
from fwdrev.score_summaries import (
    add_group_argument,
    add_group_ids,
    checkpoint_summary,
    problem_group_ids,
    scores_table,
    subset_frames,
)
from fwdrev.scoring import pair_length, sample_types_by_id, scoring_chunk_size, scoring_dtype
from fwdrev.scoring_cli import add_scoring_arguments, load_scoring_pairs, parse_scoring_args
from fwdrev.sharding import by_example_id, current_shard, gather_table, read_key, write_parquet

TABLE_SUBSETS = ("all", "first50", "last50")
TABLES_LOCK = ".tables.lock"  # in OUTPUT_DIR: one run at a time reads the parts and writes the tables
# Flags that change the scores: a resumed run must use the same values as the parts on disk.
SETTINGS_FLAGS = ("dataset_path", *ROW_FLAGS, *LENGTH_FLAGS, *SCORING_FLAGS, "base_model", "checkpoint_dir")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base_model", default=None,
                        help="Base model of the run (default, and checked: the base recorded by its "
                             "LoRA checkpoints; needed for a series of full models).")
    parser.add_argument("--checkpoint_dir", required=True, help="Folder with the run's checkpoints.")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--epochs", default=None,
                        help="Comma-separated SFT epochs / DPO ordinals to score (default: all found).")
    parser.add_argument("--stage", choices=("sft", "dpo", "auto"), default="auto",
                        help="Checkpoint layout: <epoch>/ (sft) or checkpoint-<step>/ (dpo).")
    parser.add_argument("--include_base", action="store_true",
                        help="Also score the base model (checkpoint 'base', epoch 0).")
    parser.add_argument("--shard_by", choices=("auto", "examples", "checkpoints"), default="auto",
                        help="With several processes: split the examples of every checkpoint, or give "
                             "each process whole checkpoints (auto: whole checkpoints for a series of "
                             "full models, so each is loaded by one process only; examples for LoRA "
                             "adapters, which share one loaded base).")
    add_scoring_arguments(parser)
    add_group_argument(parser)
    add_probe_arguments(parser)
    return parse_scoring_args(parser, argv)


def shards_whole_checkpoints(args, shard, checkpoints) -> bool:
    """Whether each process scores whole checkpoints (all examples) instead of an example shard."""
    if shard.count == 1 or args.shard_by == "examples":
        return False
    if args.shard_by == "checkpoints":
        return True
    return not any(c.path is not None and is_adapter_dir(c.path) for c in checkpoints)


def check_settings(args, stage: str, output_dir: Path, is_main: bool) -> None:
    """Refuse to mix parts scored with other settings into the same tables."""
    settings = {flag: getattr(args, flag) for flag in SETTINGS_FLAGS}
    for flag in ("dataset_path", "base_model", "checkpoint_dir"):
        if os.path.exists(settings[flag]):
            settings[flag] = os.path.abspath(settings[flag])
    settings["stage"] = stage
    path = output_dir / "scoring_settings.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        changed = {k: (saved.get(k), v) for k, v in settings.items() if saved.get(k) != v}
        if changed:
            raise UsageError(f"{output_dir} holds results scored with other settings "
                             f"(saved, now): {changed}; use another --output_dir")
    elif is_main:
        write_json(path, settings)


def resolve_base_model(args, checkpoints) -> str:
    """--base_model checked against the adapters' recorded base, or that base by default; for
    full models, the start model recorded in the run's record (default), and a --base_model (or
    the recorded folder now) of other content is refused unless --force_base_model."""
    base = series_base_model(checkpoints, args.base_model, args.force_base_model)
    if base is None:
        resolved = recorded_base(checkpoints[0].path).get("resolved", "")
        base = resolved if os.path.exists(resolved) else None
    if base is not None and not is_adapter_dir(checkpoints[0].path):  # the epoch-0 model of the series
        check_base_content(checkpoints[0].path, base, args.force_base_model, "--base_model",
                           given=args.base_model is not None)
    if base is None:
        raise UsageError(f"{args.checkpoint_dir} holds full models and no run_config.json records "
                         "their base model: pass --base_model (its tokenizer is used to score)")
    return base


def series_tokenizer(checkpoints, base_model: str) -> str:
    """A series of full models is scored with the tokenizer its run saved, not --base_model's."""
    saved = [c.path for c in checkpoints if c.path is not None and not is_adapter_dir(c.path)
             and (c.path / "tokenizer_config.json").is_file()]
    return str(saved[0]) if saved else base_model


def current_part_keys(args, stage: str, dtype) -> dict[str, dict]:
    """Checkpoint name -> what its part must have been scored from, for every checkpoint of the
    run (not only the --epochs asked for) and the base model."""
    shared = {"base_fingerprint": model_fingerprint(args.base_model),
              "data_sha256": file_sha256(args.dataset_path), "settings": content_settings(args, dtype)}
    keys = {}
    for checkpoint in discover_checkpoints(args.checkpoint_dir, stage) + [base_checkpoint(stage)]:
        fingerprint = None if checkpoint.path is None else model_fingerprint(checkpoint.path)
        key = {"checkpoint": checkpoint.name, "checkpoint_fingerprint": fingerprint, **shared}
        if checkpoint.path is not None and (run_id := run_id_of(checkpoint.path)):
            key["run_id"] = run_id  # only then: parts of checkpoints without a record stay valid
        keys[checkpoint.name] = json.loads(json.dumps(key))
    return keys


def part_name(part: Path) -> str:
    return part.name[: -len(".part")]


def rebuild_tables(output_dir: Path, keys: dict[str, dict], group_ids: dict[int, int]) -> pd.DataFrame | None:
    """Merge the parts that match ``keys`` into the subset tables and summary.csv (atomic writes).

    The problem key comes from this run's data (parts hold scores only), so it is never stale.
    """
    parts = [p for p in sorted((output_dir / "parts").glob("*.part")) if read_key(p) == keys.get(part_name(p))]
    if not parts:
        return None
    table = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    table = table.sort_values(["epoch", "example_id"], kind="stable").reset_index(drop=True)
    table = add_group_ids(table, group_ids)
    subsets = subset_frames(table, per_sample_type=False)
    for name in TABLE_SUBSETS:
        for suffix in (".parquet", ".csv"):
            write_table(subsets[name], output_dir / f"{name}{suffix}")
    write_table(checkpoint_summary(table), output_dir / "summary.csv")
    return table


def write_tables_when_complete(output_dir: Path, checkpoints, keys: dict[str, dict],
                               group_ids: dict[int, int]) -> pd.DataFrame | None:
    """``rebuild_tables`` once every checkpoint of ``checkpoints`` has its part, else say how many do.

    Separate runs finish in any order: under a lock (reading the parts and writing the tables),
    so the tables a run leaves are never older than the parts another run saw.
    """
    with exclusive_lock(output_dir / TABLES_LOCK):
        missing = [c.name for c in checkpoints if read_key(part_file(output_dir, c)) != keys[c.name]]
        if missing:
            print(f"{len(checkpoints) - len(missing)} of {len(checkpoints)} checkpoints scored (to come: "
                  f"{missing}); the run that scores the last one writes the tables")
            return None
        return rebuild_tables(output_dir, keys, group_ids)


def checkpoints_to_score(checkpoints, keys, output_dir: Path, shard) -> list:
    """The checkpoints without a part (or, for a separate shard run, a shard file) of their key;
    says which parts were scored from other content and are rescored or left out."""
    def done(checkpoint, path) -> bool:
        return read_key(path) == keys[checkpoint.name]

    todo = [c for c in checkpoints if not done(c, part_file(output_dir, c))
            and (shard.launched or shard.count == 1 or not done(c, shard.file(part_file(output_dir, c))))]
    if shard.is_main:
        for checkpoint in todo:
            saved = read_key(part_file(output_dir, checkpoint))
            if part_file(output_dir, checkpoint).exists():
                changed = sorted(k for k in keys[checkpoint.name] if (saved or {}).get(k) != keys[checkpoint.name][k])
                print(f"checkpoint {checkpoint.name}: its part was scored from other content "
                      f"({', '.join(changed)} changed); rescoring")
        names = {c.name for c in checkpoints}
        for part in sorted((output_dir / "parts").glob("*.part")):
            if part_name(part) not in names and read_key(part) != keys.get(part_name(part)):
                print(f"left out {part}: scored from a checkpoint, base model, data or settings "
                      "that are not the current ones")
        print(f"{len(checkpoints) - len(todo)} of {len(checkpoints)} checkpoints already scored; "
              f"to score: {[c.name for c in todo]}")
    return todo


def part_file(output_dir: Path, checkpoint) -> Path:
    return output_dir / "parts" / f"{checkpoint.name}.part"


def main(argv=None) -> None:
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    shard = current_shard(args.num_shards, args.shard_id)
    checkpoints = discover_checkpoints(args.checkpoint_dir, args.stage, parse_epochs(args.epochs))
    stage = checkpoints[0].stage
    args.checkpoint_dir = str(checkpoints[0].path.parent)  # a run folder and its checkpoints/ are one setting
    args.base_model = resolve_base_model(args, checkpoints)
    # every checkpoint scored, and the base: each says (in its record) what it was trained on
    trained_from = [c.path for c in checkpoints] + [args.base_model]
    if args.include_base:
        checkpoints.insert(0, base_checkpoint(stage))
    check_settings(args, stage, output_dir, shard.is_main)

    tokenizer = load_tokenizer(series_tokenizer(checkpoints, args.base_model))  # one for all checkpoints
    data, pairs = load_scoring_pairs(args, tokenizer)
    group_ids = problem_group_ids(data.frame, args.group_field, args.dataset_path)
    trained_on = train_overlap(trained_from, data, args.allow_train_overlap, args.require_provenance)
    if shard.is_main:
        print(data.report.summary())
        data.report.save_json(output_dir / "data_report.json")
    whole_checkpoints = shards_whole_checkpoints(args, shard, checkpoints)
    my_pairs = pairs if whole_checkpoints else shard.take(pairs, pair_length)
    sample_types = sample_types_by_id(data)
    device = shard.device(args.gpu_id)
    keys = current_part_keys(args, stage, scoring_dtype(device))
    todo = checkpoints_to_score(checkpoints, keys, output_dir, shard)
    probes = ProbeRun(args, tokenizer, data, pairs, output_dir, shard, trained_from, args.base_model,
                      scoring_dtype(device))
    todo = probes.with_missing_parts(checkpoints, todo, keys)  # and checkpoints lacking probe parts
    shard.barrier()  # every rank decided on the same to-do list before any part is written

    models = CheckpointModels(args.base_model, scoring_dtype(device), device,
                              pick_attn_implementation(args.use_flash_attention), args.force_base_model)
    if todo:  # before the split below: under torchrun every rank meets its barrier
        probes.prepare_greedy(lambda: models.activate(base_checkpoint(stage)), my_pairs)
    if whole_checkpoints:  # by position in the whole series, so separate runs never overlap or skip
        todo = [c for c in checkpoints[shard.index :: shard.count] if c in todo]
    for checkpoint in todo:
        with models.activate(checkpoint) as model:
            scores = probes.score_pairs(model, my_pairs, tokenizer.pad_token_id, checkpoint,
                                        batch_size=args.batch_size, first_k=args.max_tokens,
                                        chunk_size=scoring_chunk_size(args, model), device=device,
                                        progress=shard.is_main, score_tokens=args.score_tokens)
        table = scores_table(scores, sample_types, checkpoint.name, checkpoint.stage,
                             checkpoint.epoch, checkpoint.step, args.scoring)
        if args.allow_train_overlap and trained_on is not None:
            table["trained_on"] = table["example_id"].map(trained_on).astype(bool)
        probes.write_parts(checkpoint, keys[checkpoint.name], whole_checkpoints)
        if whole_checkpoints:  # this process's own checkpoint, every example: its part, as it is
            write_parquet(by_example_id(table), part_file(output_dir, checkpoint), keys[checkpoint.name])
            print(f"checkpoint {checkpoint.name} scored (process {shard.index})")
        elif gather_table(shard, table, part_file(output_dir, checkpoint), [p.example_id for p in pairs],
                          keys[checkpoint.name]) is not None:
            print(f"checkpoint {checkpoint.name} scored")
    if whole_checkpoints:
        shard.barrier()  # every part written before rank 0 merges them
    if shard.is_main or not shard.launched:
        table = write_tables_when_complete(output_dir, checkpoints, keys, group_ids)
        if table is not None:  # every checkpoint scored: the probe tables are complete too
            probes.merge_parts(keys)
        if table is not None:
            print(f"wrote {output_dir}: {table['checkpoint'].nunique()} checkpoints, "
                  f"{len(table)} rows in all.parquet/.csv")
    shard.close()


if __name__ == "__main__":
    run_cli(main)
