"""The paper's three-panel figure (:func:`plot_paper_figure`) with the wider-middle scale in panel (c).

Input: a tidy series (see :mod:`fwdrev.result_tables`). SFT points sit at x = epoch; DPO
points continue after the last SFT epoch, at their real training step when the series has a
``step`` column (see :func:`with_positions`), else at their checkpoint ordinal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from fwdrev import wider_middle  # noqa: F401  (registers the "wider_middle" scale)
from fwdrev.figures import series_label
from fwdrev.result_tables import CI_COLUMNS, STAGES, complete_deltas, step_positions, validate_series

DEFAULT_COLORS = {"ff": "#1f5fa8", "rr": "#c0392b", "fr": "#2e8b57", "rf": "#8e44ad", "mm": "#e67e22"}
DEFAULT_MARKERS = {"y+": "o", "y-": "v", "delta": "s"}
STAGE_STYLE = {"sft": "-", "dpo": "--"}
BAND_COLOR = "#f2d98c"
DEFAULT_SHARE = 0.25
MIN_LABEL_GAP = 0.6  # x units between labelled ticks, so close DPO steps (49, 50) do not overprint


class PaperFigure(NamedTuple):
    fig: plt.Figure
    axes: tuple  # (a), (b), (c)
    notes: list  # what was skipped or derived, for the CLI to print
    settings: dict  # focus, share, limits and key band actually used


@dataclass(frozen=True)
class SeriesStyle:
    """Line colour per train/test pair (``"ff"``, ..., ``"mm"``) and marker per series (``"y+"``, ...)."""

    colors: dict
    markers: dict

    def color(self, pair: str):
        return self.colors.get(pair, "black")

    def marker(self, name: str):
        return self.markers.get(name, "o")


@dataclass
class Panels:
    """What every panel draws from: the tidy series (with ``position``), the style, the notes to report."""

    series: pd.DataFrame
    style: SeriesStyle
    notes: list


@dataclass(frozen=True)
class GapAxis:
    """Panel (c)'s wider-middle axis; None: derived from the data (see :func:`plot_paper_figure`)."""

    focus: tuple[float, float] | None = None
    share: float | None = None
    ylim: tuple[float, float] | None = None
    ci: bool = False  # draw the deltas' 95% CIs as bands


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



def with_positions(series: pd.DataFrame) -> pd.DataFrame:
    """Add ``position``: a point's x relative to the start of its stage.

    SFT: the epoch. DPO: ``step / spacing`` (:func:`fwdrev.result_tables.step_positions`) when
    every DPO point of the train set has a ``step``, so evenly spaced checkpoints keep the
    positions 1..K and an uneven last one (step 50 after 49, 42, ... 7 apart) sits 1/7 after
    the one before; else the checkpoint ordinal (``epoch``). Derived rows get their checkpoint's step.
    """
    out = series.copy()
    keys = ["train_set", "stage", "epoch"]
    out["step"] = pd.to_numeric(out["step"], errors="coerce") if "step" in out else np.nan
    clash = out.groupby(keys)["step"].nunique()
    if (clash > 1).any():
        raise ValueError(f"series has several steps for one checkpoint (train_set, stage, epoch): "
                         f"{clash[clash > 1].index.tolist()}")
    out["step"] = out.groupby(keys)["step"].transform("first")
    out["position"] = out["epoch"].astype(float)
    dpo = out[out["stage"] == "dpo"]
    for _, rows in dpo.groupby("train_set"):
        if rows["step"].notna().all():
            out.loc[rows.index, "position"] = step_positions(rows["step"])
    return out


def _points(series: pd.DataFrame, pair: str, stage: str, name: str) -> pd.DataFrame:
    sel = series[(series.train_set == pair[0]) & (series.test_set == pair[1])
                 & (series.stage == stage) & (series.series == name)]
    columns = {"value": "mean", "derived": "any", "position": "first", "step": "first",
               **{c: "mean" for c in CI_COLUMNS if c in sel}}
    return sel.groupby("epoch", as_index=False).agg(columns).sort_values("epoch")


def _lighter(color, amount: float = 0.45):
    """Blend *color* towards white (the y- twin of a y+ line)."""
    rgb = np.array(mpl.colors.to_rgb(color))
    return tuple(rgb + (1 - rgb) * amount)


def _draw(ax, pts, style: SeriesStyle, *, x_offset: float, pair: str, stage: str, name: str, label: str):
    """Plot one series at x = its position + *x_offset*."""
    color = style.color(pair)
    hollow = name == "y-"  # y- twin of a y+ line: lighter line, open marker
    line, = ax.plot(
        pts["position"] + x_offset, pts["value"], linestyle=STAGE_STYLE[stage],
        marker=style.marker(name), color=_lighter(color) if hollow else color,
        markerfacecolor="white" if hollow else color, markeredgecolor=color, label=label, zorder=3,
    )
    derived = pts[pts["derived"]]
    if len(derived):  # computed from other values, not published: open grey-edged marker
        ax.plot(derived["position"] + x_offset, derived["value"], linestyle="none", marker=style.marker(name),
                markerfacecolor="white", markeredgecolor="0.5", zorder=4)
    return line


def _draw_ci(ax, pts, style: SeriesStyle, *, x_offset: float, pair: str):
    """95% CI of each point as a band around the line."""
    ax.fill_between(pts["position"] + x_offset, pts["ci_low"], pts["ci_high"], color=style.color(pair),
                    alpha=0.18, linewidth=0, zorder=2)


def _dpo_ticks(dpo: pd.DataFrame) -> tuple[dict, str]:
    """{position: tick text} of the DPO points and the stage caption: step numbers when known."""
    dpo = dpo.drop_duplicates("epoch")
    by_step = len(dpo) > 0 and dpo["step"].notna().all()
    texts = (dpo["step"] if by_step else dpo["epoch"]).astype(int).astype(str)
    return dict(zip(dpo["position"].astype(float), texts)), "DPO step" if by_step else "DPO checkpoint"


def _thin_labels(ticks: dict) -> list[str]:
    """Tick texts (by position), blank where a tick is too close to the next labelled one on its right."""
    labels, last = {}, np.inf
    for x in sorted(ticks, reverse=True):
        labels[x] = ticks[x] if last - x >= MIN_LABEL_GAP else ""
        last = x if labels[x] else last
    return [labels[x] for x in sorted(ticks)]


def _stage_axis(ax, sft_epochs, dpo: pd.DataFrame | None = None, n_sft: int | None = None):
    """SFT epoch e at x = e, a DPO point at x = n_sft + its position; divider and stage labels.

    Epoch 0 (the base model, ``--include_base``) gets its own tick; a DPO point at position 0
    (the model DPO started from) shares the last SFT epoch's position.
    """
    sft_epochs = sorted({int(e) for e in sft_epochs})
    n_sft = max(sft_epochs, default=0) if n_sft is None else n_sft
    dpo_ticks, dpo_caption = _dpo_ticks(dpo) if dpo is not None and len(dpo) else ({}, "")
    own = {n_sft + x: text for x, text in dpo_ticks.items() if n_sft + x not in sft_epochs}
    ticks = {float(e): str(e) for e in sft_epochs} | own
    ax.set_xticks(sorted(ticks), _thin_labels(ticks))
    if sft_epochs and dpo_ticks:
        ax.axvline(n_sft + 0.5, color="0.35", linestyle=":", linewidth=1.0, zorder=1)
    sft_x, dpo_x = np.array(sft_epochs, dtype=float), np.array(sorted(own), dtype=float)
    for xs, text in ((sft_x, "SFT epoch"), (dpo_x, dpo_caption)):
        if len(xs):  # one x label centred under each stage
            ax.annotate(text, xy=(xs.mean(), 0), xycoords=ax.get_xaxis_transform(), xytext=(0, -14),
                        textcoords="offset points", ha="center", va="top",
                        fontsize=mpl.rcParams["axes.labelsize"])
    positions = np.concatenate([sft_x, n_sft + np.array(list(dpo_ticks), dtype=float)])
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


def _panel_a(ax, panels: Panels):
    """SFT log-probs of y+ and y- for the pure forward / reverse runs."""
    epochs = set()
    for pair in ("ff", "rr"):
        for name in ("y+", "y-"):
            pts = _points(panels.series, pair, "sft", name)
            if pts.empty:
                panels.notes.append(f"(a) skipped {pair} {name}: no SFT values")
                continue
            _draw(ax, pts, panels.style, x_offset=0, pair=pair, stage="sft", name=name,
                  label=series_label(pair[0], pair[1], name))
            epochs |= set(pts["epoch"])
    if epochs:
        _stage_axis(ax, epochs)  # same x labelling as panels (b) and (c)
    else:
        _no_data(ax, "no D_f / D_r SFT values")


def _panel_b(ax, panels: Panels, key_band) -> tuple[int, tuple | None]:
    """Mixed data through SFT, then DPO checkpoints continuing on the same x axis."""
    stages = {st: {n: _points(panels.series, "mm", st, n) for n in ("y+", "y-")} for st in STAGES}
    n_sft = _max_epoch(stages["sft"].values())
    for stage, offset in (("sft", 0), ("dpo", n_sft)):
        for name, pts in stages[stage].items():
            if pts.empty:
                panels.notes.append(f"(b) skipped mm {stage} {name}: no values")
                continue
            _draw(ax, pts, panels.style, x_offset=offset, pair="mm", stage=stage, name=name,
                  label=series_label("m", "m", name, stage))
    sft_epochs, dpo = _epochs(stages["sft"].values()), pd.concat(stages["dpo"].values())
    if not (sft_epochs or len(dpo)):
        _no_data(ax, "no D_m T_m values")
        return 0, None
    _stage_axis(ax, sft_epochs, dpo)
    if key_band is None:  # where y+ and y- settle: DPO, else the last SFT epoch
        tail = [p for p in stages["dpo"].values() if not p.empty]
        tail = tail or [p[p.epoch == p.epoch.max()] for p in stages["sft"].values() if not p.empty]
        values = pd.concat(tail)["value"]
        pad = 0.1 * max(values.max() - values.min(), 1e-3)
        key_band = (float(values.min() - pad), float(values.max() + pad))
    ax.axhspan(*key_band, color=BAND_COLOR, alpha=0.35, linewidth=0, zorder=0)
    return n_sft, tuple(key_band)


def _draw_gaps(ax, panels: Panels, n_sft: int, ci: bool) -> pd.DataFrame:
    """Every delta line of panel (c); returns the plotted points (with ``pair``, ``stage``)."""
    plotted = []
    for pair, stage in (("ff", "sft"), ("rr", "sft"), ("fr", "sft"), ("rf", "sft"), ("mm", "sft"), ("mm", "dpo")):
        pts = _points(panels.series, pair, stage, "delta")
        if pts.empty:
            panels.notes.append(f"(c) skipped {pair} {stage} delta: no values")
            continue
        offset = n_sft if stage == "dpo" else 0
        _draw(ax, pts, panels.style, x_offset=offset, pair=pair, stage=stage, name="delta",
              label=series_label(pair[0], pair[1], None, stage if pair == "mm" else None))
        if ci:
            _draw_ci(ax, pts, panels.style, x_offset=offset, pair=pair)
        plotted.append(pts.assign(pair=pair, stage=stage))
    return pd.concat(plotted) if plotted else pd.DataFrame()


def _panel_c(ax, panels: Panels, n_sft_mm: int, gap: GapAxis) -> dict:
    """Gaps on the wider-middle scale; focus band around the mixed-data deltas."""
    deltas = panels.series[panels.series.series == "delta"]
    n_sft = max(_max_epoch([deltas[deltas.stage == "sft"]]), n_sft_mm)
    values = _draw_gaps(ax, panels, n_sft, gap.ci)
    if values.empty:
        _no_data(ax, "no delta values")
        return {}
    extent = values[["value"] + (CI_COLUMNS if gap.ci else [])]
    lo, hi = float(extent.min().min()), float(extent.max().max())
    focus, share = gap.focus, gap.share
    if focus is not None:  # default limits must leave room around a given focus
        lo, hi = min(lo, focus[0]), max(hi, focus[1])
    vmin, vmax = gap.ylim or nice_bounds(lo, hi)
    if focus is None:
        focus = default_focus(values.loc[values.pair == "mm", "value"], vmin, vmax)
        panels.notes.append(f"(c) focus band derived from D_m T_m deltas: [{focus[0]:.4g}, {focus[1]:.4g}]")
    linear_share = (focus[1] - focus[0]) / (vmax - vmin)  # what a linear axis would give it
    if share is None:  # widen the focus 1.5x if possible, and leave the outer pieces a quarter
        share = min(0.75, max(DEFAULT_SHARE, 1.5 * linear_share))
        if share < 1.5 * linear_share:
            panels.notes.append(f"(c) the focus band spans {linear_share:.0%} of the data range, too much "
                                "to widen 1.5x: give a narrower --focus or wider --ylim_c")
    elif share <= linear_share:
        panels.notes.append(f"(c) the focus band spans {linear_share:.0%} of the data range but gets "
                            f"share {share:.0%} of the axis: it is compressed, not widened")
    ax.set_yscale("wider_middle", vmin=vmin, vmax=vmax, focus=focus, share=share)
    ax.set_ylim(vmin, vmax)
    ax.axhspan(*focus, color=BAND_COLOR, alpha=0.35, linewidth=0, zorder=0)
    _stage_axis(ax, values.loc[values.stage == "sft", "epoch"], values[values.stage == "dpo"], n_sft)
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
    D_m T_m deltas with ``share`` 0.25 of the axis (more, up to 0.75, to widen a wide band 1.5x),
    (b) key band = y-range of y+ and y- over DPO (else the last SFT epoch).
    Missing series are skipped and listed in ``notes``, and so is every derived value (computed
    from others, not published or measured; drawn with an open grey-edged marker; listed in
    ``settings["derived"]``). ``ci``: the deltas' 95% CIs (``ci_low``, ``ci_high``) as bands
    in (c). DPO points sit at their training step when the series has ``step`` (ticks show the
    steps; see :func:`with_positions`). Call inside :func:`fwdrev.figures.paper_style`.
    """
    series = with_positions(complete_deltas(validate_series(series)))
    if ci and not set(CI_COLUMNS) <= set(series.columns):
        raise ValueError(f"ci=True needs the columns {CI_COLUMNS} in the series")
    style = SeriesStyle({**DEFAULT_COLORS, **(colors or {})}, {**DEFAULT_MARKERS, **(markers or {})})
    panels = Panels(series, style, notes=[])
    derived = [f"{r.train_set}{r.test_set} {r.stage} {r.series} epoch {r.epoch}"
               for r in series[series["derived"]].sort_values(["stage", "epoch"]).itertuples()]
    panels.notes += [f"derived, not published: {d} (delta = y+ - y-)" if " delta " in d else
                     f"derived from other values, not published: {d}" for d in derived]

    fig = plt.figure(figsize=figsize, layout="constrained")
    grid = fig.add_gridspec(2, 3, width_ratios=[1, 1.16, 1], height_ratios=[1, 0.3])
    ax_a, ax_b, ax_c = (fig.add_subplot(grid[0, i]) for i in range(3))
    _panel_a(ax_a, panels)
    n_sft_mm, band = _panel_b(ax_b, panels, key_band)
    settings = _panel_c(ax_c, panels, n_sft_mm, GapAxis(focus, share, ylim_c, ci))
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
    return PaperFigure(fig, (ax_a, ax_b, ax_c), panels.notes, settings)
