"""Training-dynamics figures for every analysis table (and in-training probe file) in a folder.

    python visualization/visualize_training_dynamics.py --results_dir outputs/analysis [--output_dir DIR]

For each long analysis table found recursively (one row per checkpoint and example; e.g.
``m/dpo/all.csv``, ``first50.csv``, ``last50.parquet``): mean log-prob of y+ and y- over
checkpoints (average = ``*_logp_mean``, peak = ``*_logp_max``), the deltas, and an
example-by-checkpoint heatmap of ``delta_logp_mean``; ``--ci`` adds the 95% CI of each mean
delta as a band (bootstrap over problems, ``group_id`` column). For each ``dynamics.csv``:
curves against training step per split and sample type. Writes PNG + PDF and prints the paths.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import CenteredNorm  # noqa: E402

from fwdrev import dynamics_tables, figures, result_tables  # noqa: E402
from fwdrev.cli import run_cli  # noqa: E402
from fwdrev.errors import UsageError  # noqa: E402
from fwdrev.score_summaries import GROUP_COLUMN  # noqa: E402

SIDE_COLORS = {"chosen": "#1f5fa8", "rejected": "#c0392b"}
SIDE_LABELS = {"chosen": "$y^+$", "rejected": "$y^-$"}
# sample_type -> (linestyle, legend suffix); "all" rows are drawn solid.
GROUP_STYLE = {"all": ("-", "all"), "original": ("--", r"$\mathcal{T}_f$"),
               "flipped": (":", r"$\mathcal{T}_r$")}
TYPE_NAMES = {"original": r"forward ($\mathcal{T}_f$)", "flipped": r"reverse ($\mathcal{T}_r$)"}
TYPE_COLORS = {"original": "#1f5fa8", "flipped": "#c0392b", "all": "0.25"}


def _short(checkpoint: str) -> str:
    """'checkpoint-120' -> '120' so long DPO names fit under the axis."""
    return str(checkpoint).replace("checkpoint-", "")


def checkpoint_positions(table, order) -> pd.Series:
    """x of each checkpoint (index: *order*): 0..K-1, or for a DPO table whose checkpoints all have
    a ``step``, ``(step - first step) / spacing`` (``step_positions``): even checkpoints keep 0..K-1,
    uneven ones (the original recipe's 14, 21, ..., 49, 50) sit where their steps are."""
    ordinal = pd.Series(np.arange(len(order), dtype=float), index=order)
    is_dpo = "stage" in table and set(table["stage"].dropna()) == {"dpo"}
    if not is_dpo or "step" not in table:
        return ordinal
    steps = pd.to_numeric(table["step"], errors="coerce").groupby(table["checkpoint"].astype(str)).first()
    steps = steps.reindex(order)
    if steps.isna().any():
        return ordinal
    positions = result_tables.step_positions(steps.to_numpy())
    return pd.Series(positions - positions[0], index=order)


def _checkpoint_axis(ax, xs: pd.Series, stage):
    """Ticks at *xs* (index: checkpoint names): at most ~12 labels, none closer than 0.6 to the next."""
    ax.set_xticks(xs.to_numpy(), [_short(c) for c in xs.index], rotation=45 if len(xs) > 8 else 0)
    every = int(np.ceil(len(xs) / 12))
    last = np.inf
    for i in reversed(range(len(xs))):
        visible = i % every == 0 and last - xs.iloc[i] >= 0.6
        ax.get_xticklabels()[i].set_visible(visible)
        last = xs.iloc[i] if visible else last
    ax.set_xlabel({"sft": "SFT epoch", "dpo": "DPO checkpoint (step)"}.get(stage, "checkpoint"))


def _groups(table):
    """("all", rows) and, when both question types are present, one group per type."""
    yield "all", table
    if "sample_type" in table and table["sample_type"].nunique() > 1:
        order = {"original": 0, "flipped": 1}  # forward before reverse
        for name in sorted(table["sample_type"].dropna().unique(), key=lambda t: (order.get(t, 2), t)):
            yield str(name), table[table["sample_type"] == name]


def _curves(ax, table, xs: pd.Series, stat: str, sides, ci: bool = False):
    """Mean over examples of ``<side>_logp_<stat>`` per checkpoint (at *xs*), per group (``ci``: delta CI bands)."""
    cols = [f"{side}_logp_{stat}" for side in sides]
    if not set(cols) <= set(table.columns):
        ax.text(0.5, 0.5, f"no {', '.join(cols)}", transform=ax.transAxes, ha="center", color="0.4")
        return
    for group, part in _groups(table):
        means = dynamics_tables.checkpoint_means(part, cols).reindex(xs.index)
        style, suffix = GROUP_STYLE.get(group, ("-.", group))
        for side, col in zip(sides, cols):
            color = SIDE_COLORS.get(side, "0.2")
            label = rf"$\Delta$ {suffix}" if side == "delta" else f"{SIDE_LABELS[side]} {suffix}"
            ax.plot(xs.to_numpy(), means[col].to_numpy(), linestyle=style, marker="o", markersize=2.5,
                    color=color, label=label)
            if ci and side == "delta":
                band = dynamics_tables.checkpoint_cis(part, col).reindex(xs.index)
                ax.fill_between(xs.to_numpy(), band["ci_low"].to_numpy(dtype=float),
                                band["ci_high"].to_numpy(dtype=float), color=color, alpha=0.12, linewidth=0)
    if "delta" in sides:
        ax.axhline(0, color="0.6", linewidth=0.6)


def plot_table(table, title: str, ci: bool = False):
    """2x2 curves (average / peak log-probs, average / peak deltas) plus a delta heatmap.

    ``ci``: 95% CI bands of the mean deltas (the table needs its ``group_id`` column).
    """
    for stat in ("mean", "max"):  # deltas may be left out of a table: derive them
        if f"delta_logp_{stat}" not in table and f"chosen_logp_{stat}" in table:
            delta = table[f"chosen_logp_{stat}"] - table[f"rejected_logp_{stat}"]
            table = table.assign(**{f"delta_logp_{stat}": delta})
    order = dynamics_tables.ordered_checkpoints(table)
    xs = checkpoint_positions(table, order)
    stages = table["stage"].dropna().unique() if "stage" in table else []
    stage = stages[0] if len(stages) == 1 else None
    fig = plt.figure(figsize=(11, 6.2), layout="constrained")
    grid = fig.add_gridspec(2, 3, width_ratios=[1, 1, 0.9])
    panels = [
        (grid[0, 0], "mean", ("chosen", "rejected"), "average log-prob (per token)"),
        (grid[0, 1], "max", ("chosen", "rejected"), "peak log-prob (max over tokens)"),
        (grid[1, 0], "mean", ("delta",), r"$\Delta$ average = $y^+ - y^-$"),
        (grid[1, 1], "max", ("delta",), r"$\Delta$ peak"),
    ]
    for cell, stat, sides, ylabel in panels:
        ax = fig.add_subplot(cell)
        _curves(ax, table, xs, stat, sides, ci)
        _checkpoint_axis(ax, xs, stage)
        ax.set_ylabel(ylabel)
        ax.grid(True, color="0.9", linewidth=0.5)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, ncol=2 if len(ax.lines) > 3 else 1)

    ax = fig.add_subplot(grid[:, 2])
    matrix = dynamics_tables.example_matrix(table, "delta_logp_mean")
    image = ax.imshow(matrix.to_numpy(dtype=float), aspect="auto", interpolation="nearest",
                      cmap=plt.get_cmap("RdBu").with_extremes(bad="0.8"), norm=CenteredNorm(vcenter=0.0))
    fig.colorbar(image, ax=ax, label=r"$\Delta$ average per example", shrink=0.9)
    _checkpoint_axis(ax, pd.Series(np.arange(len(order)), index=order), stage)  # one column each
    ax.set_ylabel(f"example ({matrix.shape[0]} rows)")
    if matrix.index.nlevels == 2:  # one labelled block per question type, split by a line
        types = matrix.index.get_level_values(0)
        starts = [i for i in range(len(types)) if i == 0 or types[i] != types[i - 1]] + [len(types)]
        ax.set_yticks([(a + b - 1) / 2 for a, b in zip(starts, starts[1:])])
        ax.set_yticklabels([TYPE_NAMES.get(types[a], types[a]) for a in starts[:-1]],
                           rotation=90, va="center")
        for edge in starts[1:-1]:
            ax.axhline(edge - 0.5, color="black", linewidth=0.8)
    elif matrix.shape[0] <= 40:
        ax.set_yticks(range(matrix.shape[0]))
        ax.set_yticklabels([str(i) for i in matrix.index], fontsize=5)
    else:
        ax.set_yticks([])
    ax.set_title("examples x checkpoints")
    fig.suptitle(title)
    return fig


SPLIT_NAMES = {"train": "training rows", "eval": "held-out eval rows"}


def dynamics_title(path: Path, root: Path) -> str:
    """'In-training probes of <run> (<stage>)': the run folder and, from its run_config.json, SFT or DPO."""
    run = path.parent.resolve()
    config_path = run / "run_config.json"
    stage = None
    if config_path.is_file():
        import json

        config = json.loads(config_path.read_text())
        stage = "DPO" if "DPOArguments" in config else "SFT" if "SFTArguments" in config else None
    name = path.parent.relative_to(root).as_posix() if path.parent != root else root.resolve().name
    return f"In-training probes of run {name}" + (f" ({stage})" if stage else "")


def plot_dynamics(dynamics, title: str):
    """In-training probes: mean y+/y- and delta against step, one column per split (titled with
    the split and its number of rows)."""
    means = dynamics_tables.dynamics_means(dynamics)
    present = set(means["split"])
    splits = [s for s in ("train", "eval") if s in present] + sorted(present - {"train", "eval"})
    fig, axes = plt.subplots(2, len(splits), figsize=(4.2 * len(splits), 5.6), squeeze=False,
                             layout="constrained")
    for j, split in enumerate(splits):
        part = means[means["split"] == split]
        top, bottom = axes[0, j], axes[1, j]
        for sample_type, rows in part.groupby("sample_type"):
            color = TYPE_COLORS.get(sample_type, "0.3")
            top.plot(rows["step"], rows["chosen_logp_mean"], color=color, label=f"$y^+$ {sample_type}")
            top.plot(rows["step"], rows["rejected_logp_mean"], color=color, linestyle="--",
                     label=f"$y^-$ {sample_type}")
            bottom.plot(rows["step"], rows["delta_logp_mean"], color=color, label=sample_type)
        bottom.axhline(0, color="0.6", linewidth=0.6)
        rows_of_split = dynamics.loc[dynamics["split"] == split, "example_id"].nunique()
        top.set_title(f"{SPLIT_NAMES.get(split, split)} ({rows_of_split} probed)")
        top.set_ylabel("mean log-prob (per token)")
        bottom.set_ylabel(r"$\Delta = y^+ - y^-$")
        bottom.set_xlabel("training step")
        for ax in (top, bottom):
            ax.grid(True, color="0.9", linewidth=0.5)
            ax.legend(fontsize=7)
    fig.suptitle(title)
    return fig


def _stem(relative: Path) -> str:
    return "__".join(relative.with_suffix("").parts)


def main(argv=None) -> list[Path]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results_dir", required=True)
    p.add_argument("--output_dir", help="default: RESULTS_DIR/figures")
    p.add_argument("--dpi", type=int, default=200)
    p.add_argument("--ci", action="store_true",
                   help="95%% CI bands around the mean deltas of analysis tables (bootstrap over problems)")
    args = p.parse_args(argv)
    root = Path(args.results_dir)
    if not root.is_dir():
        p.error(f"--results_dir {root} is not a folder")
    out = Path(args.output_dir) if args.output_dir else root / "figures"

    jobs = [(path, plot_table) for path in dynamics_tables.find_analysis_tables(root)]
    jobs += [(path, plot_dynamics) for path in dynamics_tables.find_dynamics_files(root)]
    if not jobs:
        raise UsageError(f"no analysis tables or dynamics.csv under {root}")
    written = []
    with figures.paper_style():
        for path, plot in jobs:
            relative = path.relative_to(root)
            table = result_tables.read_result_table(path)
            if plot is plot_table:
                if args.ci and GROUP_COLUMN not in table:
                    raise UsageError(f"{relative}: no {GROUP_COLUMN} column (the problem key the analysis "
                                     "scripts write), which --ci needs: rescore it, or leave out --ci")
                fig = plot_table(table, str(relative), ci=args.ci)
            else:
                fig = plot(table, dynamics_title(path, root))
            written += figures.save_figure(fig, out / _stem(relative), formats=("png", "pdf"), dpi=args.dpi)
            plt.close(fig)
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    run_cli(main)
