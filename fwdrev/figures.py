"""Figure style and output: the paper rc style, saving PNG/PDF/SVG, a LaTeX snippet, legend labels.

Used by ``visualization/*.py``; the data behind the figures is in :mod:`fwdrev.result_tables`
and :mod:`fwdrev.dynamics_tables`, the three-panel paper figure in :mod:`fwdrev.paper_figure`.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import matplotlib as mpl

from fwdrev.io import atomic_path, atomic_write_text

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
