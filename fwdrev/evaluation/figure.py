"""Benchmark accuracy over a checkpoint series: a panel per benchmark, a line per training run,
the 95% bootstrap CI as a band (``accuracy.csv`` of ``analysis/evaluate_benchmarks.py``)."""

from __future__ import annotations

import pandas as pd

from fwdrev.data_checks import DataValidationError

TITLES = {"aime24": "AIME24", "math500": "MATH500", "gpqa_diamond": "GPQA Diamond", "heldout": "held-out",
          "heldout_original": r"held-out $\mathcal{T}_f$", "heldout_flipped": r"held-out $\mathcal{T}_r$"}
NEEDED = ("model", "stage", "epoch", "step", "benchmark", "accuracy", "ci_low", "ci_high")


def series_points(accuracy: pd.DataFrame, source: str = "accuracy.csv") -> pd.DataFrame:
    """The checkpoint rows with their run (label before '/') and x (SFT epoch, DPO step)."""
    missing = [c for c in NEEDED if c not in accuracy.columns]
    if missing:
        raise DataValidationError(f"{source}: columns {missing} missing; expected the accuracy.csv of "
                                  "analysis/evaluate_benchmarks.py")
    points = accuracy[accuracy["stage"].fillna("").astype(str).isin(["sft", "dpo"])].copy()
    if points.empty:
        raise DataValidationError(f"{source}: no checkpoint series (run the evaluation with --checkpoint_dir)")
    points["run"] = points["model"].astype(str).str.split("/").str[0]
    points["x"] = [s if stage == "dpo" else e for stage, e, s in zip(points["stage"], points["epoch"], points["step"])]
    order = list(dict.fromkeys(points["benchmark"]))  # panels in the table's order
    points["benchmark"] = pd.Categorical(points["benchmark"], categories=order, ordered=True)
    return points.sort_values(["run", "benchmark", "x"])


def plot_series(points: pd.DataFrame):
    import matplotlib.pyplot as plt

    benchmarks = [b for b in points["benchmark"].cat.categories if (points["benchmark"] == b).any()]
    fig, axes = plt.subplots(1, len(benchmarks), figsize=(2.4 * len(benchmarks), 2.1), squeeze=False)
    for ax, benchmark in zip(axes[0], benchmarks):
        for run, rows in points[points["benchmark"] == benchmark].groupby("run", sort=False, observed=True):
            line, = ax.plot(rows["x"], 100 * rows["accuracy"], marker="o", label=run)
            ax.fill_between(rows["x"], 100 * rows["ci_low"], 100 * rows["ci_high"], color=line.get_color(),
                            alpha=0.18, linewidth=0)
        ax.set_title(TITLES.get(benchmark, benchmark))
        stages = set(points.loc[points["benchmark"] == benchmark, "stage"])
        ax.set_xlabel("DPO step" if stages == {"dpo"} else "SFT epoch" if stages == {"sft"} else "epoch / step")
        ax.grid(alpha=0.3, linewidth=0.5)
    axes[0][0].set_ylabel("accuracy (%)")
    axes[0][-1].legend(loc="best")
    fig.tight_layout()
    return fig
