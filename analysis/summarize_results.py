"""Print the study's summary table from analysis outputs (and save it as CSV).

Per train set (D_f, D_r, D_m), stage and epoch, for the test sets T_f (forward questions) and
T_r (reverse questions): mean per-token log-prob of y+ (the trace whose direction matches the
question) and y- (the opposite direction) over the first K response tokens, delta = y+ - y-
with its 95% CI, and two preference accuracies (share of test examples with delta > 0): by
the first K response tokens (acc first-K) and by the whole response (acc full).

The CI is a percentile bootstrap over problems: a problem's original and flipped row score the
same two traces with the roles swapped, so they are drawn together (the tables' ``group_id``
column).

    python analysis/summarize_results.py --results_dir outputs/quickstart/analysis
"""

import argparse
import os

from fwdrev.cli import run_cli
from fwdrev.errors import UsageError
from fwdrev.io import write_table
from fwdrev.result_tables import summary_table

NAMES = {"f": "D_f", "r": "D_r", "m": "D_m"}


def format_summary(summary, test_sets=("f", "r")) -> str:
    """Markdown table: one row per train set / stage / epoch, columns per test set."""
    header = ["train", "stage", "epoch"]
    for test_set in test_sets:
        t = f"T_{test_set}"
        header += [f"{t} y+", f"{t} y-", f"{t} delta [95% CI]", f"{t} acc first-K", f"{t} acc full"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    keys = ["train_set", "stage", "epoch"]
    for (train_set, stage, epoch), group in summary.groupby(keys, sort=False):
        cells = [NAMES.get(train_set, train_set), stage, str(epoch)]
        by_test = group.set_index("test_set")
        for test_set in test_sets:
            if test_set in by_test.index:
                row = by_test.loc[test_set]
                cells += [f"{row.y_plus:.3f}", f"{row.y_minus:.3f}",
                          f"{row.delta:+.3f} [{row.delta_ci_low:+.3f}, {row.delta_ci_high:+.3f}]",
                          f"{row.pref_acc_first_k:.2f}", f"{row.pref_acc_full:.2f}"]
            else:
                cells += ["-"] * 5
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results_dir", required=True, help="RESULTS/<train_set>/<stage>/all.* layout.")
    parser.add_argument("--metric", default="logp_mean_first_k",
                        help="Column suffix: logp_mean_first_k (paper), logp_mean, logp_sum, ...")
    parser.add_argument("--output_csv", default=None, help="Default: RESULTS_DIR/summary.csv")
    args = parser.parse_args(argv)
    try:
        summary = summary_table(args.results_dir, metric=args.metric)
    except (KeyError, ValueError) as error:
        raise UsageError(str(error)) from None
    if summary.empty:
        raise UsageError(f"no analysis tables under {args.results_dir}")
    order = {"f": 0, "r": 1, "m": 2}
    summary = summary.sort_values(["train_set", "stage", "epoch"],
                                  key=lambda c: c.map(order) if c.name == "train_set" else
                                  c.map({"sft": 0, "dpo": 1}) if c.name == "stage" else c)
    write_table(summary, args.output_csv or os.path.join(args.results_dir, "summary.csv"))
    print(format_summary(summary))


if __name__ == "__main__":
    run_cli(main)
