"""Figure data and plotting helpers.

Three layers, used by ``visualization/*.py`` and the quickstart summary:

* tidy series -- one row per (train_set, test_set, stage, epoch, series) with a value,
  from the published numbers (``paper_figure_values.csv``), any tidy CSV, or this
  project's analysis outputs (:func:`series_from_results_dir`, :func:`summary_table`);
* long analysis tables (one row per checkpoint and example) -- discovery, checkpoint
  order, per-checkpoint means, example-by-checkpoint matrices, in-training probes;
* plotting -- paper rc style, saving PNG/PDF/SVG, a LaTeX snippet, and the three-panel
  paper figure (:func:`plot_paper_figure`) with the wider-middle scale in panel (c).

Naming: ``y+`` is the trace whose direction matches the question (forward for a forward
question, reverse for a reverse one), ``y-`` the trace in the opposite direction,
``delta = y+ - y-``.
Train set D_f / D_r / D_m and test set T_f / T_r / T_m are coded ``f`` / ``r`` / ``m``.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import matplotlib as mpl
import matplotlib.pyplot as plt

from fwdrev import wider_middle  # noqa: F401  (registers the "wider_middle" scale)
from fwdrev.io import atomic_path, atomic_write_text
from fwdrev.scoring import GROUP_COLUMN, add_group_ids, bootstrap_mean_ci

TIDY_COLUMNS = ["train_set", "test_set", "stage", "epoch", "series", "value"]
# Optional: ``derived`` (True for a value computed from others, not measured or published)
# and the 95% CI of ``value`` (``ci_low``, ``ci_high``).
CI_COLUMNS = ["ci_low", "ci_high"]
SETS = ("f", "r", "m")
STAGES = ("sft", "dpo")
SERIES = ("y+", "y-", "delta")
# Test set -> rows of the analysis table (None = all rows).
TEST_SET_SAMPLE_TYPE = {"f": "original", "r": "flipped", "m": None}
PAPER_CSV = Path(__file__).resolve().parents[1] / "visualization" / "paper_figure_values.csv"
PAPER_CITATION = (
    "Deng et al., When Inverse Data Outperforms: Exploring the Pitfalls of Mixed Data "
    "in Multi-Stage Fine-Tuning, arXiv:2509.13079"
)


# --------------------------------------------------------------------------- tidy series
def validate_series(df: pd.DataFrame) -> pd.DataFrame:
    """Check a tidy series table and return it with clean dtypes (rows with no value dropped).

    The result has :data:`TIDY_COLUMNS`, ``derived`` (False where absent) and, when given,
    :data:`CI_COLUMNS`.
    """
    missing = [c for c in TIDY_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"series table lacks columns {missing}; expected {TIDY_COLUMNS}")
    out = df[TIDY_COLUMNS + [c for c in CI_COLUMNS if c in df.columns]].copy()
    out["derived"] = _as_bool(df["derived"]) if "derived" in df.columns else False
    for col in CI_COLUMNS:
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


def load_paper_values(path=PAPER_CSV) -> pd.DataFrame:
    """The published values of the paper's figure (see :data:`PAPER_CITATION`)."""
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
def read_table(path, columns=None) -> pd.DataFrame:
    """Read a CSV or parquet table (optionally only some columns)."""
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


SUMMARY_COLUMNS = ["train_set", "stage", "epoch", "checkpoint", "test_set", "n_examples", "n_problems",
                   "y_plus", "y_minus", "delta", "delta_ci_low", "delta_ci_high",
                   "pref_acc_first_k", "pref_acc_full"]


def _deltas(table: pd.DataFrame, name: str) -> pd.Series:
    """``delta_<name>``, else ``chosen_<name> - rejected_<name>``, else NaN."""
    if f"delta_{name}" in table:
        return table[f"delta_{name}"]
    if {f"chosen_{name}", f"rejected_{name}"} <= set(table.columns):
        return table[f"chosen_{name}"] - table[f"rejected_{name}"]
    return pd.Series(np.nan, index=table.index)


def _with_groups(table: pd.DataFrame, path, group_ids: dict | None) -> pd.DataFrame:
    """The table with its problem key: its own column, else mapped from ``group_ids``."""
    if GROUP_COLUMN in table:
        return table
    if group_ids is None:
        raise ValueError(f"{path}: no {GROUP_COLUMN!r} column (scored by an older version), so the CIs "
                         "cannot resample whole problems: rescore it, or give the data file it was "
                         "scored on (--dataset_path) to map example_id to the problem")
    try:
        return add_group_ids(table, group_ids)
    except ValueError as error:
        raise ValueError(f"{path}: {error} in the given data file") from None


def summary_table(results_dir, metric: str = "logp_mean_first_k", subset: str = "all", ci: bool = True,
                  group_ids: dict | None = None, seed: int = 0) -> pd.DataFrame:
    """Per train_set / stage / epoch / test_set: mean y+, mean y-, delta and preference accuracy.

    y+ and y- are means over examples of ``chosen_<metric>`` / ``rejected_<metric>``;
    ``delta`` is the mean of ``delta_<metric>`` (or y+ - y- without that column), with its 95%
    CI (``delta_ci_low/high``; ``ci=False``: NaN) from a bootstrap over problems: a problem's
    original and flipped row are drawn together (``group_id`` column, or ``group_ids``:
    example_id -> problem, for tables without it). ``pref_acc_first_k`` / ``pref_acc_full`` are
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
            table = with_epochs(read_table(path))
            table = table.assign(_delta=_deltas(table, metric), _first_k=_deltas(table, f"{statistic}_first_k"),
                                 _full=_deltas(table, statistic))
            if ci:
                table = _with_groups(table, path, group_ids)
            for test_set, sample_type in TEST_SET_SAMPLE_TYPE.items():
                if sample_type is not None and "sample_type" not in table:
                    continue  # without question types only T_m (all rows) is defined
                part = table if sample_type is None else table[table["sample_type"] == sample_type]
                for epoch, group in part.groupby("epoch", sort=True):
                    rows.append({"train_set": train_set, "stage": stage, "epoch": int(epoch),
                                 "checkpoint": str(group["checkpoint"].iloc[0]), "test_set": test_set,
                                 **_summary_values(group, chosen, rejected, ci, seed)})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def _summary_values(group: pd.DataFrame, chosen: str, rejected: str, ci: bool, seed: int) -> dict:
    low, high = (bootstrap_mean_ci(group["_delta"], seed=seed, groups=group[GROUP_COLUMN].to_numpy())
                 if ci else (np.nan, np.nan))
    return {"n_examples": len(group),
            "n_problems": group[GROUP_COLUMN].nunique() if GROUP_COLUMN in group else np.nan,
            "y_plus": group[chosen].mean(), "y_minus": group[rejected].mean(),
            "delta": group["_delta"].mean(), "delta_ci_low": low, "delta_ci_high": high,
            "pref_acc_first_k": _share_positive(group["_first_k"]),
            "pref_acc_full": _share_positive(group["_full"])}


def _share_positive(values: pd.Series) -> float:
    values = values.dropna()
    return float((values > 0).mean()) if len(values) else np.nan


def series_from_results_dir(results_dir, metric: str = "logp_mean_first_k", subset: str = "all",
                            ci: bool = False, group_ids: dict | None = None) -> pd.DataFrame:
    """Tidy series (``TIDY_COLUMNS``) from ``RESULTS_DIR/<train_set>/<stage>/<subset>.*``.

    ``ci``: delta rows also get their 95% CI (``ci_low``, ``ci_high``; see :func:`summary_table`).
    """
    summary = summary_table(results_dir, metric=metric, subset=subset, ci=ci, group_ids=group_ids)
    long = summary.melt(
        id_vars=["train_set", "test_set", "stage", "epoch", "delta_ci_low", "delta_ci_high"],
        value_vars=["y_plus", "y_minus", "delta"], var_name="series", value_name="value",
    )
    long["series"] = long["series"].map({"y_plus": "y+", "y_minus": "y-", "delta": "delta"})
    is_delta = long["series"] == "delta"
    if ci:
        long["ci_low"] = long["delta_ci_low"].where(is_delta)
        long["ci_high"] = long["delta_ci_high"].where(is_delta)
    return validate_series(long)


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


# ------------------------------------------------------------------ style and output
PAPER_RC = {
    "font.family": "serif",
    "font.serif": ["STIXGeneral", "DejaVu Serif"],  # Times-like, shipped with matplotlib
    "mathtext.fontset": "stix",
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8.5,
    "xtick.labelsize": 7.5,
    "ytick.labelsize": 7.5,
    "legend.fontsize": 7.5,
    "axes.linewidth": 0.7,
    "lines.linewidth": 1.3,
    "lines.markersize": 3.8,
    "legend.frameon": False,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.03,
    "svg.fonttype": "path",
    "pdf.fonttype": 42,  # embed TrueType so the PDF text stays editable / searchable
}


@contextmanager
def paper_style(usetex: bool = False):
    """rc context for paper figures (serif; real LaTeX when *usetex*)."""
    rc = dict(PAPER_RC)
    if usetex:
        rc.update({"text.usetex": True, "font.serif": ["Computer Modern Roman"],
                   "text.latex.preamble": r"\usepackage{amsmath}\usepackage{amssymb}"})
    with mpl.rc_context(rc):
        yield


def save_figure(fig, stem, formats=("png", "pdf", "svg"), dpi: int = 400) -> list[Path]:
    """Save *fig* as ``stem.<fmt>`` for each format (parents created); return the paths.

    Writes are atomic, so an interrupted run never leaves a truncated figure behind.
    """
    stem = Path(stem)
    paths = []
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi if fmt == "png" else None)
        paths.append(path)
    return paths


def write_tex_snippet(stem, caption: str, label: str, width: str = r"\textwidth") -> Path:
    """Write ``stem.tex`` with a ``figure*`` environment including ``stem.pdf``."""
    stem = Path(stem)
    text = "\n".join([
        r"\begin{figure*}[t]",
        r"  \centering",
        rf"  \includegraphics[width={width}]{{{stem.name}.pdf}}",
        rf"  \caption{{{caption}}}",
        rf"  \label{{{label}}}",
        r"\end{figure*}",
        "",
    ])
    path = stem.with_name(f"{stem.name}.tex")
    atomic_write_text(path, text)
    return path


SERIES_TEX = {"y+": "y^+", "y-": "y^-", "delta": r"\Delta"}


def series_label(train_set: str, test_set: str, series: str | None = None, stage: str | None = None) -> str:
    r"""Legend label such as ``$\mathcal{D}_f, \mathcal{T}_f, y^+$`` (stage appended if given)."""
    parts = [rf"\mathcal{{D}}_{train_set}", rf"\mathcal{{T}}_{test_set}"]
    if series is not None:
        parts.append(SERIES_TEX[series])
    label = "$" + ", ".join(parts) + "$"
    return f"{label} ({stage.upper()})" if stage else label


# ------------------------------------------------------------------ paper figure
DEFAULT_COLORS = {"ff": "#1f5fa8", "rr": "#c0392b", "fr": "#2e8b57", "rf": "#8e44ad", "mm": "#e67e22"}
DEFAULT_MARKERS = {"y+": "o", "y-": "v", "delta": "s"}
STAGE_STYLE = {"sft": "-", "dpo": "--"}
BAND_COLOR = "#f2d98c"
DEFAULT_SHARE = 0.25


class PaperFigure(NamedTuple):
    fig: plt.Figure
    axes: tuple  # (a), (b), (c)
    notes: list  # what was skipped or derived, for the CLI to print
    settings: dict  # focus, share, limits and key band actually used


def nice_bounds(lo: float, hi: float, margin: float = 0.02, max_steps: int = 10) -> tuple[float, float]:
    """Pad [lo, hi] by *margin* of its span and round outward to a 1-2-5 step.

    The step is the finest 1-2-5 value that splits the padded range into at most
    *max_steps* pieces, e.g. (-1.36, 1.41) -> (-1.5, 1.5).
    """
    span = max(hi - lo, 1e-9)
    lo, hi = lo - margin * span, hi + margin * span
    step = 10 ** np.floor(np.log10(hi - lo))
    step = next(s * step for s in (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0) if (hi - lo) / (s * step) <= max_steps)
    # round() strips float noise such as 0.6000000000000001 from tick labels and snippets
    return round(float(np.floor(lo / step) * step), 12), round(float(np.ceil(hi / step) * step), 12)


def default_focus(deltas, vmin: float, vmax: float) -> tuple[float, float]:
    """Focus band around the mixed-data deltas, rounded outward, inside (vmin, vmax)."""
    deltas = np.asarray(deltas, dtype=float)
    deltas = deltas[np.isfinite(deltas)]
    if deltas.size == 0:  # no mixed run: a small band around zero
        half = 0.05 * (vmax - vmin)
        return -half, half
    lo, hi = float(deltas.min()), float(deltas.max())
    if hi - lo < 0.002 * (vmax - vmin):  # a single point or a flat series
        lo, hi = lo - 0.01 * (vmax - vmin), hi + 0.01 * (vmax - vmin)
    a, b = nice_bounds(lo, hi, margin=0.15, max_steps=5)
    if b - a > 1.3 * 1.3 * (hi - lo):  # coarse rounding widened the padded band 1.3x: round finer
        a, b = nice_bounds(lo, hi, margin=0.15, max_steps=10)
    # Strictly inside the limits so the scale stays valid.
    eps = 1e-3 * (vmax - vmin)
    return max(a, vmin + eps), min(b, vmax - eps)


def _points(series: pd.DataFrame, train_set, test_set, stage, name) -> pd.DataFrame:
    sel = series[(series.train_set == train_set) & (series.test_set == test_set)
                 & (series.stage == stage) & (series.series == name)]
    columns = {"value": "mean", "derived": "any", **{c: "mean" for c in CI_COLUMNS if c in sel}}
    return sel.groupby("epoch", as_index=False).agg(columns).sort_values("epoch")


def _lighter(color, amount: float = 0.45):
    """Blend *color* towards white (the y- twin of a y+ line)."""
    rgb = np.array(mpl.colors.to_rgb(color))
    return tuple(rgb + (1 - rgb) * amount)


def _draw(ax, pts, x_offset, pair, stage, name, style, label):
    """Plot one series; gid ``<pair>:<stage>:<series>`` lets tests find the line."""
    colors, markers = style
    color = colors.get(pair, "black")
    hollow = name == "y-"  # y- twin of a y+ line: lighter line, open marker
    line, = ax.plot(
        pts["epoch"] + x_offset, pts["value"], linestyle=STAGE_STYLE[stage],
        marker=markers.get(name, "o"), color=_lighter(color) if hollow else color,
        markerfacecolor="white" if hollow else color, markeredgecolor=color,
        label=label, gid=f"{pair}:{stage}:{name}", zorder=3,
    )
    derived = pts[pts["derived"]]
    if len(derived):  # computed from other values, not published: open grey-edged marker
        ax.plot(derived["epoch"] + x_offset, derived["value"], linestyle="none", marker=markers.get(name, "o"),
                markerfacecolor="white", markeredgecolor="0.5", gid=f"{pair}:{stage}:{name}:derived", zorder=4)
    return line


def _draw_ci(ax, pts, x_offset, pair, stage, name, colors):
    """95% CI of each point as a band around the line."""
    ax.fill_between(pts["epoch"] + x_offset, pts["ci_low"], pts["ci_high"], color=colors.get(pair, "black"),
                    alpha=0.18, linewidth=0, zorder=2, gid=f"{pair}:{stage}:{name}:ci")


def _stage_axis(ax, sft_epochs, dpo_epochs, n_sft: int | None = None):
    """SFT epoch e at x = e, DPO checkpoint k at x = n_sft + k; divider and stage labels.

    Epoch 0 (the base model, ``--include_base``) gets its own tick; a DPO checkpoint 0 (the
    model DPO started from) shares the last SFT epoch's position.
    """
    sft_epochs, dpo_epochs = sorted({int(e) for e in sft_epochs}), sorted({int(k) for k in dpo_epochs})
    n_sft = max(sft_epochs, default=0) if n_sft is None else n_sft
    dpo_epochs_own_tick = [k for k in dpo_epochs if n_sft + k not in sft_epochs]
    sft_x = np.array(sft_epochs, dtype=float)
    dpo_x = n_sft + np.array(dpo_epochs_own_tick, dtype=float)
    ax.set_xticks(np.concatenate([sft_x, dpo_x]))
    ax.set_xticklabels([str(e) for e in sft_epochs] + [str(k) for k in dpo_epochs_own_tick])
    if sft_epochs and dpo_epochs:
        ax.axvline(n_sft + 0.5, color="0.35", linestyle=":", linewidth=1.0, zorder=1, gid="sft-dpo-divider")
    for xs, text in ((sft_x, "SFT epoch"), (dpo_x, "DPO checkpoint")):
        if len(xs):  # one x label centred under each stage
            ax.annotate(text, xy=(xs.mean(), 0), xycoords=ax.get_xaxis_transform(), xytext=(0, -14),
                        textcoords="offset points", ha="center", va="top",
                        fontsize=mpl.rcParams["axes.labelsize"])
    positions = np.concatenate([sft_x, n_sft + np.array(dpo_epochs, dtype=float)])
    ax.set_xlim(positions.min() - 0.5, positions.max() + 0.5)


def _legend_below(legend_ax, ax):
    """Legend in its own axes under the panel, so it never covers data."""
    handles, labels = ax.get_legend_handles_labels()
    legend_ax.axis("off")
    if handles:
        legend_ax.legend(handles, labels, loc="upper center", ncol=2, handlelength=2.6,
                         columnspacing=1.2, borderaxespad=0.0)


def _no_data(ax, text):
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.4")


def _epochs(tables) -> set[int]:
    return {int(e) for t in tables for e in t["epoch"]}


def _max_epoch(tables) -> int:
    return max(_epochs(tables), default=0)


def _panel_a(ax, series, style, notes):
    """SFT log-probs of y+ and y- for the pure forward / reverse runs."""
    epochs = set()
    for pair in ("ff", "rr"):
        for name in ("y+", "y-"):
            pts = _points(series, pair[0], pair[1], "sft", name)
            if pts.empty:
                notes.append(f"(a) skipped {pair} {name}: no SFT values")
                continue
            _draw(ax, pts, 0, pair, "sft", name, style, series_label(pair[0], pair[1], name))
            epochs |= set(pts["epoch"])
    if epochs:
        _stage_axis(ax, epochs, [])  # same x labelling as panels (b) and (c)
    else:
        _no_data(ax, "no D_f / D_r SFT values")


def _panel_b(ax, series, style, notes, key_band) -> tuple[int, tuple | None]:
    """Mixed data through SFT, then DPO checkpoints continuing on the same x axis."""
    stages = {st: {n: _points(series, "m", "m", st, n) for n in ("y+", "y-")} for st in STAGES}
    n_sft = _max_epoch(stages["sft"].values())
    for stage, offset in (("sft", 0), ("dpo", n_sft)):
        for name, pts in stages[stage].items():
            if pts.empty:
                notes.append(f"(b) skipped mm {stage} {name}: no values")
                continue
            _draw(ax, pts, offset, "mm", stage, name, style, series_label("m", "m", name, stage))
    sft_epochs, dpo_epochs = _epochs(stages["sft"].values()), _epochs(stages["dpo"].values())
    if not (sft_epochs or dpo_epochs):
        _no_data(ax, "no D_m T_m values")
        return 0, None
    _stage_axis(ax, sft_epochs, dpo_epochs)
    if key_band is None:  # where y+ and y- settle: DPO, else the last SFT epoch
        tail = [p for p in stages["dpo"].values() if not p.empty]
        tail = tail or [p[p.epoch == p.epoch.max()] for p in stages["sft"].values() if not p.empty]
        values = pd.concat(tail)["value"]
        pad = 0.1 * max(values.max() - values.min(), 1e-3)
        key_band = (float(values.min() - pad), float(values.max() + pad))
    ax.axhspan(*key_band, color=BAND_COLOR, alpha=0.35, linewidth=0, zorder=0, gid="key-band")
    return n_sft, tuple(key_band)


def _panel_c(ax, series, style, notes, n_sft_mm, focus, share, ylim, ci=False) -> dict:
    """Gaps on the wider-middle scale; focus band around the mixed-data deltas."""
    deltas = series[series.series == "delta"]
    n_sft = max(_max_epoch([deltas[deltas.stage == "sft"]]), n_sft_mm)
    plotted = []
    for pair, stage in (("ff", "sft"), ("rr", "sft"), ("fr", "sft"), ("rf", "sft"), ("mm", "sft"), ("mm", "dpo")):
        pts = _points(series, pair[0], pair[1], stage, "delta")
        if pts.empty:
            notes.append(f"(c) skipped {pair} {stage} delta: no values")
            continue
        label = series_label(pair[0], pair[1], None, stage if pair == "mm" else None)
        _draw(ax, pts, n_sft if stage == "dpo" else 0, pair, stage, "delta", style, label)
        if ci:
            _draw_ci(ax, pts, n_sft if stage == "dpo" else 0, pair, stage, "delta", style[0])
        plotted.append(pts.assign(pair=pair, stage=stage))
    if not plotted:
        _no_data(ax, "no delta values")
        return {}
    values = pd.concat(plotted)
    extent = values[["value"] + (CI_COLUMNS if ci else [])]
    lo, hi = float(extent.min().min()), float(extent.max().max())
    if focus is not None:  # default limits must leave room around a given focus
        lo, hi = min(lo, focus[0]), max(hi, focus[1])
    vmin, vmax = ylim or nice_bounds(lo, hi)
    if focus is None:
        focus = default_focus(values.loc[values.pair == "mm", "value"], vmin, vmax)
        notes.append(f"(c) focus band derived from D_m T_m deltas: [{focus[0]:.4g}, {focus[1]:.4g}]")
    linear_share = (focus[1] - focus[0]) / (vmax - vmin)  # what a linear axis would give it
    if share is None:  # widen the focus 1.5x if possible, and leave the outer pieces a quarter
        share = min(0.75, max(DEFAULT_SHARE, 1.5 * linear_share))
        if share < 1.5 * linear_share:
            notes.append(f"(c) the focus band spans {linear_share:.0%} of the data range, too much "
                         "to widen 1.5x: give a narrower --focus or wider --ylim_c")
    elif share <= linear_share:
        notes.append(f"(c) the focus band spans {linear_share:.0%} of the data range but gets "
                     f"share {share:.0%} of the axis: it is compressed, not widened")
    ax.set_yscale("wider_middle", vmin=vmin, vmax=vmax, focus=focus, share=share)
    ax.set_ylim(vmin, vmax)
    ax.axhspan(*focus, color=BAND_COLOR, alpha=0.35, linewidth=0, zorder=0, gid="focus-band")
    _stage_axis(ax, values.loc[values.stage == "sft", "epoch"], values.loc[values.stage == "dpo", "epoch"],
                n_sft)
    return {"focus": tuple(focus), "share": share, "ylim_c": (vmin, vmax)}


def plot_paper_figure(
    series: pd.DataFrame,
    *,
    focus: tuple[float, float] | None = None,
    share: float | None = None,
    ylim_a: tuple[float, float] | None = None,
    ylim_b: tuple[float, float] | None = None,
    ylim_c: tuple[float, float] | None = None,
    key_band: tuple[float, float] | None = None,
    figsize: tuple[float, float] = (7.2, 2.9),
    colors: dict | None = None,
    markers: dict | None = None,
    ci: bool = False,
) -> PaperFigure:
    """The three-panel figure: (a) SFT log-probs of D_f T_f and D_r T_r, (b) the mixed run
    through SFT and DPO with its key band, (c) the gaps on the wider-middle scale.

    Defaults come from the data: (c) limits from the delta range, focus band around the
    D_m T_m deltas with ``share`` 0.25 of the axis (more, up to 0.75, to widen a wide band 1.5x), (b) key band = y-range of y+ and y- over DPO (else the last SFT epoch).
    Missing series are skipped and listed in ``notes``, and so is every derived value (computed
    from others, not published or measured; drawn with an open grey-edged marker; listed in
    ``settings["derived"]``). ``ci``: the deltas' 95% CIs (``ci_low``, ``ci_high``) as bands
    in (c). Call inside :func:`paper_style`.
    """
    series = complete_deltas(validate_series(series))
    if ci and not set(CI_COLUMNS) <= set(series.columns):
        raise ValueError(f"ci=True needs the columns {CI_COLUMNS} in the series")
    style = ({**DEFAULT_COLORS, **(colors or {})}, {**DEFAULT_MARKERS, **(markers or {})})
    notes: list[str] = []
    derived = [f"{r.train_set}{r.test_set} {r.stage} {r.series} epoch {r.epoch}"
               for r in series[series["derived"]].sort_values(["stage", "epoch"]).itertuples()]
    notes += [f"derived, not published: {d} (delta = y+ - y-)" if " delta " in d else
              f"derived from other values, not published: {d}" for d in derived]

    fig = plt.figure(figsize=figsize, layout="constrained")
    grid = fig.add_gridspec(2, 3, width_ratios=[1, 1.16, 1], height_ratios=[1, 0.3])
    ax_a, ax_b, ax_c = (fig.add_subplot(grid[0, i]) for i in range(3))
    _panel_a(ax_a, series, style, notes)
    n_sft_mm, band = _panel_b(ax_b, series, style, notes, key_band)
    settings = _panel_c(ax_c, series, style, notes, n_sft_mm, focus, share, ylim_c, ci)
    settings["key_band"], settings["derived"] = band, derived

    mixed = r"Mixed $\mathcal{D}_m$: SFT then DPO" if (series.stage == "dpo").any() else r"Mixed $\mathcal{D}_m$: SFT"
    titles = (r"SFT on $\mathcal{D}_f$ and $\mathcal{D}_r$", mixed, r"Gap $\Delta$, wider middle")
    ylabels = ("mean log-prob, first 1k tokens",) * 2 + (r"$\Delta = y^+ - y^-$",)
    for i, (ax, letter, title, ylabel, ylim) in enumerate(zip((ax_a, ax_b, ax_c), "abc", titles, ylabels,
                                                             (ylim_a, ylim_b, None))):
        ax.set_title(f"({letter}) {title}", loc="left")
        ax.set_ylabel(ylabel)
        if ylim:
            ax.set_ylim(*ylim)
        ax.grid(True, color="0.9", linewidth=0.5)
        ax.set_axisbelow(True)
        _legend_below(fig.add_subplot(grid[1, i]), ax)
    return PaperFigure(fig, (ax_a, ax_b, ax_c), notes, settings)
