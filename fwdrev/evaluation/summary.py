"""Accuracy with 95% bootstrap CIs, the paper's table (a row per model, a column per benchmark),
and the paired difference of two models on the same problems.

CIs resample problems (``group``: a held-out problem's original and flipped rows together),
with ``fwdrev.bootstrap``; the paired difference resamples the problems both models answered.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fwdrev.bootstrap import bootstrap_mean_ci
from fwdrev.errors import UsageError

MODEL_COLUMNS = ["model", "checkpoint", "stage", "epoch", "step"]


def with_sample_types(records: pd.DataFrame) -> pd.DataFrame:
    """The records, plus the held-out ones again as ``heldout_original`` / ``heldout_flipped``
    (the study's T_f and T_r) so tables and paired differences show both directions."""
    if "sample_type" not in records:
        return records
    typed = records[records["sample_type"].notna()]
    if typed.empty:
        return records
    split = typed.assign(benchmark=typed["benchmark"] + "_" + typed["sample_type"].astype(str))
    return pd.concat([records, split], ignore_index=True)


def accuracy_table(records: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, benchmark): n, n_correct, accuracy, ci_low, ci_high and how generations
    stopped; ``n_no_answer_at_budget``: cut off by ``max_tokens`` before any answer (a longer
    budget might have finished them), counted among the wrong ones."""
    rows = []
    records = with_sample_types(records)
    for (_, benchmark), group in records.groupby(["model", "benchmark"], sort=False):
        correct = group["correct"].astype(float).to_numpy()
        low, high = bootstrap_mean_ci(correct, groups=group["group"].astype(str).to_numpy())
        stops = group["stop_reason"].value_counts()
        rows.append({**{c: group[c].iloc[0] for c in MODEL_COLUMNS}, "benchmark": benchmark, "n": len(group),
                     "n_correct": int(correct.sum()), "accuracy": float(correct.mean()),
                     "ci_low": low, "ci_high": high,
                     "n_max_tokens": int(stops.get("max_tokens", 0)),
                     "n_thinking_budget": int(stops.get("thinking_budget", 0)),
                     "n_no_answer_at_budget": int(((group["stop_reason"] == "max_tokens")
                                                   & group.get("extracted", pd.Series(None, index=group.index))
                                                   .isna()).sum())})
    return pd.DataFrame(rows)


def paper_table(accuracy: pd.DataFrame) -> pd.DataFrame:
    """Accuracy in % with its CI, a row per model, a column per benchmark (models in run order)."""
    cells = accuracy.assign(cell=[f"{100 * a:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] (n={n})"
                                  for a, lo, hi, n in zip(accuracy["accuracy"], accuracy["ci_low"],
                                                          accuracy["ci_high"], accuracy["n"])])
    table = cells.pivot(index="model", columns="benchmark", values="cell")
    models = list(dict.fromkeys(accuracy["model"]))
    benchmarks = list(dict.fromkeys(accuracy["benchmark"]))
    return table.loc[models, benchmarks].fillna("-").reset_index()


def markdown(table: pd.DataFrame) -> str:
    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def paired_difference(records: pd.DataFrame, model_a: str, model_b: str) -> pd.DataFrame:
    """Per benchmark: accuracy of B minus A on the problems both answered, with its 95% CI."""
    known = set(records["model"])
    missing = [m for m in (model_a, model_b) if m not in known]
    if missing:
        raise UsageError(f"--paired: no predictions of model(s) {missing}; models: {sorted(known)}")
    rows = []
    for benchmark, group in with_sample_types(records).groupby("benchmark", sort=False):
        a = group[group["model"] == model_a].set_index("id")
        b = group[group["model"] == model_b].set_index("id")
        ids = a.index.intersection(b.index)
        if len(ids) == 0:
            continue
        diff = b.loc[ids, "correct"].astype(float).to_numpy() - a.loc[ids, "correct"].astype(float).to_numpy()
        low, high = bootstrap_mean_ci(diff, groups=a.loc[ids, "group"].astype(str).to_numpy())
        rows.append({"benchmark": benchmark, "model_a": model_a, "model_b": model_b, "n_pairs": len(ids),
                     "accuracy_a": float(a.loc[ids, "correct"].mean()),
                     "accuracy_b": float(b.loc[ids, "correct"].mean()),
                     "difference": float(np.mean(diff)), "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows)
