"""Three-panel paper figure: SFT log-probs, the mixed SFT->DPO run, gaps on a wider-middle scale.

Examples (from the repository root):

    python visualization/plot_with_wider_middle.py --paper
    python visualization/plot_with_wider_middle.py --results_dir outputs/analysis \
        --output_stem outputs/figures/ours
    python visualization/plot_with_wider_middle.py --series_csv my_series.csv --focus 0.05 0.1 --share 0.3

Writes <stem>.png (400 dpi), <stem>.pdf, <stem>.svg and <stem>.tex (a figure* snippet).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: files only
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from fwdrev import figures, result_tables  # noqa: E402
from fwdrev.cli import run_cli  # noqa: E402
from fwdrev.errors import UsageError  # noqa: E402
from fwdrev.paper_figure import plot_paper_figure  # noqa: E402

CAPTION = (
    r"Mean per-token log-probability (first 1k tokens) of $y^+$, the trace whose direction matches "
    r"the question (forward for a forward question, reverse for a reverse one), and $y^-$, the trace "
    r"in the opposite direction. (a) SFT on forward ($\mathcal{D}_f$) or reverse ($\mathcal{D}_r$) data, "
    r"tested in-domain. (b) Mixed data $\mathcal{D}_m$ through SFT (solid) and DPO (dashed); the shaded "
    r"band marks where $y^+$ and $y^-$ separate. (c) Gap $\Delta = y^+ - y^-$ on a scale that widens "
    r"the shaded band."
)
CI_CAPTION = (r" Bands in (c): 95\% confidence intervals of the mean $\Delta$, from a bootstrap over "
              r"problems (a problem's forward and reverse rows are drawn together).")
DERIVED_CAPTION = r" Open grey markers: values derived as $y^+ - y^-$, not published."


PAPER_CSV = Path(__file__).resolve().parent / "paper_figure_values.csv"  # values of Deng et al.'s figure
PAPER_SCORING = "original"  # the published values came from the original analysis's scoring


def _pair(text: str, what: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise argparse.ArgumentTypeError(f"{what} must look like KEY=VALUE, got {text!r}")
    return key, value


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--paper", action="store_true",
                     help="published values (visualization/paper_figure_values.csv)")
    src.add_argument("--series_csv", help="tidy CSV: train_set,test_set,stage,epoch,series,value")
    src.add_argument("--results_dir", help="analysis outputs: DIR/<f|r|m>/<sft|dpo>/<subset>.csv|parquet")
    p.add_argument("--subset", default="all", help="table name under --results_dir (all, first50, last50)")
    p.add_argument("--metric", default="logp_mean_first_k", help="analysis column suffix for y+/y-/delta")
    p.add_argument("--ci", action="store_true",
                   help="with --results_dir: draw the deltas' 95%% CIs (bootstrap over problems) as "
                        "bands in panel (c)")
    p.add_argument("--focus", nargs=2, type=float, metavar=("A", "B"), help="focus interval of panel (c)")
    p.add_argument("--share", type=float, default=None,
                   help="share of panel (c)'s axis given to the focus (default 0.25, or up to 0.75 "
                        "so that a wide focus is still widened 1.5x)")
    p.add_argument("--ylim_a", nargs=2, type=float, metavar=("LO", "HI"))
    p.add_argument("--ylim_b", nargs=2, type=float, metavar=("LO", "HI"))
    p.add_argument("--ylim_c", nargs=2, type=float, metavar=("VMIN", "VMAX"),
                   help="ends of the wider-middle scale")
    p.add_argument("--key_band", nargs=2, type=float, metavar=("LO", "HI"), help="shaded band of panel (b)")
    p.add_argument("--figsize", nargs=2, type=float, default=(7.2, 2.9), metavar=("W", "H"), help="inches")
    p.add_argument("--colors", nargs="*", default=[], metavar="PAIR=COLOR",
                   help="e.g. ff=#1f5fa8 mm=C1 (pairs: ff rr fr rf mm = train+test set)")
    p.add_argument("--markers", nargs="*", default=[], metavar="SERIES=MARKER", help="e.g. y+=o y-=v delta=s")
    p.add_argument("--output_stem", default="outputs/figures/wider_middle")
    p.add_argument("--dpi", type=int, default=400)
    p.add_argument("--usetex", action="store_true",
                   help="render text with LaTeX (mathtext, with a warning, when no LaTeX is installed)")
    p.add_argument("--label", default="fig:wider_middle", help=r"\label of the .tex snippet")
    p.add_argument("--allow_mixed_scoring", action="store_true",
                   help="plot inputs scored with different --scoring definitions together "
                        "(refused by default: their log-probs are not comparable)")
    args = p.parse_args(argv)
    if args.ci and not args.results_dir:
        p.error("--ci needs --results_dir (the published values have no confidence intervals)")
    try:
        args.colors = dict(_pair(t, "--colors") for t in args.colors)
        args.markers = dict(_pair(t, "--markers") for t in args.markers)
    except argparse.ArgumentTypeError as err:
        p.error(str(err))
    if args.usetex and not (shutil.which("latex") and shutil.which("dvipng")):
        print("warning: --usetex: 'latex' and 'dvipng' are not both on PATH; using matplotlib's "
              "mathtext instead", file=sys.stderr)
        args.usetex = False
    return args


def load_series(args):
    if args.paper:
        print(f"values: {PAPER_CSV} ({result_tables.PAPER_CITATION})")
        return result_tables.load_paper_values(PAPER_CSV)
    if args.series_csv:
        return result_tables.read_series_csv(args.series_csv)
    return result_tables.series_from_results_dir(args.results_dir, metric=args.metric, subset=args.subset,
                                                 ci=args.ci)


def input_scorings(args) -> dict[str, set[str]]:
    """Each input of the figure -> the --scoring(s) its log-probs were computed with."""
    if args.paper:
        return {"published values (--paper)": {PAPER_SCORING}}
    if args.series_csv:
        if "scoring" not in pd.read_csv(args.series_csv, nrows=0).columns:
            return {}  # a tidy CSV need not say
        return {args.series_csv: set(pd.read_csv(args.series_csv)["scoring"].dropna().astype(str))}
    scorings = {}
    for train_set in result_tables.SETS:
        for stage in result_tables.STAGES:
            path = result_tables.find_stage_table(args.results_dir, train_set, stage, args.subset)
            if path is None:
                continue
            if "scoring" not in result_tables.table_columns(path):
                raise UsageError(f"{path}: no 'scoring' column (the analysis scripts write it): rescore "
                                 "it with analysis/analyze_training_dynamics.py")
            values = result_tables.read_result_table(path, ["scoring"])["scoring"].dropna().astype(str)
            scorings[str(path)] = set(values)
    return scorings


def check_scorings(scorings: dict[str, set[str]], allow_mixed: bool) -> str | None:
    """The scoring of all inputs; mixed scorings stop the run (exit 2) unless allowed."""
    every = sorted(set().union(*scorings.values()))
    if len(every) > 1 and not allow_mixed:
        listing = "; ".join(f"{source}: {', '.join(sorted(values))}" for source, values in scorings.items())
        raise UsageError(f"the inputs mix log-prob scorings ({listing}); values of different scorings "
                         "are not comparable: rescore with one --scoring, or pass --allow_mixed_scoring")
    return "+".join(every) or None


def main(argv=None) -> list:
    args = parse_args(argv)
    scoring = check_scorings(input_scorings(args), args.allow_mixed_scoring)
    if scoring:
        print(f"scoring: {scoring}")
    try:
        series = load_series(args)
    except ValueError as err:  # e.g. --ci on tables without a problem key
        raise UsageError(str(err)) from None
    if series.empty:
        raise UsageError("no values to plot (check the input and --subset)")
    with figures.paper_style(usetex=args.usetex):
        try:
            result = plot_paper_figure(
                series, focus=args.focus, share=args.share, ylim_a=args.ylim_a, ylim_b=args.ylim_b,
                ylim_c=args.ylim_c, key_band=args.key_band, figsize=tuple(args.figsize),
                colors=args.colors, markers=args.markers, ci=args.ci,
            )
        except ValueError as err:  # e.g. a focus outside --ylim_c, an unknown colour
            raise UsageError(str(err)) from None
        paths = figures.save_figure(result.fig, args.output_stem, dpi=args.dpi)
    plt.close(result.fig)
    caption = (CAPTION + (CI_CAPTION if args.ci else "") + (DERIVED_CAPTION if result.settings.get("derived") else "")
               + (r" Values published by Deng et al.\ (arXiv:2509.13079)." if args.paper else ""))
    if scoring:
        caption += rf" Log-probs scored with \texttt{{--scoring {scoring}}}."
    paths.append(figures.write_tex_snippet(args.output_stem, caption, args.label))
    for note in result.notes:
        print(f"note: {note}")
    for path in paths:
        print(path)
    return paths


if __name__ == "__main__":
    run_cli(main)
