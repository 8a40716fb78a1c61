"""Per-example response log-probs of y+ (chosen) and y- (rejected), and their summaries.

One row per example: for each side the token count, sum, mean and peak (max) per-token
log-prob over the whole response and over its first K tokens, then the deltas
(chosen - rejected). Scoring is batched, longest pairs first (an out-of-memory error shows
up in the first batch, not after an hour), and never builds full-vocabulary logits.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from fwdrev.bootstrap import bootstrap_mean_ci
from fwdrev.data import DataValidationError, PreferenceData, load_preference_data
from fwdrev.data_arguments import add_data_flags
from fwdrev.logprobs import DEFAULT_CHUNK_SIZE, chunk_size_for_budget, scoring_logprobs
from fwdrev.modeling import eval_mode
from fwdrev.original_scoring import MIN_MAX_TOKENS, SCORINGS, encode_original_examples
from fwdrev.problems import group_column as default_group_column
from fwdrev.tokenization import (
    ChosenRejected,
    LengthSettingsError,
    TokenizedPair,
    check_lengths,
    collate_pairs,
    default_max_prompt_length,
    encode_examples,
    split_halves,
)

SIDES = ChosenRejected._fields  # ("chosen", "rejected")
STAT_NAMES = ["num_tokens", "logp_sum", "logp_mean", "logp_max",
              "num_tokens_first_k", "logp_sum_first_k", "logp_mean_first_k", "logp_max_first_k"]
DELTA_STATS = ["logp_sum", "logp_mean", "logp_max",
               "logp_sum_first_k", "logp_mean_first_k", "logp_max_first_k"]
META_COLUMNS = ["checkpoint", "stage", "epoch", "step", "example_id", "sample_type", "scoring"]
SCORE_COLUMNS = (META_COLUMNS + [f"{side}_{name}" for side in SIDES for name in STAT_NAMES]
                 + [f"delta_{name}" for name in DELTA_STATS])
REWARD_COLUMNS = ["ref_chosen_logp_sum", "ref_rejected_logp_sum", "chosen_reward",
                  "rejected_reward", "reward_margin"]
SUMMARY_MEANS = ["chosen_logp_mean", "rejected_logp_mean", "delta_logp_mean",
                 "chosen_logp_mean_first_k", "rejected_logp_mean_first_k", "delta_logp_mean_first_k",
                 "chosen_logp_sum", "rejected_logp_sum", "delta_logp_sum"]
# CPU scoring's default head chunk (55 tokens at 152k vocabulary): the fastest whole-process
# analysis measured, 0.8x the original's time (README, Benchmarks); larger chunks are slower there.
CPU_CHUNK_MB = 64
HEAD_TAIL_SIZE = 50  # the "first50" / "last50" subsets of the original analysis


def response_stats(per_token: torch.Tensor, mask: torch.Tensor, first_k: int) -> dict[str, torch.Tensor]:
    """Token count, sum, mean and max log-prob per row, over all and over the first K response tokens.

    Rows without response tokens get NaN mean and max.
    """
    first_k_mask = mask & (mask.cumsum(-1) <= first_k)  # response tokens are contiguous
    stats = {}
    for suffix, row_mask in (("", mask), ("_first_k", first_k_mask)):
        count = row_mask.sum(-1)
        total = (per_token * row_mask).sum(-1)
        empty = count == 0
        peak = per_token.masked_fill(~row_mask, float("-inf")).max(-1).values
        stats[f"num_tokens{suffix}"] = count
        stats[f"logp_sum{suffix}"] = total
        stats[f"logp_mean{suffix}"] = (total / count.clamp(min=1)).masked_fill(empty, float("nan"))
        stats[f"logp_max{suffix}"] = peak.masked_fill(empty, float("nan"))
    return stats


def pair_length(pair: TokenizedPair) -> int:
    return len(pair.prompt_ids) + max(len(pair.chosen_ids), len(pair.rejected_ids))


def score_pairs(model, pairs: list[TokenizedPair], pad_token_id: int, *, batch_size: int = 2,
                first_k: int = 1000, chunk_size: int = DEFAULT_CHUNK_SIZE,
                device: torch.device | str | None = None, progress: bool = False,
                score_tokens: int | None = None, on_batch=None) -> pd.DataFrame:
    """Score chosen and rejected responses of ``pairs``; one row per pair, in input order.

    Columns: example_id, ``{chosen,rejected}_{STAT_NAMES}`` and ``delta_{DELTA_STATS}``.
    ``score_tokens`` K (>= ``first_k``): only each response's first K tokens are run through the
    model (a causal model gives them the values of full scoring); see ``first_tokens_only``.
    ``on_batch(batch_pairs, out)``: called with each batch's ``SequenceLogprobs`` (chosen rows,
    then rejected rows; argmax included) for per-position outputs, ``fwdrev.token_dynamics``.
    """
    full_pairs = pairs
    if score_tokens is not None:
        pairs = [dataclasses.replace(pair, chosen_ids=pair.chosen_ids[:score_tokens],
                                     rejected_ids=pair.rejected_ids[:score_tokens]) for pair in pairs]
    device = device if device is not None else next(model.parameters()).device
    order = sorted(range(len(pairs)), key=lambda i: -pair_length(pairs[i]))
    rows: dict[int, dict] = {}
    batches = range(0, len(order), batch_size)
    with eval_mode(model):
        for start in tqdm(batches, desc="scoring", unit="batch", disable=not progress):
            batch_indices = order[start : start + batch_size]
            batch_pairs = [pairs[i] for i in batch_indices]
            batch = collate_pairs(batch_pairs, pad_token_id)  # chosen rows, then rejected rows
            out = scoring_logprobs(model, batch["input_ids"].to(device),
                                   batch["attention_mask"].to(device),
                                   batch["labels"].to(device), chunk_size, with_argmax=on_batch is not None)
            if on_batch is not None:
                on_batch(batch_pairs, out)
            stats = {name: split_halves(values.cpu().tolist(), len(batch_pairs))
                     for name, values in response_stats(out.per_token, out.mask, first_k).items()}
            for j, index in enumerate(batch_indices):
                row = {"example_id": pairs[index].example_id}
                for side in SIDES:
                    row.update({f"{side}_{name}": getattr(stats[name], side)[j] for name in STAT_NAMES})
                rows[index] = row
    columns = ["example_id"] + [f"{side}_{name}" for side in SIDES for name in STAT_NAMES]
    frame = pd.DataFrame([rows[i] for i in range(len(pairs))], columns=columns)
    # explicit dtypes: a shard without rows would give object columns, and a merge with them
    frame = frame.astype({c: "int64" if c == "example_id" or "num_tokens" in c else "float64" for c in columns})
    if score_tokens is not None:
        frame = first_tokens_only(frame, full_pairs, score_tokens)
    for name in DELTA_STATS:
        frame[f"delta_{name}"] = frame[f"chosen_{name}"] - frame[f"rejected_{name}"]
    return frame


def first_tokens_only(frame: pd.DataFrame, full_pairs: list[TokenizedPair], score_tokens: int) -> pd.DataFrame:
    """Scores of responses cut to their first ``score_tokens`` tokens: the whole-response
    log-prob columns are NaN (never a first-K sum that reads as a full one), ``num_tokens`` stays
    the whole response's length, and a ``score_tokens`` column says what was scored."""
    frame = frame.copy()
    for side in SIDES:
        frame[f"{side}_num_tokens"] = [len(getattr(pair, f"{side}_ids")) for pair in full_pairs]
        frame[[f"{side}_logp_sum", f"{side}_logp_mean", f"{side}_logp_max"]] = float("nan")
    frame["score_tokens"] = np.int64(score_tokens)
    return frame


def scores_table(scores: pd.DataFrame, sample_types: dict[int, str | None], checkpoint: str,
                 stage: str, epoch: int, step: int | None, scoring: str = "response") -> pd.DataFrame:
    """Add the checkpoint and example metadata to ``score_pairs`` output (``SCORE_COLUMNS`` order).

    ``scoring``: the --scoring the pairs were encoded with (see ``fwdrev.original_scoring``).
    """
    table = scores.copy()
    table.insert(0, "checkpoint", str(checkpoint))
    table.insert(1, "stage", str(stage))
    table.insert(2, "epoch", np.int64(epoch))
    table.insert(3, "step", pd.array([step] * len(table), dtype="Int64"))
    table.insert(5, "sample_type", [sample_types.get(i) or "unknown" for i in table["example_id"]])
    table["scoring"] = scoring
    counts = [c for c in SCORE_COLUMNS if c == "example_id" or "num_tokens" in c]
    table = table.astype({c: "int64" for c in counts})
    extra = [c for c in table.columns if c not in SCORE_COLUMNS]
    return table[SCORE_COLUMNS + extra]


def add_reward_columns(table: pd.DataFrame, reference_scores: pd.DataFrame, beta: float,
                       loss_type: str = "sigmoid") -> pd.DataFrame:
    """DPO implicit rewards beta * (log p_policy - log p_ref) of each side, and their margin; as
    the trainer computes them: of length-averaged log-probs for IPO, of summed ones otherwise."""
    ref = reference_scores.set_index("example_id")
    table = table.copy()
    table["ref_chosen_logp_sum"] = table["example_id"].map(ref["chosen_logp_sum"])
    table["ref_rejected_logp_sum"] = table["example_id"].map(ref["rejected_logp_sum"])
    stat = "logp_mean" if loss_type == "ipo" else "logp_sum"
    for side in SIDES:
        reference = table["example_id"].map(ref[f"{side}_{stat}"])
        table[f"{side}_reward"] = beta * (table[f"{side}_{stat}"] - reference)
    table["reward_margin"] = table["chosen_reward"] - table["rejected_reward"]
    return table


# --------------------------------------------------------------------------- summaries
# The problem a row belongs to. A problem's `original` and `flipped` rows score the same two
# traces with the roles swapped, so they are not independent: CIs resample whole problems.
GROUP_COLUMN = "group_id"
# Preference accuracy = share of examples with delta > 0, by the per-token mean log-prob over
# the first K response tokens or over the whole response (and by the whole-response sum).
PREF_ACC_COLUMNS = {"pref_acc_first_k": "delta_logp_mean_first_k", "pref_acc_full": "delta_logp_mean",
                    "pref_acc_full_by_sum": "delta_logp_sum"}


def subset_frames(table: pd.DataFrame, per_sample_type: bool = True) -> dict[str, pd.DataFrame]:
    """'all', one subset per sample_type, and the first / last 50 examples in file order."""
    subsets = {"all": table}
    if per_sample_type:
        for sample_type in sorted(table["sample_type"].dropna().unique()):
            subsets[str(sample_type)] = table[table["sample_type"] == sample_type]
    example_ids = np.sort(table["example_id"].unique())
    subsets[f"first{HEAD_TAIL_SIZE}"] = table[table["example_id"].isin(example_ids[:HEAD_TAIL_SIZE])]
    subsets[f"last{HEAD_TAIL_SIZE}"] = table[table["example_id"].isin(example_ids[-HEAD_TAIL_SIZE:])]
    return subsets


def add_group_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--group_field", default=None,
                        help="Column shared by the rows of one problem (its original and flipped "
                             "row); the bootstrap CIs resample whole problems (default: problem_id "
                             "if present, else question, the forward question).")


def problem_group_ids(frame: pd.DataFrame, group_field: str | None = None,
                      source: str = "data") -> dict[int, int]:
    """Row index -> problem number (0, 1, ... in order of first appearance) from ``group_field``."""
    column = group_field or default_group_column(frame)
    if column not in frame.columns:
        raise DataValidationError(
            f"{source}: no problem key column {column!r} (it pairs a problem's original and flipped "
            f"rows for the confidence intervals); pass --group_field COLUMN (a unique id column if "
            f"the rows are independent); available columns: {list(frame.columns)}")
    missing = [int(i) for i in frame.index[frame[column].isna()]]
    if missing:
        raise DataValidationError(f"{source}: column {column!r} is empty in rows {missing[:20]}")
    codes, _ = pd.factorize(frame[column].astype(str))
    return dict(zip((int(i) for i in frame.index), (int(c) for c in codes)))


def add_group_ids(table: pd.DataFrame, group_ids: dict[int, int]) -> pd.DataFrame:
    """Add ``GROUP_COLUMN`` (the problem of each example) to a per-example table."""
    table = table.copy()
    table[GROUP_COLUMN] = table["example_id"].map(group_ids)
    unknown = table.loc[table[GROUP_COLUMN].isna(), "example_id"].unique()
    if len(unknown):
        raise ValueError(f"example_id(s) {sorted(unknown)[:20]} have no problem key")
    table[GROUP_COLUMN] = table[GROUP_COLUMN].astype("int64")
    return table


def table_groups(frame: pd.DataFrame, group_column: str | None = GROUP_COLUMN):
    """The problem key of every row, for ``bootstrap_mean_ci``; None = rows independent."""
    if group_column is None:
        return None
    if group_column not in frame:
        raise ValueError(f"score table lacks the problem key column {group_column!r}, so paired "
                         "original/flipped rows cannot be resampled together")
    return frame[group_column].to_numpy()


def preference_accuracies(frame: pd.DataFrame) -> dict[str, float]:
    """``PREF_ACC_COLUMNS``: shares of positive deltas (first K tokens / whole response)."""
    return {name: _share_positive(frame[column]) for name, column in PREF_ACC_COLUMNS.items()
            if column in frame}


def summarize_subset(frame: pd.DataFrame, seed: int = 0, group_column: str | None = GROUP_COLUMN) -> dict:
    """n, the mean of every numeric score column, preference accuracies and delta CIs.

    The 95% CIs resample whole problems (``group_column``; None = rows independent).
    """
    groups = table_groups(frame, group_column)
    numeric = [c for c in frame.columns if c not in META_COLUMNS and c not in (group_column, "score_tokens")
               and pd.api.types.is_numeric_dtype(frame[c])]
    summary = {"n": int(len(frame)),
               "n_problems": int(len(frame) if groups is None else pd.Series(groups).nunique()),
               "means": {c: _float(frame[c].mean()) for c in numeric}, **preference_accuracies(frame)}
    if "scoring" in frame:
        summary["scoring"] = table_scoring(frame)
    if "score_tokens" in frame:  # whole-response means are NaN: only first-K tokens were scored
        summary["score_tokens"] = int(frame["score_tokens"].max())
    ci_columns = [c for c in numeric if c.startswith("delta_")]
    if "reward_margin" in frame:
        summary["reward_accuracy"] = _share_positive(frame["reward_margin"])
        ci_columns.append("reward_margin")
    summary["ci95_of_mean"] = {c: bootstrap_mean_ci(frame[c], seed=seed, groups=groups) for c in ci_columns}
    summary["ci_resamples"] = "rows" if groups is None else f"problems ({group_column})"
    return summary


def summarize_scores(table: pd.DataFrame, seed: int = 0, group_column: str | None = GROUP_COLUMN) -> dict:
    """Summary of every subset (see ``subset_frames``), as written to summary.json."""
    return {name: summarize_subset(rows, seed, group_column) for name, rows in subset_frames(table).items()}


def checkpoint_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per checkpoint and subset: n, mean y+ / y- / delta and preference accuracies."""
    rows = []
    for _, rows_of_checkpoint in table.groupby(["epoch", "checkpoint"], sort=True):
        first = rows_of_checkpoint.iloc[0]
        for subset, frame in subset_frames(rows_of_checkpoint).items():
            rows.append({"checkpoint": first["checkpoint"], "stage": first["stage"],
                         "epoch": first["epoch"], "step": first["step"], "subset": subset,
                         "scoring": table_scoring(frame) if "scoring" in frame else None,
                         "n": len(frame), **{c: frame[c].mean() for c in SUMMARY_MEANS},
                         **preference_accuracies(frame)})
    return pd.DataFrame(rows).astype({"step": "Int64"})


def table_scoring(table: pd.DataFrame) -> str:
    """The one --scoring of a score table; scores of two scorings are never averaged together."""
    scorings = sorted(table["scoring"].dropna().unique())
    if len(scorings) != 1:
        raise ValueError(f"score table holds scorings {scorings}; expected exactly one")
    return str(scorings[0])


def _share_positive(values: pd.Series) -> float:
    values = values.dropna()
    return float((values > 0).mean()) if len(values) else float("nan")


def _float(value) -> float | None:
    return None if pd.isna(value) else float(value)


# ------------------------------------------------------------------ shared CLI pieces
def add_scoring_arguments(parser: argparse.ArgumentParser) -> None:
    """Data, truncation, batching and sharding flags shared by the analysis scripts."""
    parser.add_argument("--dataset_path", required=True, help="Parquet or JSONL preference file.")
    add_data_flags(parser)  # --prompt_field ... --max_prompt_length, as the training scripts have them
    parser.add_argument("--max_tokens", type=int, default=1000,
                        help="K of the *_first_k columns: statistics over the first K response tokens.")
    parser.add_argument("--score_tokens", type=int, default=None, help="Score only each response's first "
                        "K (>= --max_tokens) tokens: *_first_k exact, whole-response log-probs NaN.")
    parser.add_argument("--batch_size", type=int, default=2, help="Pairs per forward pass.")
    parser.add_argument("--logprob_chunk_size", type=int, default=None,
                        help="Response tokens per output-head chunk (bounds logits memory); default "
                             f"{DEFAULT_CHUNK_SIZE} on GPUs, {CPU_CHUNK_MB} MiB of logits on the CPU.")
    parser.add_argument("--logprob_chunk_mb", type=float, default=None,
                        help="Instead of --logprob_chunk_size: the chunk whose logits fit in this many MiB.")
    parser.add_argument("--gpu_id", type=int, default=0, help="CUDA device of a single-process run.")
    parser.add_argument("--use_flash_attention", action="store_true",
                        help="flash_attention_2 if flash-attn and CUDA are present, else SDPA.")
    parser.add_argument("--num_shards", type=int, default=None,
                        help="Split the examples over this many separate runs (with --shard_id); "
                             "the last run to finish merges. Under torchrun: the world size.")
    parser.add_argument("--shard_id", type=int, default=None, help="This run's shard, 0-based.")
    parser.add_argument("--scoring", choices=SCORINGS, default="response",
                        help="response: the response tokens after the conversation's own prompt; "
                             "original: the original analysis's definition, which the published "
                             "figure used (fixed prompt + the question column, whole conversation "
                             "as completion, first --max_tokens tokens minus the first; see README).")
    parser.add_argument("--allow_train_overlap", action="store_true",
                        help="Score rows whose problems the model was trained on (its run_config.json "
                             "says which) instead of stopping; adds a boolean trained_on column.")
    parser.add_argument("--force_base_model", action="store_true",
                        help="Load LoRA adapters on --base_model even when it is not the base "
                             "recorded in their adapter_config.json, or its content is not the one "
                             "recorded at training.")
    parser.add_argument("--require_provenance", action="store_true",
                        help="Stop (exit 2) when no training record says what the model was trained "
                             "on (default: a warning, and no overlap check).")


def parse_scoring_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse, and refuse inconsistent length flags before any model is loaded (exit 2)."""
    args = parser.parse_args(argv)
    if args.max_prompt_length is None:
        args.max_prompt_length = default_max_prompt_length(args.max_length)
    try:
        check_lengths(args.max_length, args.max_prompt_length)
    except LengthSettingsError as error:
        parser.error(str(error))
    if args.score_tokens is not None and args.score_tokens < args.max_tokens:
        parser.error(f"--score_tokens {args.score_tokens} is below --max_tokens {args.max_tokens}: the "
                     "*_first_k columns need the first --max_tokens tokens scored")
    if args.scoring == "original" and args.max_tokens < MIN_MAX_TOKENS:
        parser.error(f"--scoring original needs --max_tokens >= {MIN_MAX_TOKENS} (it drops the "
                     f"first of the first --max_tokens tokens), got {args.max_tokens}")
    return args


def load_scoring_pairs(args, tokenizer) -> tuple[PreferenceData, list[TokenizedPair]]:
    """Load, validate and tokenize ``--dataset_path``; truncations are added to the report."""
    data = load_preference_data(args.dataset_path, args.prompt_field, args.chosen_field,
                                args.rejected_field, args.sample_types, args.drop_invalid_rows,
                                tokenizer, flipped_prompt_field=args.flipped_prompt_field)
    if args.scoring == "original":
        pairs = encode_original_examples(tokenizer, data, args.prompt_field, args.chosen_field,
                                         args.rejected_field, args.max_tokens, args.max_length,
                                         args.max_prompt_length, args.drop_invalid_rows)
    else:
        pairs = encode_examples(tokenizer, data.examples, args.max_length, args.max_prompt_length,
                                data.report)
    return data, pairs


def scoring_chunk_size(args, model) -> int:
    """--logprob_chunk_mb's chunk for the model's vocabulary, else --logprob_chunk_size, else the
    device's default (``DEFAULT_CHUNK_SIZE`` on GPUs, ``CPU_CHUNK_MB`` on the CPU)."""
    budget_mb = args.logprob_chunk_mb
    if budget_mb is None and args.logprob_chunk_size is not None:
        return args.logprob_chunk_size
    if budget_mb is None and next(model.parameters()).device.type != "cpu":
        return DEFAULT_CHUNK_SIZE
    return chunk_size_for_budget(CPU_CHUNK_MB if budget_mb is None else budget_mb, model.config.vocab_size)


def scoring_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs (log-probs are still reduced in float32), float32 on the CPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def sample_types_by_id(data: PreferenceData) -> dict[int, str | None]:
    """example_id -> sample_type of the loaded rows (None where the file has no sample_type)."""
    return {example.example_id: example.sample_type for example in data.examples}

