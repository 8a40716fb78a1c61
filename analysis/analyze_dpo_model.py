"""Score one model (full model or LoRA adapter) on preference data: log p(y+), log p(y-), gap.

    python analysis/analyze_dpo_model.py --model_path ./outputs/dpo_m \\
        --dataset_path ./data/split/test.parquet --output_dir ./outputs/dpo_analysis \\
        [--ref_model_path ./models/your_base_model --beta 0.1]
    torchrun --nproc_per_node=4 analysis/analyze_dpo_model.py ...   # examples split over GPUs

Outputs in OUTPUT_DIR: scores.parquet and scores.csv (one row per example, columns
``fwdrev.score_summaries.SCORE_COLUMNS`` plus ``REWARD_COLUMNS`` with --ref_model_path), summary.json
(per subset: the --scoring used, means, preference accuracies ``pref_acc_first_k`` /
``pref_acc_full`` / ``pref_acc_full_by_sum``, 95% CIs of the mean deltas from a bootstrap over
problems, the ``group_id`` column) and data_report.json (rows used, excluded and truncated).

A LoRA adapter (and a LoRA reference) is loaded on the base recorded in its adapter_config.json;
another --base_model stops with exit 2 (--force_base_model to override). Rows of problems the
model was trained on (its training run's run_config.json, found from the model folder) stop the
run with exit 2 (--allow_train_overlap: score them, with a trained_on column).
"""

import argparse
from pathlib import Path

from fwdrev.checkpoints import DPO_FOLDER, free_memory
from fwdrev.cli import run_cli
from fwdrev.io import write_json, write_table
from fwdrev.modeling import is_adapter_dir, load_for_scoring
from fwdrev.provenance import resolve_adapter_base, train_overlap
from fwdrev.score_summaries import (
    add_group_argument,
    add_group_ids,
    add_reward_columns,
    problem_group_ids,
    scores_table,
    summarize_scores,
)
from fwdrev.scoring import pair_length, sample_types_by_id, score_pairs, scoring_chunk_size, scoring_dtype
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
    parser.add_argument("--beta", type=float, default=0.1, help="DPO beta of the implicit rewards.")
    parser.add_argument("--checkpoint_name", default=None, help="'checkpoint' column (default: folder name).")
    parser.add_argument("--stage", default="dpo", help="'stage' column.")
    parser.add_argument("--epoch", type=int, default=1, help="'epoch' column.")
    parser.add_argument("--step", type=int, default=None,
                        help="'step' column (default: N of a checkpoint-N folder, else empty).")
    add_scoring_arguments(parser)
    add_group_argument(parser)
    return parse_scoring_args(parser, argv)


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
    trained_on = train_overlap([args.model_path], data, args.allow_train_overlap)
    if shard.is_main:
        print(data.report.summary())
        data.report.save_json(output_dir / "data_report.json")
    my_pairs = shard.take(pairs, pair_length)

    def score(scoring_model):
        return score_pairs(scoring_model, my_pairs, tokenizer.pad_token_id,
                           batch_size=args.batch_size, first_k=args.max_tokens,
                           chunk_size=scoring_chunk_size(args, scoring_model), device=device,
                           progress=shard.is_main, score_tokens=args.score_tokens)

    name = args.checkpoint_name or Path(args.model_path).resolve().name
    step = args.step
    if step is None and (match := DPO_FOLDER.match(name)):
        step = int(match.group(1))
    table = scores_table(score(model), sample_types_by_id(data), name, args.stage, args.epoch, step,
                         args.scoring)
    if args.allow_train_overlap and trained_on is not None:
        table["trained_on"] = table["example_id"].map(trained_on).astype(bool)
    if args.ref_model_path:
        del model  # one model in memory at a time
        free_memory()
        reference, _ = load_for_scoring(args.ref_model_path, args.ref_base_model, dtype, device,
                                        args.use_flash_attention, force_base_model=args.force_base_model,
                                        base_flag="--ref_base_model")
        table = add_reward_columns(table, score(reference), args.beta)
    table = add_group_ids(table, group_ids)

    merged = gather_table(shard, table, output_dir / "scores.parquet", [p.example_id for p in pairs])
    if merged is not None:
        write_table(merged, output_dir / "scores.csv")
        summary = summarize_scores(merged)
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
