"""Result tables without a plotting stack: tidy series, analysis tables, the summary table.

* tidy series -- one row per (train_set, test_set, stage, epoch, series) with a value,
  from the published numbers (``paper_figure_values.csv``), any tidy CSV, or this
  project's analysis outputs (:func:`series_from_results_dir`, :func:`summary_table`);
* long analysis tables (one row per checkpoint and example): reading, finding a stage's table,
  checkpoint order, per-problem bootstrap CIs of the deltas.

Naming: ``y+`` is the trace whose direction matches the question (forward for a forward
question, reverse for a reverse one), ``y-`` the trace in the opposite direction,
``delta = y+ - y-``.
Train set D_f / D_r / D_m and test set T_f / T_r / T_m are coded ``f`` / ``r`` / ``m``.
Nothing here imports matplotlib, so ``analysis/summarize_results.py`` stays light.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from fwdrev.bootstrap import bootstrap_mean_ci
from fwdrev.score_summaries import GROUP_COLUMN, share_positive
from fwdrev.sets import SETS, TEST_SET_SAMPLE_TYPE

TIDY_COLUMNS = ["train_set", "test_set", "stage", "epoch", "series", "value"]
# Optional: ``derived`` (True for a value computed from others, not measured or published),
# the 95% CI of ``value`` (``ci_low``, ``ci_high``) and the DPO optimizer ``step`` of the checkpoint.
CI_COLUMNS = ["ci_low", "ci_high"]
STAGES = ("sft", "dpo")
SERIES = ("y+", "y-", "delta")
PAPER_CITATION = (
    "Deng et al., When Inverse Data Outperforms: Exploring the Pitfalls of Mixed Data "
    "in Multi-Stage Fine-Tuning, arXiv:2509.13079"
)


# --------------------------------------------------------------------------- tidy series
def validate_series(df: pd.DataFrame) -> pd.DataFrame:
    """Check a tidy series table and return it with clean dtypes (rows with no value dropped).

    The result has :data:`TIDY_COLUMNS`, ``derived`` (False where absent) and, when given,
    :data:`CI_COLUMNS` and ``step``.
    """
    missing = [c for c in TIDY_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"series table lacks columns {missing}; expected {TIDY_COLUMNS}")
    out = df[TIDY_COLUMNS + [c for c in CI_COLUMNS + ["step"] if c in df.columns]].copy()
    out["derived"] = _as_bool(df["derived"]) if "derived" in df.columns else False
    for col in CI_COLUMNS + ["step"]:
        if col in out:
            out[col] = pd.to_numeric(out[col], errors="coerce")
    for col in ("train_set", "test_set", "stage", "series"):
        out[col] = out[col].astype(str).str.strip()
    out["stage"] = out["stage"].str.lower()
    allowed = {"train_set": SETS, "test_set": SETS, "stage": STAGES, "series": SERIES}
    for col, values in allowed.items():
        bad = sorted(set(out[col]) - set(values))
        if bad:
            raise ValueError(f"column {col!r} has unexpected values {bad}; allowed: {list(values)}")
    out["epoch"] = pd.to_numeric(out["epoch"], errors="raise").astype(int)
    out["value"] = pd.to_numeric(out["value"], errors="coerce")
    return out.dropna(subset=["value"]).reset_index(drop=True)


def _as_bool(column: pd.Series) -> pd.Series:
    words = column.astype(str).str.strip().str.lower()
    bad = sorted(set(words) - {"true", "false", "1", "0"})
    if bad:
        raise ValueError(f"column 'derived' has unexpected values {bad}; allowed: true, false")
    return words.isin(["true", "1"])


def read_series_csv(path) -> pd.DataFrame:
    """Read and validate a tidy series CSV (columns :data:`TIDY_COLUMNS`)."""
    return validate_series(pd.read_csv(path))


def load_paper_values(path) -> pd.DataFrame:
    """The published values of the paper's figure (see :data:`PAPER_CITATION`), from
    ``visualization/paper_figure_values.csv`` (the scripts pass its path)."""
    return read_series_csv(path)


def complete_deltas(series: pd.DataFrame) -> pd.DataFrame:
    """Add ``delta = y+ - y-`` rows (``derived`` True) for points that have both log-probs but no delta."""
    keys = ["train_set", "test_set", "stage", "epoch"]
    wide = series.pivot_table(index=keys, columns="series", values="value", aggfunc="mean")
    if not {"y+", "y-"} <= set(wide.columns):
        return series.reset_index(drop=True)
    computed = (wide["y+"] - wide["y-"]).dropna()
    if "delta" in wide.columns:
        computed = computed[wide.loc[computed.index, "delta"].isna()]
    extra = computed.rename("value").reset_index().assign(series="delta", derived=True)
    return pd.concat([series, extra], ignore_index=True) if len(extra) else series.reset_index(drop=True)


# ------------------------------------------------------------------ analysis tables
def read_result_table(path, columns=None) -> pd.DataFrame:
    """Read an analysis/result table, CSV or parquet (optionally only some columns); input data
    files go through ``fwdrev.data.read_table``."""
    path = Path(path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path, columns=columns)
    return pd.read_csv(path, usecols=columns)


def table_columns(path) -> list[str]:
    """Column names of a CSV / parquet file without reading its rows."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    return list(pd.read_csv(path, nrows=0).columns)


def find_stage_table(results_dir, train_set: str, stage: str, subset: str = "all") -> Path | None:
    """``RESULTS_DIR/<train_set>/<stage>/<subset>.parquet`` (preferred) or ``.csv``."""
    folder = Path(results_dir) / train_set / stage
    for suffix in (".parquet", ".csv"):
        if (folder / f"{subset}{suffix}").is_file():
            return folder / f"{subset}{suffix}"
    return None


def checkpoint_sort_key(checkpoint) -> tuple:
    """Order "1" < "2" < "10" and "checkpoint-10" < "checkpoint-200" numerically."""
    numbers = re.findall(r"\d+", str(checkpoint))
    return (int(numbers[-1]) if numbers else float("inf"), str(checkpoint))


def with_epochs(table: pd.DataFrame) -> pd.DataFrame:
    """Ensure an int ``epoch`` column; derive it from the checkpoint order when absent."""
    out = table.copy()
    if "epoch" in out.columns and out["epoch"].notna().all():
        out["epoch"] = out["epoch"].astype(int)
        return out
    names = sorted(out["checkpoint"].astype(str).unique(), key=checkpoint_sort_key)
    out["epoch"] = out["checkpoint"].astype(str).map({c: i + 1 for i, c in enumerate(names)})
    return out



def step_spacing(steps) -> float:
    """Most common gap between consecutive distinct steps (a tie: the larger gap).

    One distinct step s > 0: s (its checkpoint sits at 1); only step 0: 1.
    """
    distinct = np.unique(np.asarray(steps, dtype=float))
    gaps = np.diff(distinct)
    if len(gaps):
        values, counts = np.unique(gaps, return_counts=True)
        return float(values[counts == counts.max()].max())
    return float(distinct[0]) if len(distinct) and distinct[0] > 0 else 1.0


def step_positions(steps) -> np.ndarray:
    """x positions proportional to training steps: ``step / step_spacing(steps)``.

    Evenly spaced checkpoints (10, 20, ..., 10 K) land on 1..K exactly; the original recipe's
    14, 21, ..., 49, 50 on 2, 3, ..., 7, 7 + 1/7 (step 0, the start of DPO, is 0).
    """
    steps = np.asarray(steps, dtype=float)
    return steps / step_spacing(steps)


SUMMARY_COLUMNS = ["train_set", "stage", "epoch", "step", "checkpoint", "test_set", "n_examples", "n_problems",
                   "y_plus", "y_minus", "delta", "delta_ci_low", "delta_ci_high",
                   "pref_acc_first_k", "pref_acc_full"]


def _deltas(table: pd.DataFrame, name: str) -> pd.Series:
    """``delta_<name>``, else ``chosen_<name> - rejected_<name>``, else NaN."""
    if f"delta_{name}" in table:
        return table[f"delta_{name}"]
    if {f"chosen_{name}", f"rejected_{name}"} <= set(table.columns):
        return table[f"chosen_{name}"] - table[f"rejected_{name}"]
    return pd.Series(np.nan, index=table.index)


def _check_groups(table: pd.DataFrame, path) -> None:
    """The CIs resample whole problems: the table's problem key column (the analysis scripts write it)."""
    if GROUP_COLUMN not in table:
        raise ValueError(f"{path}: no {GROUP_COLUMN!r} column (the problem key the analysis scripts "
                         "write), so the CIs cannot resample whole problems: rescore it")


def summary_table(results_dir, metric: str = "logp_mean_first_k", subset: str = "all", ci: bool = True,
                  seed: int = 0) -> pd.DataFrame:
    """Per train_set / stage / epoch / test_set: mean y+, mean y-, delta and preference accuracy.

    y+ and y- are means over examples of ``chosen_<metric>`` / ``rejected_<metric>``;
    ``delta`` is the mean of ``delta_<metric>`` (or y+ - y- without that column), with its 95%
    CI (``delta_ci_low/high``; ``ci=False``: NaN) from a bootstrap over problems: a problem's
    original and flipped row are drawn together (``group_id`` column). ``pref_acc_first_k`` / ``pref_acc_full`` are
    the shares of examples whose delta of the same statistic over the first K tokens / the
    whole response is > 0 (e.g. ``delta_logp_mean_first_k`` / ``delta_logp_mean``).
    """
    chosen, rejected = f"chosen_{metric}", f"rejected_{metric}"
    statistic = metric.removesuffix("_first_k")
    rows = []
    for train_set in SETS:
        for stage in STAGES:
            path = find_stage_table(results_dir, train_set, stage, subset)
            if path is None:
                continue
            table = with_epochs(read_result_table(path))
            table = table.assign(_delta=_deltas(table, metric), _first_k=_deltas(table, f"{statistic}_first_k"),
                                 _full=_deltas(table, statistic))
            if ci:
                _check_groups(table, path)
            for test_set, sample_type in TEST_SET_SAMPLE_TYPE.items():
                if sample_type is not None and "sample_type" not in table:
                    continue  # without question types only T_m (all rows) is defined
                part = table if sample_type is None else table[table["sample_type"] == sample_type]
                for epoch, group in part.groupby("epoch", sort=True):
                    rows.append({"train_set": train_set, "stage": stage, "epoch": int(epoch),
                                 "step": _step(group), "checkpoint": str(group["checkpoint"].iloc[0]),
                                 "test_set": test_set,
                                 **_summary_values(group, chosen, rejected, ci, seed)})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def _step(group: pd.DataFrame) -> float:
    """The checkpoint's optimizer step (NaN for SFT epochs and tables without a ``step`` column)."""
    steps = pd.to_numeric(group["step"], errors="coerce").dropna() if "step" in group else pd.Series([], dtype=float)
    if steps.nunique() > 1:
        raise ValueError(f"checkpoint {group['checkpoint'].iloc[0]!r} has several steps {sorted(steps.unique())}")
    return float(steps.iloc[0]) if len(steps) else np.nan


def _summary_values(group: pd.DataFrame, chosen: str, rejected: str, ci: bool, seed: int) -> dict:
    low, high = (bootstrap_mean_ci(group["_delta"], seed=seed, groups=group[GROUP_COLUMN].to_numpy())
                 if ci else (np.nan, np.nan))
    return {"n_examples": len(group),
            "n_problems": group[GROUP_COLUMN].nunique() if GROUP_COLUMN in group else np.nan,
            "y_plus": group[chosen].mean(), "y_minus": group[rejected].mean(),
            "delta": group["_delta"].mean(), "delta_ci_low": low, "delta_ci_high": high,
            "pref_acc_first_k": share_positive(group["_first_k"]),
            "pref_acc_full": share_positive(group["_full"])}


def series_from_results_dir(results_dir, metric: str = "logp_mean_first_k", subset: str = "all",
                            ci: bool = False) -> pd.DataFrame:
    """Tidy series (``TIDY_COLUMNS``) from ``RESULTS_DIR/<train_set>/<stage>/<subset>.*``.

    ``ci``: delta rows also get their 95% CI (``ci_low``, ``ci_high``; see :func:`summary_table`).
    ``step``: the DPO checkpoint's optimizer step (NaN for SFT), for x positions by step.
    """
    summary = summary_table(results_dir, metric=metric, subset=subset, ci=ci)
    long = summary.melt(
        id_vars=["train_set", "test_set", "stage", "epoch", "step", "delta_ci_low", "delta_ci_high"],
        value_vars=["y_plus", "y_minus", "delta"], var_name="series", value_name="value",
    )
    long["series"] = long["series"].map({"y_plus": "y+", "y_minus": "y-", "delta": "delta"})
    is_delta = long["series"] == "delta"
    if ci:
        long["ci_low"] = long["delta_ci_low"].where(is_delta)
        long["ci_high"] = long["delta_ci_high"].where(is_delta)
    return validate_series(long)

