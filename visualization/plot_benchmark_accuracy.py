"""Benchmark accuracy over checkpoint series, with 95% bootstrap CIs, in the paper's style.

    python visualization/plot_benchmark_accuracy.py --results_dirs outputs/benchmarks/sft_f \\
        outputs/benchmarks/sft_r --output_stem outputs/figures/benchmark_accuracy

Each results dir is an OUTPUT_DIR of ``analysis/evaluate_benchmarks.py --checkpoint_dir ...``
(its accuracy.csv). A panel per benchmark, a line per training run (x: SFT epoch or DPO step).
Writes STEM.png/.pdf/.svg and prints the paths.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: files only
import pandas as pd  # noqa: E402

from fwdrev import figures  # noqa: E402
from fwdrev.cli import UsageError, run_cli  # noqa: E402
from fwdrev.evaluation.figure import plot_series, series_points  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results_dirs", nargs="+", required=True)
    parser.add_argument("--output_stem", default="./outputs/figures/benchmark_accuracy")
    parser.add_argument("--usetex", action="store_true")
    args = parser.parse_args(argv)
    frames = []
    for folder in args.results_dirs:
        path = Path(folder) / "accuracy.csv"
        if not path.is_file():
            raise UsageError(f"{path} not found: run analysis/evaluate_benchmarks.py --output_dir {folder} first")
        frames.append(series_points(pd.read_csv(path, dtype={"checkpoint": str}), str(path)))
    with figures.paper_style(args.usetex):
        points = pd.concat(frames, ignore_index=True)
        order = list(dict.fromkeys(b for frame in frames for b in frame["benchmark"].cat.categories))
        points["benchmark"] = pd.Categorical(points["benchmark"].astype(str), categories=order, ordered=True)
        paths = figures.save_figure(plot_series(points), args.output_stem)
    print("\n".join(str(p) for p in paths))


if __name__ == "__main__":
    run_cli(main)
