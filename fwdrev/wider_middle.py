"""A piecewise-linear "wider middle" axis scale for matplotlib.

The preference gap of the mixed-data run lives in a narrow band (about 0.06 to 0.09)
while the forward / reverse gaps span about -1.4 to 1.4. On a linear axis that band is a
few pixels tall. This scale stretches a focus interval [a, b] so that it takes ``share``
of the axis between ``vmin`` and ``vmax``; the two outer pieces split the rest of the
axis in proportion to their data lengths, so each piece stays linear and readable.

Importing this module registers the scale with matplotlib::

    import fwdrev.wider_middle  # noqa: F401
    ax.set_yscale("wider_middle", vmin=-1.5, vmax=1.5, focus=(0.05, 0.1), share=0.25)
    ax.set_ylim(-1.5, 1.5)  # show the whole scale

Values outside [vmin, vmax] are clipped to the ends of the axis (drawn on the frame).
"""

from __future__ import annotations

import matplotlib as mpl
import numpy as np
from matplotlib import font_manager, ticker
from matplotlib import scale as mscale
from matplotlib.transforms import Transform

__all__ = [
    "WiderMiddleScale",
    "WiderMiddleTransform",
    "InvertedWiderMiddleTransform",
    "WiderMiddleLocator",
    "CompactFormatter",
    "breakpoints",
    "forward",
    "inverse",
    "validate",
]


def validate(vmin: float, vmax: float, focus, share: float) -> tuple[float, float, float, float, float]:
    """Check the scale parameters and return them as floats (vmin, a, b, vmax, share)."""
    try:
        a, b = (float(v) for v in focus)
    except (TypeError, ValueError):
        raise ValueError(f"focus must be a pair (a, b) of numbers, got {focus!r}") from None
    vmin, vmax, share = float(vmin), float(vmax), float(share)
    values = np.array([vmin, a, b, vmax, share])
    if not np.all(np.isfinite(values)):
        raise ValueError(f"scale parameters must be finite, got vmin={vmin}, focus=({a}, {b}), "
                         f"vmax={vmax}, share={share}")
    if not vmin < a < b < vmax:
        raise ValueError(f"need vmin < a < b < vmax, got vmin={vmin}, focus=({a}, {b}), vmax={vmax}")
    if not 0.0 < share < 1.0:
        raise ValueError(f"share must lie strictly between 0 and 1, got {share}")
    return vmin, a, b, vmax, share


def breakpoints(vmin: float, vmax: float, focus, share: float) -> tuple[np.ndarray, np.ndarray]:
    """Data breakpoints (vmin, a, b, vmax) and their axis fractions (0, s, s + share, 1)."""
    vmin, a, b, vmax, share = validate(vmin, vmax, focus, share)
    below, above = a - vmin, vmax - b
    s = (1.0 - share) * below / (below + above)
    return np.array([vmin, a, b, vmax]), np.array([0.0, s, s + share, 1.0])


def forward(values, vmin: float, vmax: float, focus, share: float) -> np.ndarray:
    """Data values -> axis fraction in [0, 1]; values outside [vmin, vmax] clip to 0 or 1."""
    xp, fp = breakpoints(vmin, vmax, focus, share)
    return np.interp(np.asarray(values, dtype=float), xp, fp)  # np.interp clips at the ends


def inverse(fractions, vmin: float, vmax: float, focus, share: float) -> np.ndarray:
    """Axis fraction -> data value; exact inverse of :func:`forward` on [vmin, vmax]."""
    xp, fp = breakpoints(vmin, vmax, focus, share)
    return np.interp(np.asarray(fractions, dtype=float), fp, xp)


class WiderMiddleTransform(Transform):
    """Data -> axis-fraction transform of the wider-middle scale."""

    input_dims = output_dims = 1
    is_separable = True
    has_inverse = True

    def __init__(self, vmin, vmax, focus, share):
        super().__init__()
        self.params = validate(vmin, vmax, focus, share)

    def _kwargs(self):
        vmin, a, b, vmax, share = self.params
        return dict(vmin=vmin, vmax=vmax, focus=(a, b), share=share)

    def transform_non_affine(self, values):
        return forward(values, **self._kwargs())

    def inverted(self):
        return InvertedWiderMiddleTransform(**self._kwargs())


class InvertedWiderMiddleTransform(WiderMiddleTransform):
    """Axis-fraction -> data transform (the inverse of :class:`WiderMiddleTransform`)."""

    def transform_non_affine(self, values):
        return inverse(values, **self._kwargs())

    def inverted(self):
        return WiderMiddleTransform(**self._kwargs())


class CompactFormatter(ticker.Formatter):
    """Short tick labels: 3 significant digits, no trailing zeros, no "-0"."""

    def __call__(self, x, pos=None):
        if abs(x) < 1e-12:
            x = 0.0  # avoid "-0" from float round-off
        text = f"{x:.3g}"
        if mpl.rcParams["text.usetex"]:
            return f"${text}$"
        return self.fix_minus(text)


class WiderMiddleLocator(ticker.Locator):
    """Ticks at vmin, vmax and the focus bounds, plus linear ticks that have room.

    Candidates are taken in priority order (focus bounds, ends, ticks inside the focus,
    ticks on the outer pieces) and a candidate is dropped when it would sit closer than
    ``min_gap_pt`` points to an already accepted tick in display space, so labels never
    collide even where the outer pieces are compressed.
    """

    def __init__(self, vmin, vmax, focus, share, min_gap_pt: float | None = None):
        self.params = validate(vmin, vmax, focus, share)
        self.min_gap_pt = min_gap_pt

    def __call__(self):
        lo, hi = self.axis.get_view_interval() if self.axis is not None else self.params[::3]
        return self.tick_values(lo, hi)

    def _axis_length_pt(self) -> float:
        """Length of the axis in points (falls back to a typical 200 pt without a figure)."""
        axis = self.axis
        if axis is None or axis.axes is None or axis.axes.figure is None:
            return 200.0
        bbox = axis.axes.get_window_extent()
        pixels = bbox.height if axis.axis_name == "y" else bbox.width
        return max(pixels * 72.0 / axis.axes.figure.dpi, 1.0)

    def _min_gap_pt(self) -> float:
        if self.min_gap_pt is not None:
            return float(self.min_gap_pt)
        which = getattr(self.axis, "axis_name", "y")
        size = mpl.rcParams[f"{which}tick.labelsize"]
        points = font_manager.FontProperties(size=size).get_size_in_points()
        return 1.4 * points  # one label height plus a little air

    def tick_values(self, vmin, vmax):
        lo, hi = sorted((float(vmin), float(vmax)))
        v0, a, b, v1, share = self.params
        kwargs = dict(vmin=v0, vmax=v1, focus=(a, b), share=share)
        length = self._axis_length_pt()
        gap = self._min_gap_pt() / length  # minimum distance as a fraction of the axis
        span = max(forward(hi, **kwargs) - forward(lo, **kwargs), 1e-12)

        # Inside the focus: as many linear ticks as the stretched piece has room for.
        # (Over-generating is fine: the spacing filter below removes crowded ones.)
        n_inside = int(share * length / span / self._min_gap_pt())
        inside = ticker.MaxNLocator(nbins=max(n_inside, 2), steps=[1, 2, 2.5, 5, 10]).tick_values(a, b)
        outer = ticker.MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]).tick_values(v0, v1)
        candidates = [a, b, v0, v1, *[t for t in inside if a < t < b], *[t for t in outer if not a <= t <= b]]

        kept: list[float] = []
        for t in candidates:
            if not lo - 1e-12 * (hi - lo) <= t <= hi + 1e-12 * (hi - lo):
                continue
            pos = (forward(t, **kwargs) - forward(lo, **kwargs)) / span
            if all(abs(pos - (forward(k, **kwargs) - forward(lo, **kwargs)) / span) >= gap for k in kept):
                kept.append(t)
        return np.array(sorted(kept))


class WiderMiddleScale(mscale.ScaleBase):
    """Piecewise-linear scale that gives the focus interval ``share`` of the axis."""

    name = "wider_middle"

    # *_axis: matplotlib < 3.11 passes the Axis positionally; 3.11+ passes nothing.
    def __init__(self, *_axis, vmin=-1.5, vmax=1.5, focus=(0.05, 0.1), share=0.25):
        vmin, a, b, vmax, share = validate(vmin, vmax, focus, share)
        self.vmin, self.vmax, self.focus, self.share = vmin, vmax, (a, b), share

    def get_transform(self):
        return WiderMiddleTransform(self.vmin, self.vmax, self.focus, self.share)

    def set_default_locators_and_formatters(self, axis):
        axis.set_major_locator(WiderMiddleLocator(self.vmin, self.vmax, self.focus, self.share))
        axis.set_major_formatter(CompactFormatter())
        axis.set_minor_locator(ticker.NullLocator())
        axis.set_minor_formatter(ticker.NullFormatter())

    def limit_range_for_scale(self, vmin, vmax, minpos):
        """Keep view limits inside [vmin, vmax]; a range wholly outside falls back to it."""
        lo, hi = np.clip([vmin, vmax], self.vmin, self.vmax)
        if lo == hi:
            return (self.vmin, self.vmax) if vmin <= vmax else (self.vmax, self.vmin)
        return lo, hi

    def val_in_range(self, val):
        # Every finite value is drawable (it is clipped to the ends), so none is dropped.
        arr = np.asarray(val, dtype=float)
        result = np.isfinite(arr)
        return bool(result) if arr.ndim == 0 else result


mscale.register_scale(WiderMiddleScale)
