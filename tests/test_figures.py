"""Figure data (tidy series, summaries) and the two visualization scripts."""

import importlib.util
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from helpers import PAPER_CSV  # noqa: E402

from fwdrev import dynamics_tables, paper_figure, result_tables  # noqa: E402
from fwdrev.figures import paper_style, series_label  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAPER_SCRIPT = ROOT / "visualization" / "plot_with_wider_middle.py"
DYN_SCRIPT = ROOT / "visualization" / "visualize_training_dynamics.py"
METRICS = ("logp_sum", "logp_mean", "logp_max", "logp_sum_first_k", "logp_mean_first_k", "logp_max_first_k")


def _load_script(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def analysis_table(stage, n_checkpoints, n_examples=4, shared_ids=False, seed=0):
    """Long table: one row per (checkpoint, example); half forward ("original"), half reverse."""
    rng = np.random.default_rng(seed)
    rows = []
    for epoch in range(1, n_checkpoints + 1):
        checkpoint = str(epoch) if stage == "sft" else f"checkpoint-{10 * epoch}"
        for i in range(n_examples):
            sample_type = "original" if i < n_examples // 2 else "flipped"
            example_id = i % (n_examples // 2) if shared_ids else i
            row = {"checkpoint": checkpoint, "stage": stage, "epoch": epoch,
                   "step": 10 * epoch if stage == "dpo" else None,
                   "example_id": example_id, "sample_type": sample_type, "scoring": "response",
                   "group_id": i % (n_examples // 2)}  # problem k: rows k (original) and n/2 + k (flipped)
            for metric in METRICS:
                chosen = -1.0 + 0.1 * epoch + rng.normal(0, 0.05)
                rejected = -1.2 + (0.05 if sample_type == "flipped" else -0.05) * epoch + rng.normal(0, 0.05)
                row[f"chosen_{metric}"], row[f"rejected_{metric}"] = chosen, rejected
                row[f"delta_{metric}"] = chosen - rejected
            for side in ("chosen", "rejected"):
                row[f"{side}_num_tokens"] = row[f"{side}_num_tokens_first_k"] = 100
            rows.append(row)
    return pd.DataFrame(rows)


def make_results_dir(root, dpo=True):
    """RESULTS_DIR/<f|r|m>/<sft|dpo>/all.csv (+ parquet copy and a first50 subset for m/sft)."""
    tables = {}
    for k, train_set in enumerate(("f", "r", "m")):
        stages = [("sft", 3)] + ([("dpo", 2)] if dpo and train_set == "m" else [])
        for stage, n in stages:
            table = analysis_table(stage, n, seed=k * 10 + n)
            folder = Path(root) / train_set / stage
            folder.mkdir(parents=True, exist_ok=True)
            table.to_csv(folder / "all.csv", index=False)
            tables[train_set, stage] = table
    tables["m", "sft"].to_parquet(Path(root) / "m" / "sft" / "all.parquet")
    tables["m", "sft"][tables["m", "sft"].example_id < 3].to_csv(Path(root) / "m" / "sft" / "first50.csv", index=False)
    return tables


def test_series_from_results_dir_matches_means_over_examples(tmp_path):
    tables = make_results_dir(tmp_path)
    series = result_tables.series_from_results_dir(tmp_path)
    assert list(series.columns) == result_tables.TIDY_COLUMNS + ["step", "derived"]
    assert not series["derived"].any()
    steps = series.groupby(["stage", "epoch"])["step"].unique()  # the checkpoints' optimizer steps, SFT none
    assert list(steps["dpo"][1]) == [10] and list(steps["dpo"][2]) == [20] and np.isnan(steps["sft"][1]).all()
    assert set(series.stage[series.train_set == "m"]) == {"sft", "dpo"}
    assert set(series.stage[series.train_set == "f"]) == {"sft"}
    table = tables["m", "dpo"]
    flipped = table[(table.sample_type == "flipped") & (table.epoch == 2)]
    get = lambda test, name: series.query(  # noqa: E731
        "train_set == 'm' and stage == 'dpo' and epoch == 2 and test_set == @test and series == @name")["value"].item()
    assert get("r", "y+") == pytest.approx(flipped.chosen_logp_mean_first_k.mean())
    assert get("r", "y-") == pytest.approx(flipped.rejected_logp_mean_first_k.mean())
    assert get("m", "delta") == pytest.approx(table[table.epoch == 2].delta_logp_mean_first_k.mean())
    # 3 train sets x 3 test sets x 3 series x 3 SFT epochs + m/dpo: 3 test sets x 3 series x 2
    assert len(series) == 81 + 18


def test_summary_table_preference_accuracy(tmp_path):
    make_results_dir(tmp_path)
    table = pd.read_csv(tmp_path / "f" / "sft" / "all.csv")
    table.loc[table.epoch == 1, "delta_logp_mean_first_k"] = [0.5, -0.1, 0.2, np.nan]
    table.to_csv(tmp_path / "f" / "sft" / "all.csv", index=False)
    summary = result_tables.summary_table(tmp_path)
    row = summary.query("train_set == 'f' and stage == 'sft' and epoch == 1")
    assert row.set_index("test_set")["pref_acc_first_k"].to_dict() == pytest.approx({"f": 0.5, "r": 1.0, "m": 2 / 3})
    full = table[table.epoch == 1].delta_logp_mean.to_numpy()  # whole-response deltas, not the first-K ones
    assert row.set_index("test_set").loc["m", "pref_acc_full"] == pytest.approx(np.mean(full > 0))
    assert row.set_index("test_set")["n_examples"].to_dict() == {"f": 2, "r": 2, "m": 4}
    assert row.set_index("test_set").loc["m", "checkpoint"] == "1"
    first50 = result_tables.summary_table(tmp_path, subset="first50")
    assert set(first50.train_set) == {"m"} and first50.n_examples.max() == 3


def test_complete_deltas_fills_only_missing_points():
    series = pd.DataFrame({
        "train_set": ["m"] * 5, "test_set": ["m"] * 5, "stage": ["dpo"] * 5, "epoch": [1, 1, 1, 2, 2],
        "series": ["y+", "y-", "delta", "y+", "y-"], "value": [-0.3, -0.4, 0.123, -0.2, -0.5]})
    done = result_tables.complete_deltas(result_tables.validate_series(series))
    deltas = done[done.series == "delta"].set_index("epoch")["value"]
    assert deltas.to_dict() == pytest.approx({1: 0.123, 2: 0.3})


def test_validate_series_rejects_unknown_codes():
    bad = pd.DataFrame({"train_set": ["x"], "test_set": ["f"], "stage": ["sft"], "epoch": [1], "series": ["y+"],
                        "value": [0.0]})
    with pytest.raises(ValueError, match="train_set"):
        result_tables.validate_series(bad)
    with pytest.raises(ValueError, match="lacks columns"):
        result_tables.validate_series(bad.drop(columns="value"))


def _line_label(panel: int, pair: str, stage: str, name: str) -> str:
    """The legend text of a line: panel (a) names pair and series, (b) adds the stage, (c) the stage of mm."""
    if panel == 0:
        return series_label(pair[0], pair[1], name)
    if panel == 1:
        return series_label(pair[0], pair[1], name, stage)
    return series_label(pair[0], pair[1], None, stage if pair == "mm" else None)


def _legend_lines(ax) -> dict:
    """{legend text: (x, y)} for the lines of an Axes that appear in its legend."""
    return {ln.get_label(): (np.asarray(ln.get_xdata(), float), np.asarray(ln.get_ydata(), float))
            for ln in ax.lines if not ln.get_label().startswith("_")}


def _vertical_lines(ax) -> list[float]:
    """x of every vertical rule (such as the SFT/DPO divider) drawn across an Axes."""
    return [float(ln.get_xdata()[0]) for ln in ax.lines
            if len(ln.get_xdata()) == 2 and ln.get_xdata()[0] == ln.get_xdata()[1]
            and ln.get_label().startswith("_")]


# Typed in from the published table (paper_figure_values.csv; Deng et al., arXiv:2509.13079):
# {(pair, stage, series): {epoch: value}}, the first and last point of every plotted line.
PUBLISHED = {
    ("ff", "sft", "y+"): {1: -0.726265809, 6: -0.201142387}, ("ff", "sft", "y-"): {1: -1.048971948, 6: -1.614169914},
    ("rr", "sft", "y+"): {1: -0.764269345, 6: -0.318942272}, ("rr", "sft", "y-"): {1: -1.151226815, 6: -1.561183284},
    ("mm", "sft", "y+"): {1: -0.803001133, 6: -0.339680546}, ("mm", "sft", "y-"): {1: -0.86392633, 6: -0.420635381},
    ("mm", "dpo", "y+"): {1: -0.34, 7: -0.343}, ("mm", "dpo", "y-"): {1: -0.421, 7: -0.436},
    ("ff", "sft", "delta"): {1: 0.32270614, 6: 1.413027527}, ("rr", "sft", "delta"): {1: 0.38695747, 6: 1.242241012},
    ("fr", "sft", "delta"): {1: -0.236767696, 6: -1.36382034},
    ("rf", "sft", "delta"): {1: -0.254559506, 6: -1.012593524},
    ("mm", "sft", "delta"): {1: 0.060925197, 6: 0.080954835}, ("mm", "dpo", "delta"): {1: 0.0811, 6: 0.092},
}


def test_paper_figure_plots_the_published_values():
    with paper_style():
        result = paper_figure.plot_paper_figure(result_tables.load_paper_values(PAPER_CSV))
    ax_a, ax_b, ax_c = result.axes
    n_sft = 6
    panels = [[("ff", "sft", s) for s in ("y+", "y-")] + [("rr", "sft", s) for s in ("y+", "y-")],
              [("mm", st, s) for st in ("sft", "dpo") for s in ("y+", "y-")],
              [(p, "sft", "delta") for p in ("ff", "rr", "fr", "rf", "mm")] + [("mm", "dpo", "delta")]]
    for panel, (ax, keys) in enumerate(zip(result.axes, panels)):
        lines = _legend_lines(ax)
        assert set(lines) == {_line_label(panel, *key) for key in keys}
        for key in keys:
            x, y = lines[_line_label(panel, *key)]
            plotted = dict(zip(x, y))
            for epoch, value in PUBLISHED[key].items():
                offset = n_sft if key[1] == "dpo" else 0
                assert plotted[epoch + offset] == pytest.approx(value), (key, epoch)
    assert r"$\mathcal{D}_m, \mathcal{T}_m, y^+$ (DPO)" in _legend_lines(ax_b)
    # The DPO delta of checkpoint 7 is not published: derived as y+ - y- (-0.343 - -0.436), marked as such
    # by one extra open marker (not in the legend) on that point only.
    x, y = _legend_lines(ax_c)[_line_label(2, "mm", "dpo", "delta")]
    assert dict(zip(x, y))[13] == pytest.approx(0.093)
    markers = [ln for ln in ax_c.lines if ln.get_label().startswith("_") and ln.get_linestyle() == "None"]
    assert [(list(m.get_xdata()), list(m.get_ydata())) for m in markers] == [([13], [pytest.approx(0.093)])]
    assert markers[0].get_markerfacecolor() == "white"
    assert result.settings["derived"] == ["mm dpo delta epoch 7"]
    assert any("mm dpo delta epoch 7" in note for note in result.notes)
    assert result.settings["focus"] == pytest.approx((0.05, 0.1))
    assert result.settings["ylim_c"] == pytest.approx((-1.5, 1.5))
    assert ax_c.get_yscale() == "wider_middle"
    assert _vertical_lines(ax_b) == [n_sft + 0.5]  # one divider between SFT and DPO
    # published checkpoints 1..7 (no steps): DPO ticks continue after epoch 6, labelled by ordinal
    ticks = [t.get_text() for t in ax_b.get_xticklabels()]
    assert ticks == [str(i) for i in range(1, 7)] + [str(k) for k in range(1, 8)]
    assert list(ax_b.get_xticks()) == list(range(1, 14))
    plt.close(result.fig)


def test_paper_csv_marks_the_one_derived_value():
    csv = pd.read_csv(PAPER_CSV)
    assert csv["derived"].dtype == bool
    derived = csv[csv["derived"]]
    assert derived[result_tables.TIDY_COLUMNS].values.tolist() == [["m", "m", "dpo", 7, "delta", 0.093]]
    assert len(csv) == 110 + 1 and csv.duplicated(["train_set", "test_set", "stage", "epoch", "series"]).sum() == 0


def test_paper_csv_published_rows_equal_the_shared_copy(shared_sample_path):
    shared = pd.read_csv(shared_sample_path.parent / "paper_figure_values.csv")  # the published table
    ours = pd.read_csv(PAPER_CSV)
    pd.testing.assert_frame_equal(ours[~ours["derived"]].drop(columns="derived").reset_index(drop=True), shared)


@pytest.mark.parametrize("source", ["paper", "uneven DPO steps"])
def test_paper_figure_layout_has_no_overlaps(source, tmp_path):
    if source == "paper":
        series = result_tables.load_paper_values(PAPER_CSV)
    else:  # DPO steps 49 and 50 sit 1/7 apart: their labels must not overprint
        _uneven_dpo_results(tmp_path)
        series = result_tables.series_from_results_dir(tmp_path)
    with paper_style():
        result = paper_figure.plot_paper_figure(series)
        fig = result.fig
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        main = [ax.get_window_extent() for ax in result.axes]
        for ax in result.axes:
            for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
                boxes = [t.get_window_extent(renderer) for t in labels if t.get_visible() and t.get_text()]
                for i, box in enumerate(boxes):
                    assert not any(box.overlaps(other) for other in boxes[i + 1:]), ax.get_title()
        legends = [a.get_legend() for a in fig.axes if a.get_legend() is not None]
        assert len(legends) == 3
        for legend in legends:
            box = legend.get_window_extent(renderer)
            assert not any(box.overlaps(m) for m in main)
            assert fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1, box.y1)
    plt.close(fig)


def _check_outputs(stem):
    png, pdf, svg, tex = (Path(f"{stem}.{ext}") for ext in ("png", "pdf", "svg", "tex"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 50_000
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 10_000
    assert ET.parse(svg).getroot().tag.endswith("svg") and svg.stat().st_size > 20_000
    text = tex.read_text()
    assert text.startswith(r"\begin{figure*}") and text.rstrip().endswith(r"\end{figure*}")
    assert rf"\includegraphics[width=\textwidth]{{{Path(stem).name}.pdf}}" in text
    assert r"\caption{" in text and r"\label{fig:wider_middle}" in text


def _run(script, *args, cwd=None):
    return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT)


def test_paper_cli_writes_png_pdf_svg_and_tex(tmp_path):
    stem = tmp_path / "nested" / "dir" / "wider_middle"
    proc = _run(PAPER_SCRIPT, "--paper", "--output_stem", stem)
    assert proc.returncode == 0, proc.stderr
    _check_outputs(stem)
    assert str(stem) + ".png" in proc.stdout


def test_results_dir_cli_renders_and_reports_missing_dpo(tmp_path):
    make_results_dir(tmp_path / "res", dpo=False)
    proc = _run(PAPER_SCRIPT, "--results_dir", tmp_path / "res", "--output_stem", tmp_path / "fig",
                "--share", "0.3", "--dpi", "150")
    assert proc.returncode == 0, proc.stderr
    _check_outputs(tmp_path / "fig")
    notes = [line for line in proc.stdout.splitlines() if line.startswith("note:")]
    assert any("mm dpo y+" in n for n in notes) and any("mm dpo delta" in n for n in notes)  # the missing run is named


def test_paper_figure_without_dpo_has_no_divider_and_uses_given_options():
    series = result_tables.load_paper_values(PAPER_CSV).query("stage == 'sft'")
    result = paper_figure.plot_paper_figure(series, focus=(0.0, 0.2), share=0.4, ylim_c=(-2, 2),
                                            colors={"ff": "#000000"})
    ax_a, ax_b, ax_c = result.axes
    assert _vertical_lines(ax_b) == []  # no DPO: no divider
    assert result.settings["focus"] == (0.0, 0.2) and ax_c.get_ylim() == pytest.approx((-2, 2))
    y_plus = next(ln for ln in ax_a.lines if ln.get_label() == _line_label(0, "ff", "sft", "y+"))
    assert matplotlib.colors.to_hex(y_plus.get_color()) == "#000000"
    assert not any("(DPO)" in label for label in _legend_lines(ax_b))
    assert any("mm dpo" in note for note in result.notes)
    plt.close(result.fig)


def _tidy(deltas: dict, y_plus: float = -1.0) -> pd.DataFrame:
    """Tidy series from {(train, test, stage): [delta per epoch from first_epoch]}; y- = y+ - delta."""
    rows = []
    for (train, test, stage, first_epoch), values in deltas.items():
        for epoch, delta in enumerate(values, start=first_epoch):
            rows += [(train, test, stage, epoch, "y+", y_plus), (train, test, stage, epoch, "y-", y_plus - delta)]
    return pd.DataFrame(rows, columns=result_tables.TIDY_COLUMNS)


def test_default_share_widens_even_a_wide_focus_band():
    # Mixed deltas spread over half the range (as in the quickstart): a fixed 25% share would
    # squeeze that band instead of widening it.
    series = _tidy({("f", "f", "sft", 1): [0.6, 1.0, 1.3], ("r", "f", "sft", 1): [-0.6, -1.0, -1.4],
                    ("m", "m", "sft", 1): [0.0, 0.1, 0.2], ("m", "m", "dpo", 1): [0.4, 0.6, 0.8]})
    result = paper_figure.plot_paper_figure(series)
    (a, b), (vmin, vmax) = result.settings["focus"], result.settings["ylim_c"]
    assert a <= 0.0 and b >= 0.8 and b - a <= 1.3 * 1.3 * 0.8  # around the D_m deltas, not coarsely rounded
    assert result.settings["share"] >= 1.5 * (b - a) / (vmax - vmin)
    assert _axis_share(result.axes[2], a, b) == pytest.approx(result.settings["share"])  # as drawn
    plt.close(result.fig)
    squeezed = paper_figure.plot_paper_figure(series, share=0.25)  # asked for: kept, and said
    a, b = squeezed.settings["focus"]
    assert squeezed.settings["share"] == 0.25 and _axis_share(squeezed.axes[2], a, b) == pytest.approx(0.25)
    assert any("25%" in note and "compressed" in note for note in squeezed.notes)
    plt.close(squeezed.fig)
    only_mixed = paper_figure.plot_paper_figure(_tidy({("m", "m", "sft", 1): [0.0, 0.4, 0.8]}))  # band = range
    assert only_mixed.settings["share"] == 0.75
    assert any("--focus" in note for note in only_mixed.notes)  # cannot widen it: says what to change
    plt.close(only_mixed.fig)


def _axis_share(ax, low: float, high: float) -> float:
    """Fraction of the axis height that the data range [low, high] takes on screen."""
    to_axes = ax.transData + ax.transAxes.inverted()
    (_, y0), (_, y1) = to_axes.transform([(0, low), (0, high)])
    return y1 - y0


def test_base_model_epoch_0_is_drawn_inside_every_panel():
    series = _tidy({("f", "f", "sft", 0): [0.0, 0.6, 1.0], ("r", "r", "sft", 0): [0.0, 0.6, 1.1],
                    ("m", "m", "sft", 0): [0.0, 0.05, 0.07], ("m", "m", "dpo", 1): [0.08, 0.09]})
    result = paper_figure.plot_paper_figure(series)
    for ax in result.axes:
        low, high = ax.get_xlim()
        positions = np.concatenate([x for x, _ in _legend_lines(ax).values()])
        assert low < positions.min() == 0 and positions.max() < high
        assert [t.get_text() for t in ax.get_xticklabels()][:3] == ["0", "1", "2"]
    x, _ = _legend_lines(result.axes[2])[_line_label(2, "mm", "dpo", "delta")]
    assert list(x) == [3, 4]  # DPO checkpoints continue after the last SFT epoch (2)
    plt.close(result.fig)


def test_series_csv_cli_computes_missing_delta(tmp_path):
    rows = result_tables.load_paper_values(PAPER_CSV).query("series != 'delta'")
    rows.to_csv(tmp_path / "series.csv", index=False)
    proc = _run(PAPER_SCRIPT, "--series_csv", tmp_path / "series.csv", "--output_stem", tmp_path / "s",
                "--colors", "mm=#123456", "--markers", "y+=D", "--dpi", "150")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "s.png").stat().st_size > 50_000


def test_cli_rejects_bad_input(tmp_path):
    assert _run(PAPER_SCRIPT).returncode == 2  # no input
    assert _run(PAPER_SCRIPT, "--paper", "--results_dir", tmp_path).returncode == 2  # two inputs
    proc = _run(PAPER_SCRIPT, "--paper", "--colors", "mm", "--output_stem", tmp_path / "x")
    assert proc.returncode == 2 and "KEY=VALUE" in proc.stderr


@pytest.mark.skipif(shutil.which("latex") is not None, reason="LaTeX is installed here")
def test_usetex_without_latex_falls_back_to_mathtext_with_a_warning(tmp_path):
    proc = _run(PAPER_SCRIPT, "--paper", "--usetex", "--dpi", "100", "--output_stem", tmp_path / "x")
    assert proc.returncode == 0, proc.stderr
    assert "warning: --usetex" in proc.stderr and "mathtext" in proc.stderr
    assert (tmp_path / "x.pdf").read_bytes()[:5] == b"%PDF-"


# ---------------------------------------------------------------- training dynamics
def test_find_analysis_tables_dedupes_and_skips_other_csvs(tmp_path):
    make_results_dir(tmp_path)
    pd.DataFrame({"a": [1]}).to_csv(tmp_path / "notes.csv", index=False)
    found = [p.relative_to(tmp_path).as_posix() for p in dynamics_tables.find_analysis_tables(tmp_path)]
    assert found == ["f/sft/all.csv", "m/dpo/all.csv", "m/sft/all.parquet", "m/sft/first50.csv", "r/sft/all.csv"]


def test_heatmap_has_one_row_per_example_and_one_column_per_checkpoint():
    dyn = _load_script(DYN_SCRIPT)
    table = analysis_table("dpo", 12, n_examples=6)
    table["checkpoint"] = table["checkpoint"].astype(str)
    fig = dyn.plot_table(table.sample(frac=1, random_state=0), "m/dpo/all.csv")  # row order must not matter
    image = next(a for a in fig.axes if a.images).images[0]
    assert image.get_array().shape == (6, 12)
    # row i = example i (ids 0-2 original, 3-5 flipped), column j = checkpoint-{10 (j + 1)}
    expected = np.array([[table.loc[(table["example_id"] == i) & (table["epoch"] == epoch), "delta_logp_mean"].item()
                          for epoch in range(1, 13)] for i in range(6)])
    assert np.allclose(image.get_array(), expected)
    assert image.norm.vcenter == 0
    assert fig.get_suptitle() == "m/dpo/all.csv"
    plt.close(fig)


def test_heatmap_keeps_forward_and_reverse_rows_apart_when_ids_repeat():
    table = analysis_table("sft", 3, n_examples=6, shared_ids=True)
    table = table.iloc[::-1]  # flipped rows first in the file: the forward block still comes first
    matrix = dynamics_tables.example_matrix(table)
    assert matrix.shape == (6, 3) and matrix.index.names == ["sample_type", "example_id"]
    assert matrix.index.tolist() == [("original", 0), ("original", 1), ("original", 2),
                                     ("flipped", 0), ("flipped", 1), ("flipped", 2)]
    assert matrix.columns.tolist() == ["1", "2", "3"]
    for (sample_type, example_id), values in matrix.iterrows():
        rows = table[(table["sample_type"] == sample_type) & (table["example_id"] == example_id)]
        by_epoch = rows.sort_values("epoch")["delta_logp_mean"].to_numpy()
        assert values.to_numpy().tolist() == by_epoch.tolist()  # one value each, not a mean of two


def test_curves_show_means_over_examples():
    dyn = _load_script(DYN_SCRIPT)
    table = analysis_table("sft", 3, n_examples=4)
    fig = dyn.plot_table(table, "t")
    ax = fig.axes[0]
    line = next(ln for ln in ax.lines if ln.get_label() == "$y^+$ all")
    assert np.allclose(line.get_ydata(), table.groupby("epoch").chosen_logp_mean.mean().to_numpy())
    assert len(ax.lines) == 6  # y+, y- for all rows, T_f and T_r
    plt.close(fig)


def make_dynamics(path):
    rows = []
    for step in (0, 5, 10):
        for split in ("train", "eval"):
            for i, sample_type in enumerate(["original", "original", "flipped"]):
                chosen, rejected = -1 + 0.01 * step + 0.1 * i, -1.2 - 0.01 * step
                rows.append({"step": step, "split": split, "example_id": i, "sample_type": sample_type,
                             "chosen_logp_mean": chosen, "rejected_logp_mean": rejected,
                             "delta_logp_mean": chosen - rejected, "chosen_logp_sum": 100 * chosen,
                             "rejected_logp_sum": 100 * rejected})
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)


def test_dynamics_plot_means_per_step_split_and_type(tmp_path):
    dyn = _load_script(DYN_SCRIPT)
    make_dynamics(tmp_path / "dynamics.csv")
    fig = dyn.plot_dynamics(pd.read_csv(tmp_path / "dynamics.csv"), "dynamics.csv")
    train_top = fig.axes[0]
    assert train_top.get_title() == "training rows (3 probed)"
    assert fig.axes[1].get_title() == "held-out eval rows (3 probed)"
    original = next(ln for ln in train_top.lines if ln.get_label() == "$y^+$ original")
    assert np.allclose(original.get_xdata(), [0, 5, 10])
    assert np.allclose(original.get_ydata(), [-1 + 0.05, -1 + 0.05 + 0.05, -1 + 0.1 + 0.05])
    plt.close(fig)


def test_visualize_cli_writes_a_figure_per_table_and_dynamics(tmp_path):
    make_results_dir(tmp_path / "res")
    make_dynamics(tmp_path / "res" / "m" / "dpo" / "dynamics.csv")
    proc = _run(DYN_SCRIPT, "--results_dir", tmp_path / "res", "--output_dir", tmp_path / "out", "--dpi", "60")
    assert proc.returncode == 0, proc.stderr
    stems = ["f__sft__all", "r__sft__all", "m__sft__all", "m__sft__first50", "m__dpo__all", "m__dpo__dynamics"]
    for stem in stems:
        png, pdf = tmp_path / "out" / f"{stem}.png", tmp_path / "out" / f"{stem}.pdf"
        assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 20_000, stem
        assert pdf.read_bytes()[:5] == b"%PDF-"
        assert str(png) in proc.stdout
    assert len(list((tmp_path / "out").iterdir())) == 2 * len(stems)


def test_dynamics_title_names_the_run_and_stage(tmp_path):
    dyn = _load_script(DYN_SCRIPT)
    make_dynamics(tmp_path / "dpo_m" / "dynamics.csv")
    (tmp_path / "dpo_m" / "run_config.json").write_text('{"DPOArguments": {}}')
    assert dyn.dynamics_title(tmp_path / "dpo_m" / "dynamics.csv", tmp_path / "dpo_m") == \
        "In-training probes of run dpo_m (DPO)"
    assert dyn.dynamics_title(tmp_path / "dpo_m" / "dynamics.csv", tmp_path) == "In-training probes of run dpo_m (DPO)"


def test_visualize_cli_fails_clearly_on_an_empty_folder(tmp_path):
    proc = _run(DYN_SCRIPT, "--results_dir", tmp_path)
    assert proc.returncode == 2 and "no analysis tables" in proc.stderr


def test_table_without_delta_or_peak_columns_still_plots():
    dyn = _load_script(DYN_SCRIPT)
    table = analysis_table("sft", 3, n_examples=4)
    table = table.drop(columns=[c for c in table if c.startswith("delta_") or c.endswith("logp_max")])
    fig = dyn.plot_table(table, "t")
    image = next(a for a in fig.axes if a.images).images[0]
    expected = table.chosen_logp_mean - table.rejected_logp_mean
    assert np.isclose(np.nanmean(image.get_array()), expected.mean())
    assert any("no chosen_logp_max" in t.get_text() for t in fig.axes[1].texts)
    plt.close(fig)


@pytest.mark.parametrize("lo,hi,max_steps", [(-0.03, 0.66, 5), (0.0, 0.09, 5), (-1.36, 1.41, 10), (3.0, 97.0, 3)])
def test_nice_bounds_cover_the_range_in_few_steps(lo, hi, max_steps):
    a, b = paper_figure.nice_bounds(lo, hi, margin=0.15, max_steps=max_steps)
    assert a <= lo and b >= hi and b - a < 10 * (hi - lo)


# ---------------------------------------------------------------- DPO x axis by step
ORIGINAL_STEPS = [14, 21, 28, 35, 42, 49, 50]  # recipes/dpo/original.yaml: every 7 steps, the last 7 kept, and 50


def _uneven_dpo_results(root):
    """make_results_dir, with m/dpo at the original recipe's checkpoint steps."""
    make_results_dir(root, dpo=False)
    table = analysis_table("dpo", len(ORIGINAL_STEPS))
    steps = table["epoch"].map(dict(enumerate(ORIGINAL_STEPS, start=1)))
    table = table.assign(step=steps, checkpoint="checkpoint-" + steps.astype(str))
    (root / "m" / "dpo").mkdir(parents=True)
    table.to_parquet(root / "m" / "dpo" / "all.parquet")
    return table


def test_dpo_points_sit_at_their_steps_when_checkpoints_are_uneven(tmp_path):
    _uneven_dpo_results(tmp_path)
    result = paper_figure.plot_paper_figure(result_tables.series_from_results_dir(tmp_path))
    n_sft = 3
    for panel, name in ((1, "y+"), (1, "y-"), (2, "delta")):
        x, _ = _legend_lines(result.axes[panel])[_line_label(panel, "mm", "dpo", name)]
        assert np.diff(x) == pytest.approx([1, 1, 1, 1, 1, 1 / 7])
        assert x == pytest.approx([n_sft + s / 7 for s in ORIGINAL_STEPS])  # step 0 = where DPO started
    ax_b = result.axes[1]
    ticks = dict(zip(ax_b.get_xticks(), (t.get_text() for t in ax_b.get_xticklabels())))
    dpo_ticks = {x: text for x, text in ticks.items() if x > n_sft}
    assert list(dpo_ticks) == pytest.approx([n_sft + s / 7 for s in ORIGINAL_STEPS])
    # labelled with the steps; 49 is left blank next to 50 so the two do not overprint
    assert list(dpo_ticks.values()) == ["14", "21", "28", "35", "42", "", "50"]
    assert "DPO step" in [t.get_text() for t in ax_b.texts]
    plt.close(result.fig)


def test_evenly_spaced_dpo_checkpoints_keep_positions_1_to_k(tmp_path):
    make_results_dir(tmp_path)  # m/dpo checkpoints at steps 10 and 20
    result = paper_figure.plot_paper_figure(result_tables.series_from_results_dir(tmp_path))
    x, _ = _legend_lines(result.axes[2])[_line_label(2, "mm", "dpo", "delta")]
    assert list(x) == [3 + 1, 3 + 2]
    assert [t.get_text() for t in result.axes[2].get_xticklabels()] == ["1", "2", "3", "10", "20"]
    plt.close(result.fig)


@pytest.mark.parametrize("steps,positions", [([14, 21, 28, 35, 42, 49, 50], [2, 3, 4, 5, 6, 7, 50 / 7]),
                                              ([10, 20, 30], [1, 2, 3]), ([0, 5, 10], [0, 1, 2]),
                                              ([50], [1]), ([0], [0]), ([10, 20, 25], [1, 2, 2.5])])
def test_step_positions(steps, positions):
    assert result_tables.step_positions(steps) == pytest.approx(positions)


def test_training_dynamics_curves_sit_at_their_steps(tmp_path):
    dyn = _load_script(DYN_SCRIPT)
    table = _uneven_dpo_results(tmp_path)
    fig = dyn.plot_table(table, "m/dpo/all.parquet")
    line = next(ln for ln in fig.axes[0].lines if ln.get_label() == "$y^+$ all")
    assert np.diff(line.get_xdata()) == pytest.approx([1, 1, 1, 1, 1, 1 / 7])
    assert np.allclose(line.get_ydata(), table.groupby("step").chosen_logp_mean.mean().to_numpy())
    visible = [t.get_text() for t in fig.axes[0].get_xticklabels() if t.get_visible()]
    assert visible == ["14", "21", "28", "35", "42", "50"]
    plt.close(fig)
    even = dyn.plot_table(analysis_table("dpo", 3), "even")  # steps 10, 20, 30: today's 0, 1, 2
    assert list(next(ln for ln in even.axes[0].lines if ln.get_label() == "$y^+$ all").get_xdata()) == [0, 1, 2]
    plt.close(even)


def test_result_tables_and_summarize_results_do_not_import_matplotlib():
    code = ("import runpy, sys; runpy.run_path('analysis/summarize_results.py', run_name='not_main'); "
            "import fwdrev.result_tables, fwdrev.dynamics_tables; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
