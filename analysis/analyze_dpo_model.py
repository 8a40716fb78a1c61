"""Score one model (full model or LoRA adapter) on preference data: log p(y+), log p(y-), gap.

    python analysis/analyze_dpo_model.py --model_path ./outputs/dpo_m \\
        --dataset_path ./data/split/test.parquet --output_dir ./outputs/dpo_analysis \\
        [--ref_model_path ./models/your_base_model]
    torchrun --nproc_per_node=4 analysis/analyze_dpo_model.py ...   # examples split over GPUs

Outputs in OUTPUT_DIR: scores.parquet and scores.csv (one row per example, columns
``fwdrev.score_summaries.SCORE_COLUMNS`` plus ``REWARD_COLUMNS`` with --ref_model_path), summary.json
(per subset: the --scoring used, means, preference accuracies ``pref_acc_first_k`` /
``pref_acc_full`` / ``pref_acc_full_by_sum``, 95% CIs of the mean deltas from a bootstrap over
problems, the ``group_id`` column) and data_report.json (rows used, excluded and truncated).

Split over separate runs (``--num_shards N --shard_id i``), each shard file records what it was
scored from (fingerprints of the model and reference, the data file's hash, the flags that
change scores); the last run to finish merges the files of its own key only, and names any
leftover shard file of another model, data or settings it ignored.

A LoRA adapter (and a LoRA reference) is loaded on the base recorded in its adapter_config.json;
another --base_model stops with exit 2 (--force_base_model to override). Rows of problems the
model was trained on (its run record, read from the model folder; docs/run_identity.md) stop the
run with exit 2 (--allow_train_overlap: score them, with a trained_on column; --require_provenance:
a model without a record is exit 2 too). The implicit
rewards use the beta and loss type of the model's own training run (its record); another --beta
stops with exit 2 (--force_beta to override).
"""

import argparse
import json
from pathlib import Path

from fwdrev.checkpoints import DPO_FOLDER, Checkpoint, free_memory, load_for_scoring
from fwdrev.cli import run_cli
from fwdrev.fingerprint import file_sha256
from fwdrev.io import write_json, write_table
from fwdrev.modeling import is_adapter_dir
from fwdrev.probe_scoring import ProbeRun, add_probe_arguments, loaded_model
from fwdrev.provenance import dpo_reward_settings, recorded_adapter_base, resolve_adapter_base, train_overlap
from fwdrev.score_keys import content_settings, model_content
from fwdrev.score_summaries import (
    add_group_argument,
    add_group_ids,
    add_reward_columns,
    problem_group_ids,
    scores_table,
    summarize_scores,
)
from fwdrev.scoring import pair_length, sample_types_by_id, scoring_chunk_size, scoring_dtype
from fwdrev.scoring_cli import add_scoring_arguments, load_scoring_pairs, parse_scoring_args
from fwdrev.sharding import current_shard, gather_table


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", required=True, help="Full model folder or LoRA adapter folder.")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--base_model", default=None,
                        help="Base model of a LoRA adapter (default, and checked: the one recorded in "
                             "its adapter_config.json).")
    parser.add_argument("--ref_model_path", default=None,
                        help="Reference model: adds ref log-probs and DPO implicit rewards.")
    parser.add_argument("--ref_base_model", default=None,
                        help="Base of a LoRA reference (default, and checked: its own recorded base).")
    parser.add_argument("--beta", type=float, default=None,
                        help="DPO beta of the implicit rewards (default, and checked: the one the model "
                             "was trained with, from its run record; 0.1 for a model without one).")
    parser.add_argument("--force_beta", action="store_true",
                        help="Use --beta even when the model was trained with another beta.")
    parser.add_argument("--checkpoint_name", default=None, help="'checkpoint' column (default: folder name).")
    parser.add_argument("--stage", default="dpo", help="'stage' column.")
    parser.add_argument("--epoch", type=int, default=1, help="'epoch' column.")
    parser.add_argument("--step", type=int, default=None,
                        help="'step' column (default: N of a checkpoint-N folder, else empty).")
    add_scoring_arguments(parser)
    add_group_argument(parser)
    add_probe_arguments(parser)  # the reference model (--ref_model_path) is the probes' starting model
    return parse_scoring_args(parser, argv)


def shard_key(args, dtype, name: str, step: int | None) -> dict:
    """What this run's rows are scored from: a shard file of another key is never merged."""
    def loaded_base(path, base_flag_value):  # the base an adapter is loaded on (checked already)
        return (base_flag_value or recorded_adapter_base(path)) if is_adapter_dir(path) else None

    reference = args.ref_model_path
    key = {"model": model_content(args.model_path, loaded_base(args.model_path, args.base_model)),
           "reference": model_content(reference, loaded_base(reference, args.ref_base_model)) if reference else None,
           "data_sha256": file_sha256(args.dataset_path),
           "settings": {**content_settings(args, dtype), "beta": args.beta if reference else None,
                        "loss_type": getattr(args, "loss_type", None) if reference else None,
                        "group_field": args.group_field},
           "columns": {"checkpoint": name, "stage": args.stage, "epoch": args.epoch, "step": step}}
    return json.loads(json.dumps(key))  # as read back from a file (tuples become lists)


def main(argv=None) -> None:
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    shard = current_shard(args.num_shards, args.shard_id)
    device = shard.device(args.gpu_id)
    dtype = scoring_dtype(device)
    model, tokenizer = load_for_scoring(args.model_path, args.base_model, dtype, device,
                                        args.use_flash_attention, force_base_model=args.force_base_model)
    if args.ref_model_path and is_adapter_dir(args.ref_model_path):  # a wrong base fails before scoring
        resolve_adapter_base(args.ref_model_path, args.ref_base_model, args.force_base_model,
                             "--ref_base_model")
    data, pairs = load_scoring_pairs(args, tokenizer)
    group_ids = problem_group_ids(data.frame, args.group_field, args.dataset_path)
    # the model and, for an adapter, the base it is loaded on (also one forced onto it)
    loaded_base = None
    if is_adapter_dir(args.model_path):
        loaded_base = args.base_model or recorded_adapter_base(args.model_path)
    trained_on = train_overlap([p for p in (args.model_path, loaded_base) if p], data, args.allow_train_overlap,
                               args.require_provenance)
    if args.ref_model_path:  # a beta the model was not trained with fails before scoring
        beta, loss_type = dpo_reward_settings(args.model_path, args.beta, args.force_beta)
        args.beta, args.loss_type = beta, loss_type  # what the rows are scored with (shard key)
    if shard.is_main:
        print(data.report.summary())
        data.report.save_json(output_dir / "data_report.json")
    my_pairs = shard.take(pairs, pair_length)
    probes = ProbeRun(args, tokenizer, data, pairs, output_dir, shard, [args.model_path], args.ref_model_path, dtype)
    probes.prepare_greedy(lambda: loaded_model(args.ref_model_path, args.ref_base_model, dtype, device,
                                               args.use_flash_attention, args.force_base_model,
                                               "--ref_base_model"), my_pairs)

    def score(scoring_model, checkpoint):
        return probes.score_pairs(scoring_model, my_pairs, tokenizer.pad_token_id, checkpoint,
                                  batch_size=args.batch_size, first_k=args.max_tokens,
                                  chunk_size=scoring_chunk_size(args, scoring_model), device=device,
                                  progress=shard.is_main, score_tokens=args.score_tokens)

    name = args.checkpoint_name or Path(args.model_path).resolve().name
    step = args.step
    if step is None and (match := DPO_FOLDER.match(name)):
        step = int(match.group(1))
    checkpoints = [Checkpoint(name, Path(args.model_path), args.stage, args.epoch, step)]
    table = scores_table(score(model, checkpoints[0]), sample_types_by_id(data), name, args.stage, args.epoch,
                         step, args.scoring)
    if args.allow_train_overlap and trained_on is not None:
        table["trained_on"] = table["example_id"].map(trained_on).astype(bool)
    if args.ref_model_path:
        del model  # one model in memory at a time
        free_memory()
        reference, _ = load_for_scoring(args.ref_model_path, args.ref_base_model, dtype, device,
                                        args.use_flash_attention, force_base_model=args.force_base_model,
                                        base_flag="--ref_base_model")
        checkpoints.append(Checkpoint("reference", Path(args.ref_model_path), args.stage, 0, 0))
        table = add_reward_columns(table, score(reference, checkpoints[-1]), beta, loss_type)
    table = add_group_ids(table, group_ids)
    probes.write_gathered([c.name for c in checkpoints], output_dir)  # probes.parquet, token_logps.parquet

    key = shard_key(args, dtype, name, step) if shard.count > 1 else None
    merged = gather_table(shard, table, output_dir / "scores.parquet", [p.example_id for p in pairs], key)
    if merged is not None:
        write_table(merged, output_dir / "scores.csv")
        summary = summarize_scores(merged)
        if args.ref_model_path:  # what the reward columns were computed with
            for values in summary.values():
                values.update(beta=beta, loss_type=loss_type)
        write_json(output_dir / "summary.json", summary)
        suffix, accuracy = ("_first_k", "pref_acc_first_k") if args.score_tokens else ("", "pref_acc_full")
        for subset, values in summary.items():
            print(f"{subset:>10}: n={values['n']:4d}  mean delta_logp_mean{suffix}="
                  f"{values['means']['delta_logp_mean' + suffix]:+.4f}  {accuracy}={values[accuracy]:.3f}")
        print(f"wrote {output_dir}/scores.parquet, scores.csv, summary.json (--scoring {args.scoring})")
    elif not shard.launched:
        print(f"shard {shard.index} of {shard.count} written; the last shard to finish merges")
    shard.close()


if __name__ == "__main__":
    run_cli(main)
