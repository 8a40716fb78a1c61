"""Where the probability mass goes: probe responses and token-level dynamics across SFT -> DPO.

    python visualization/plot_probes.py --results_dir outputs/probes [--output_dir DIR] [--top_n 15]

Reads ``<set>/<stage>/probes.parquet`` and ``token_logps.parquet`` (``--probes`` /
``--token_positions`` of analysis/analyze_training_dynamics.py) under RESULTS_DIR and writes:

* ``probes.png/.pdf``: per probe type, the mean per-token log-prob across SFT epochs then DPO
  checkpoints, one colour per training set (D_f, D_r, D_m), solid = forward test rows (T_f),
  dashed = reverse (T_r);
* ``tokens_<set>.png/.pdf``: (a) position x checkpoint heatmaps of the mean change of
  log p(token) from the starting checkpoint, for y+ and y-, forward and reverse; (b) the
  cumulative y+ - y- difference along the position, per checkpoint;
* ``top_tokens_<set>.csv``: (c) the tokens whose log-prob rose / fell most from the start to the
  last checkpoint (tokenizer: ``--tokenizer``, else the base model in scoring_settings.json).

Prints the figure paths and one sentence per training set on how each probe moved over DPO.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import CenteredNorm  # noqa: E402

from fwdrev import figures, probe_tables, token_dynamics  # noqa: E402
from fwdrev.io import write_table  # noqa: E402
from fwdrev.probe_scoring import TOKENS_FILE  # noqa: E402

SET_COLORS = {"f": "#1f5fa8", "r": "#c0392b", "m": "#2e8b57"}
TYPE_STYLE = {"original": ("-", r"$\mathcal{T}_f$"), "flipped": ("--", r"$\mathcal{T}_r$")}
TYPE_NAMES = {"original": "forward", "flipped": "reverse"}
PROBE_TITLES = {"y+": "$y^+$", "y-": "$y^-$", "argmax_along_y+": "argmax token along $y^+$",
                "argmax_along_y-": "argmax token along $y^-$", "irr_train": "$y^+$ of a training problem",
                "irr_test": "$y^+$ of another test problem", "permuted": "$y^+$, words shuffled",
                "permuted_irr": "irr_test, words shuffled", "self_greedy": "starting model's greedy response"}


def plot_probe_means(series: dict[str, pd.DataFrame]):
    """One panel per probe: mean per-token log-prob per checkpoint, per training and test set."""
    probes = sorted({p for frame in series.values() for p in frame["probe"].unique()},
                    key=lambda p: (probe_tables.PROBE_ORDER.index(p) if p in probe_tables.PROBE_ORDER else 99, p))
    columns = min(4, len(probes))
    rows = -(-len(probes) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.1 * columns, 2.5 * rows), squeeze=False,
                             layout="constrained", sharex=True)
    for ax, probe in zip(axes.flat, probes):
        for train_set, frame in series.items():
            means = probe_tables.probe_means(frame[frame["probe"] == probe])
            for sample_type, part in means.groupby("sample_type"):
                style, name = TYPE_STYLE.get(sample_type, (":", sample_type))
                ax.plot(part["x"], part["logp_mean"], linestyle=style, marker="o", markersize=2,
                        color=SET_COLORS.get(train_set, "0.3"), label=rf"$\mathcal{{D}}_{train_set}$, {name}")
            dpo = frame.loc[frame["stage"] == "dpo", "x"]
            if len(dpo) and (frame["stage"] == "sft").any():
                ax.axvline(dpo.min() - 0.5, color="0.7", linewidth=0.6)
        ax.set_title(PROBE_TITLES.get(probe, f"column {probe}"))
        ax.grid(True, color="0.9", linewidth=0.5)
    for ax in axes[:, 0]:
        ax.set_ylabel("mean log-prob per token")
    for ax in axes[-1]:
        ax.set_xlabel("SFT epoch | DPO step (s)")
    for ax in list(axes.flat)[len(probes):]:
        ax.axis("off")
    first = next(iter(series.values()))
    ticks = first.drop_duplicates("x").sort_values("x")
    ticks = ticks[ticks["x"].notna()]
    axes[-1, 0].set_xticks(ticks["x"], [probe_tables.tick_label(lbl) for lbl in ticks["label"]], rotation=45)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(6, len(labels)))
    n_examples = first["example_id"].nunique()
    fig.suptitle(f"Probe responses across SFT then DPO ({n_examples} test examples per checkpoint; "
                 "vertical line: DPO starts)")
    return fig


def plot_tokens(tokens: pd.DataFrame, train_set: str):
    """(a) change heatmaps per response and direction, (b) cumulative y+ - y- per checkpoint."""
    tokens = probe_tables.relabel(tokens[tokens["x"].notna()])  # the DPO base repeats the last SFT epoch
    order = probe_tables.checkpoint_order(tokens)
    start = order[0]
    change = token_dynamics.position_change(tokens, start, order)
    types = [t for t in ("original", "flipped") if t in set(tokens["sample_type"])] or \
        sorted(tokens["sample_type"].unique())
    fig = plt.figure(figsize=(4.0 * len(types) + 4.2, 5.6), layout="constrained")
    grid = fig.add_gridspec(2, len(types) + 1)
    limit = probe_tables.finite_range(change.values())
    image = None
    for j, sample_type in enumerate(types):
        for i, response in enumerate(("chosen", "rejected")):
            ax = fig.add_subplot(grid[i, j])
            matrix = change.get((sample_type, response))
            if matrix is None:
                ax.axis("off")
                continue
            image = ax.imshow(matrix, aspect="auto", interpolation="nearest",
                              cmap=plt.get_cmap("RdBu").with_extremes(bad="0.85"),
                              norm=CenteredNorm(vcenter=0.0, halfrange=limit))
            ax.set_yticks(range(len(order)), [f"{lbl.split(':')[0]} {probe_tables.tick_label(lbl)}" for lbl in order],
                          fontsize=5)
            ax.set_title(f"{'$y^+$' if response == 'chosen' else '$y^-$'}, {TYPE_NAMES.get(sample_type, sample_type)}")
            ax.set_xlabel("response token position")
    if image is not None:
        fig.colorbar(image, ax=fig.axes, label=f"mean change of log p(token) from {start}", shrink=0.8,
                     location="left")
    curve = token_dynamics.cumulative_preference(tokens)
    colors = plt.get_cmap("viridis")(np.linspace(0, 1, len(order)))
    for i, sample_type in enumerate(types[:2]):
        ax = fig.add_subplot(grid[i, len(types)])
        for color, label in zip(colors, order):
            part = curve[(curve["checkpoint"] == label) & (curve["sample_type"] == sample_type)]
            ax.plot(part["position"], part["cumulative_delta"], color=color, linewidth=0.9,
                    label=f"{label.split(':')[0]} {probe_tables.tick_label(label)}")
        ax.axhline(0, color="0.6", linewidth=0.6)
        ax.set_title(f"where the preference forms, {TYPE_NAMES.get(sample_type, sample_type)}")
        ax.set_ylabel(r"cumulative $\log p(y^+_{\leq t}) - \log p(y^-_{\leq t})$")
        ax.set_xlabel("response token position t")
        ax.legend(fontsize=5, ncol=2)
    n_examples = tokens["example_id"].nunique()
    fig.suptitle(rf"Token-level dynamics, $\mathcal{{D}}_{train_set}$ SFT then DPO ({n_examples} test examples, "
                 f"first {int(tokens['logps'].map(len).max())} response tokens)")
    return fig


def token_decoder(tokenizer_path: str | None, results_root: Path):
    """Token id -> string with the scoring tokenizer (else the id as text)."""
    if tokenizer_path is None:
        settings = sorted(results_root.rglob("scoring_settings.json"))
        tokenizer_path = json.loads(settings[0].read_text()).get("base_model") if settings else None
    if tokenizer_path is None or not Path(tokenizer_path).exists():
        print("note: no tokenizer found (--tokenizer): the token table shows ids", file=sys.stderr)
        return str
    from fwdrev.modeling import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_path)
    return lambda token_id: tokenizer.decode([int(token_id)])


def main(argv=None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results_dir", required=True, help="Folder with <set>/<stage>/probes.parquet.")
    parser.add_argument("--output_dir", help="default: RESULTS_DIR/figures")
    parser.add_argument("--tokenizer", default=None, help="Tokenizer for the token table's strings.")
    parser.add_argument("--top_n", type=int, default=15, help="Rising and falling tokens per response.")
    parser.add_argument("--dpi", type=int, default=200)
    args = parser.parse_args(argv)
    root = Path(args.results_dir)
    out = Path(args.output_dir) if args.output_dir else root / "figures"
    probe_files = probe_tables.find_series(root)
    token_files = probe_tables.find_series(root, TOKENS_FILE)
    if not probe_files and not token_files:
        parser.error(f"no <set>/<sft|dpo>/probes.parquet or {TOKENS_FILE} under {root} (run the analysis "
                     "with --probes / --token_positions)")
    written, sentences = [], []
    with figures.paper_style():
        if probe_files:
            series = {name: probe_tables.read_series(paths) for name, paths in sorted(probe_files.items())}
            fig = plot_probe_means(series)
            written += figures.save_figure(fig, out / "probes", formats=("png", "pdf"), dpi=args.dpi)
            plt.close(fig)
            sentences += [probe_tables.describe_shift(name, probe_tables.dpo_shift(frame))
                          for name, frame in series.items()]
        decode = token_decoder(args.tokenizer, root) if token_files else None
        for name, paths in sorted(token_files.items()):
            tokens = probe_tables.relabel(probe_tables.read_series(paths))
            fig = plot_tokens(tokens, name)
            written += figures.save_figure(fig, out / f"tokens_{name}", formats=("png", "pdf"), dpi=args.dpi)
            plt.close(fig)
            order = probe_tables.checkpoint_order(tokens)
            table = token_dynamics.top_moving_tokens(tokens, order[0], order[-1], decode, args.top_n)
            write_table(table, out / f"top_tokens_{name}.csv")
            written.append(out / f"top_tokens_{name}.csv")
    for path in written:
        print(path)
    for sentence in sentences:
        print(sentence)
    return written


if __name__ == "__main__":
    main()
