"""Long analysis tables for the training-dynamics figures (no matplotlib).

Discovery of analysis tables and ``dynamics.csv`` files, checkpoint order, per-checkpoint
means and CIs, example-by-checkpoint matrices and in-training probe means.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fwdrev.bootstrap import bootstrap_mean_ci
from fwdrev.result_tables import CI_COLUMNS, checkpoint_sort_key, table_columns, with_epochs
from fwdrev.score_summaries import GROUP_COLUMN

ANALYSIS_COLUMNS = {"checkpoint", "example_id", "chosen_logp_mean", "rejected_logp_mean"}
DYNAMICS_COLUMNS = {"step", "split", "example_id", "chosen_logp_mean", "rejected_logp_mean"}


def find_analysis_tables(root) -> list[Path]:
    """Long analysis tables (CSV/parquet with checkpoint-by-example rows) under *root*.

    A table stored both as ``x.csv`` and ``x.parquet`` is listed once (the parquet).
    """
    root = Path(root)
    found: dict[Path, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix not in (".csv", ".parquet") or path.name == "dynamics.csv":
            continue
        try:
            ok = ANALYSIS_COLUMNS <= set(table_columns(path))
        except Exception:  # unreadable or not a table: not ours to plot
            ok = False
        if ok and (path.suffix == ".parquet" or path.with_suffix("") not in found):
            found[path.with_suffix("")] = path
    return sorted(found.values())


def find_dynamics_files(root) -> list[Path]:
    """Every ``dynamics.csv`` (in-training probes) under *root*."""
    return sorted(p for p in Path(root).rglob("dynamics.csv") if p.is_file())


def ordered_checkpoints(table: pd.DataFrame) -> list[str]:
    """Checkpoints in training order: SFT before DPO, then by epoch / number."""
    stage_rank = {"sft": 0, "dpo": 1}
    table = with_epochs(table)
    keys = table.assign(
        _stage=table["stage"].map(stage_rank).fillna(2) if "stage" in table else 0,
        checkpoint=table["checkpoint"].astype(str),
    )[["_stage", "epoch", "checkpoint"]].drop_duplicates()
    keys = keys.assign(_num=keys["checkpoint"].map(lambda c: checkpoint_sort_key(c)[0]))
    return list(keys.sort_values(["_stage", "epoch", "_num"])["checkpoint"].drop_duplicates())


def checkpoint_means(table: pd.DataFrame, columns) -> pd.DataFrame:
    """Mean over examples of *columns* per checkpoint (rows in training order)."""
    order = ordered_checkpoints(table)
    table = table.assign(checkpoint=table["checkpoint"].astype(str))
    return table.groupby("checkpoint")[list(columns)].mean().reindex(order)


def checkpoint_cis(table: pd.DataFrame, column: str, seed: int = 0) -> pd.DataFrame:
    """95% CI (``ci_low``, ``ci_high``) of the mean of *column* per checkpoint, in training order.

    Resamples whole problems (``group_id``), so a problem's two rows are drawn together.
    """
    if GROUP_COLUMN not in table:
        raise ValueError(f"table lacks the problem key column {GROUP_COLUMN!r}")
    table = table.assign(checkpoint=table["checkpoint"].astype(str))
    cis = {name: bootstrap_mean_ci(rows[column], seed=seed, groups=rows[GROUP_COLUMN].to_numpy())
           for name, rows in table.groupby("checkpoint")}
    return pd.DataFrame.from_dict(cis, orient="index", columns=CI_COLUMNS).reindex(ordered_checkpoints(table))


def example_matrix(table: pd.DataFrame, column: str = "delta_logp_mean") -> pd.DataFrame:
    """Examples x checkpoints matrix of *column* (columns in training order).

    Rows are indexed by (sample_type, example_id) when the table has a sample_type, with
    the forward ("original") block first, so forward and reverse rows never mix even when
    they share ids; otherwise by example_id.
    """
    table = table.assign(checkpoint=table["checkpoint"].astype(str))
    index = ["sample_type", "example_id"] if "sample_type" in table else ["example_id"]
    # groupby (not pivot_table) keeps all-NaN examples and adds no empty id/type combinations
    matrix = table.groupby(index + ["checkpoint"])[column].mean().unstack("checkpoint")
    matrix = matrix.reindex(columns=ordered_checkpoints(table))
    rank = {"original": 0, "flipped": 1}  # forward block first, other types after
    return matrix.sort_index(
        key=lambda level: level.map(lambda v: rank.get(v, 2)) if level.name == "sample_type" else level)


def dynamics_means(dynamics: pd.DataFrame) -> pd.DataFrame:
    """Mean over examples per (split, sample_type, step); adds ``delta_logp_mean`` if absent."""
    missing = DYNAMICS_COLUMNS - set(dynamics.columns)
    if missing:
        raise ValueError(f"dynamics table lacks columns {sorted(missing)}")
    df = dynamics.copy()
    if "delta_logp_mean" not in df:
        df["delta_logp_mean"] = df["chosen_logp_mean"] - df["rejected_logp_mean"]
    if "sample_type" not in df:
        df["sample_type"] = "all"
    values = [c for c in ("chosen_logp_mean", "rejected_logp_mean", "delta_logp_mean",
                           "chosen_logp_sum", "rejected_logp_sum") if c in df]
    keys = ["split", "sample_type", "step"]
    return df.groupby(keys, as_index=False)[values].mean().sort_values(keys)
