"""Summary table with cluster-bootstrap CIs, CI bands in the figures, and the y+/y- wording."""

import re
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from helpers import PAPER_CSV, REPO_ROOT, assert_mentions, load_script  # noqa: E402

from fwdrev import paper_figure, result_tables  # noqa: E402
from fwdrev.errors import UsageError  # noqa: E402

summarize_results = load_script("analysis", "summarize_results")
paper_script = load_script("visualization", "plot_with_wider_middle")
dynamics_script = load_script("visualization", "visualize_training_dynamics")


def paired_table(epochs=(1, 2)) -> pd.DataFrame:
    """Two problems, each an original row (delta 1 or 3) and a flipped row (minus that)."""
    rows = []
    for epoch in epochs:
        for example_id, (sample_type, delta, problem) in enumerate(
                [("original", 1.0, 0), ("original", 3.0, 1), ("flipped", -1.0, 0), ("flipped", -3.0, 1)]):
            row = {"checkpoint": str(epoch), "stage": "sft", "epoch": epoch, "example_id": example_id,
                   "sample_type": sample_type, "scoring": "response", "group_id": problem}
            for name in ("logp_mean_first_k", "logp_mean", "logp_max"):
                # one row flips over the whole response
                full_sign = -1 if (name == "logp_mean" and example_id == 0) else 1
                row[f"chosen_{name}"], row[f"rejected_{name}"] = -1.0, -1.0 - full_sign * delta
                row[f"delta_{name}"] = full_sign * delta
            rows.append(row)
    return pd.DataFrame(rows)


@pytest.fixture()
def results_dir(tmp_path):
    folder = tmp_path / "res" / "f" / "sft"
    folder.mkdir(parents=True)
    paired_table().to_csv(folder / "all.csv", index=False)
    return tmp_path / "res"


def test_summary_table_ci_resamples_problems(results_dir):
    summary = result_tables.summary_table(results_dir).query("epoch == 1").set_index("test_set")
    # T_m: every problem's two deltas cancel, so every resample of problems has mean 0.
    assert summary.loc["m", ["delta", "delta_ci_low", "delta_ci_high"]].tolist() == [0.0, 0.0, 0.0]
    # T_f: deltas 1 and 3 of two problems; resamples give 1 (1/4), 2 (1/2), 3 (1/4).
    assert summary.loc["f", ["delta", "delta_ci_low", "delta_ci_high"]].tolist() == [2.0, 1.0, 3.0]
    assert summary.loc["r", ["delta_ci_low", "delta_ci_high"]].tolist() == [-3.0, -1.0]
    assert summary.loc["m", ["n_examples", "n_problems"]].tolist() == [4, 2]
    # first-K deltas: T_f both > 0; whole response: row 0 is negative
    assert summary.loc["f", ["pref_acc_first_k", "pref_acc_full"]].tolist() == [1.0, 0.5]


def test_summarize_results_prints_cis_and_both_accuracies(results_dir, capsys):
    summarize_results.main(["--results_dir", str(results_dir)])
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    assert "T_f delta [95% CI]" in header and "T_f acc first-K" in header and "T_f acc full" in header
    assert "| D_f | sft | 1 | -1.000 | -3.000 | +2.000 [+1.000, +3.000] | 1.00 | 0.50 |" in out
    saved = pd.read_csv(results_dir / "summary.csv")
    assert {"delta_ci_low", "delta_ci_high", "pref_acc_first_k", "pref_acc_full"} <= set(saved.columns)
    assert "pref_acc" not in saved.columns


def test_summarize_results_needs_a_problem_key(results_dir):
    table = paired_table().drop(columns="group_id")  # not written by the analysis scripts
    table.to_csv(results_dir / "f" / "sft" / "all.csv", index=False)
    script = [sys.executable, str(REPO_ROOT / "analysis" / "summarize_results.py"), "--results_dir", str(results_dir)]
    proc = subprocess.run(script, capture_output=True, text=True)
    assert proc.returncode == 2
    assert_mentions(proc.stderr, "f/sft/all.csv", "'group_id'")
    assert "Traceback" not in proc.stderr


def test_paper_figure_draws_ci_bands_from_the_results(results_dir):
    series = result_tables.series_from_results_dir(results_dir, ci=True)
    result = paper_figure.plot_paper_figure(series, ci=True)
    ff_color = matplotlib.colors.to_rgb(paper_figure.DEFAULT_COLORS["ff"])
    bands = [c for c in result.axes[2].collections if tuple(c.get_facecolor()[0][:3]) == pytest.approx(ff_color)]
    assert len(bands) == 1  # the D_f T_f deltas' band, in that line's colour
    ys = bands[0].get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx(1.0) and ys.max() == pytest.approx(3.0)  # T_f CI [1, 3] at both epochs
    plt.close(result.fig)
    with pytest.raises(ValueError, match="ci_low"):
        paper_figure.plot_paper_figure(result_tables.load_paper_values(PAPER_CSV), ci=True)


def test_paper_cli_ci_flag(results_dir, tmp_path):
    stem = tmp_path / "fig"
    paper_script.main(["--results_dir", str(results_dir), "--ci", "--output_stem", str(stem), "--dpi", "60"])
    assert "95\\% confidence intervals" in (tmp_path / "fig.tex").read_text()
    with pytest.raises(SystemExit) as stop:
        paper_script.parse_args(["--paper", "--ci"])
    assert stop.value.code == 2


def test_dynamics_figure_ci_bands(results_dir, tmp_path):
    fig = dynamics_script.plot_table(paired_table(), "t", ci=True)
    delta_ax = fig.axes[3]  # peak deltas: delta_logp_max, exactly anti-correlated within each problem
    # one band per delta line, drawn with it: pair them in drawing order with the lines' legend texts
    lines = [ln.get_label() for ln in delta_ax.lines if not ln.get_label().startswith("_")]
    bands = {label: c.get_paths()[0].vertices[:, 1] for label, c in zip(lines, delta_ax.collections)}
    assert len(bands) == len(delta_ax.collections) == 3
    assert np.allclose(bands[r"$\Delta$ all"], 0.0)  # paired rows cancel: zero width, unlike a row bootstrap
    forward = bands[r"$\Delta$ $\mathcal{T}_f$"]
    assert forward.min() == pytest.approx(1.0) and forward.max() == pytest.approx(3.0)
    plt.close(fig)
    old = results_dir / "r" / "sft"
    old.mkdir(parents=True)
    paired_table().drop(columns="group_id").to_csv(old / "all.csv", index=False)
    flags = ["--results_dir", str(results_dir), "--output_dir", str(tmp_path / "o"), "--dpi", "50"]
    with pytest.raises(UsageError, match="r/sft/all.csv: no group_id column"):  # run_cli: exit 2
        dynamics_script.main(flags + ["--ci"])
    assert len(dynamics_script.main(flags)) == 4  # without --ci the table needs no problem key


WRONG_Y_PLUS = re.compile(r"preferred forward|the forward (reasoning )?trace|forward \(y\+\)|`text`, the forward",
                          re.IGNORECASE)


@pytest.mark.parametrize("path", ["README.md", "analysis/README.md", "visualization/README.md",
                                  *sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "docs").glob("*.md")),
                                  "fwdrev/result_tables.py", "fwdrev/paper_figure.py",
                                  "visualization/plot_with_wider_middle.py",
                                  "analysis/summarize_results.py", "dpo/combined_dpo.py"])
def test_y_plus_is_the_trace_matching_the_question_not_the_forward_trace(path):
    # On flipped rows y+ is the reverse trace: calling y+ "the forward trace" is wrong there.
    text = (REPO_ROOT / path).read_text()
    assert not WRONG_Y_PLUS.search(text), WRONG_Y_PLUS.search(text).group()


def test_caption_names_y_plus_by_the_question_direction():
    caption = paper_script.CAPTION
    assert "$y^+$, the trace whose direction matches the question" in caption
    assert "$y^-$, the trace in the opposite direction" in caption
