"""The per-example score table and its summaries, in pandas only (no torch: the figure and
summary modules import these names).

One row per example: for each side (y+ chosen, y- rejected) the token count, sum, mean and
peak (max) per-token log-prob over the whole response and over its first K tokens, then the
deltas (chosen - rejected). ``fwdrev.scoring.score_pairs`` fills the score columns.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from fwdrev.bootstrap import bootstrap_mean_ci
from fwdrev.errors import DataValidationError
from fwdrev.problems import group_column as default_group_column

SIDES = ("chosen", "rejected")  # the fields of fwdrev.tokenization.ChosenRejected
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
HEAD_TAIL_SIZE = 50  # the "first50" / "last50" subsets of the original analysis


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
    return {name: share_positive(frame[column]) for name, column in PREF_ACC_COLUMNS.items()
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
        summary["reward_accuracy"] = share_positive(frame["reward_margin"])
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


def share_positive(values: pd.Series) -> float:
    """Share of values > 0, NaNs left out (NaN when none is left)."""
    values = values.dropna()
    return float((values > 0).mean()) if len(values) else float("nan")


def _float(value) -> float | None:
    return None if pd.isna(value) else float(value)
