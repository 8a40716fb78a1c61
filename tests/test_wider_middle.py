"""The "wider_middle" matplotlib scale: exact inverse, monotonic, share of the axis, clipping, ticks."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import example, given  # noqa: E402
from hypothesis import strategies as st

from fwdrev import wider_middle as wm  # noqa: E402

PAPER = dict(vmin=-1.5, vmax=1.5, focus=(0.05, 0.1), share=0.25)


@st.composite
def scale_params(draw):
    """Valid (vmin, vmax, focus, share) with pieces of at least 1e-3 length."""
    vmin = draw(st.floats(-1e3, 1e3))
    gaps = [draw(st.floats(1e-3, 1e3)) for _ in range(3)]
    a, b = vmin + gaps[0], vmin + gaps[0] + gaps[1]
    share = draw(st.floats(0.01, 0.99))
    return dict(vmin=vmin, vmax=b + gaps[2], focus=(a, b), share=share)


@given(params=scale_params(), u=st.floats(0.0, 1.0))
def test_inverse_of_forward_is_identity(params, u):
    x = params["vmin"] + u * (params["vmax"] - params["vmin"])
    back = wm.inverse(wm.forward(x, **params), **params)
    assert back == pytest.approx(x, rel=1e-9, abs=1e-9 * (params["vmax"] - params["vmin"]))


@given(params=scale_params())
@example(params=dict(vmin=0.0, vmax=244.001, focus=(243.0, 244.0), share=0.98828125))  # tiny upper piece
def test_forward_strictly_increasing_and_hits_breakpoints(params):
    x = np.linspace(params["vmin"], params["vmax"], 2001)
    y = wm.forward(x, **params)
    assert np.all(np.diff(y) > 0)
    a, b = params["focus"]
    ya, yb = wm.forward([a, b], **params)
    assert yb - ya == pytest.approx(params["share"])
    assert wm.forward([params["vmin"], params["vmax"]], **params) == pytest.approx([0.0, 1.0])
    # Outer pieces share the rest in proportion to their data lengths. Compared as axis
    # fractions with an absolute tolerance: a ratio of two tiny fractions is ill-conditioned.
    below, above = a - params["vmin"], params["vmax"] - b
    rest = 1.0 - params["share"]
    assert ya == pytest.approx(rest * below / (below + above), abs=1e-12)
    assert 1.0 - yb == pytest.approx(rest * above / (below + above), abs=1e-12)


def test_transform_and_inverted_round_trip_on_dense_sweep():
    t = wm.WiderMiddleTransform(**PAPER)
    x = np.linspace(-1.5, 1.5, 10001)
    assert np.allclose(t.inverted().transform_non_affine(t.transform_non_affine(x)), x, atol=1e-12)
    assert isinstance(t.inverted().inverted(), wm.WiderMiddleTransform)


def test_values_outside_are_clipped_to_the_ends():
    assert wm.forward([-10.0, -1.5, 1.5, 99.0], **PAPER) == pytest.approx([0.0, 0.0, 1.0, 1.0])
    assert wm.inverse([-0.5, 1.5], **PAPER) == pytest.approx([-1.5, 1.5])
    assert np.isnan(wm.forward(np.nan, **PAPER))


def _axes(**params):
    fig, ax = plt.subplots(figsize=(3, 4), dpi=100)
    ax.set_yscale("wider_middle", **params)
    ax.set_ylim(params["vmin"], params["vmax"])
    fig.canvas.draw()
    return fig, ax


@pytest.mark.parametrize("params", [PAPER, dict(vmin=-3, vmax=0.5, focus=(-0.4, -0.3), share=0.4),
                                    dict(vmin=0, vmax=100, focus=(90, 95), share=0.1)])
def test_focus_takes_requested_share_of_the_axis_in_display_space(params):
    fig, ax = _axes(**params)
    y = lambda v: ax.transData.transform([[0.0, v]])[0, 1]  # noqa: E731
    a, b = params["focus"]
    share = (y(b) - y(a)) / (y(params["vmax"]) - y(params["vmin"]))
    assert share == pytest.approx(params["share"], rel=0.01)
    assert y(params["vmax"]) - y(params["vmin"]) == pytest.approx(ax.bbox.height)
    plt.close(fig)


def test_points_outside_the_range_are_drawn_on_the_frame_not_lost():
    fig, ax = _axes(**PAPER)
    line, = ax.plot([0, 1, 2], [-5.0, 0.07, 5.0])
    fig.canvas.draw()
    ys = line.get_transform().transform(np.column_stack([line.get_xdata(), line.get_ydata()]))[:, 1]
    assert np.all(np.isfinite(ys))
    assert ys[0] == pytest.approx(ax.bbox.y0) and ys[2] == pytest.approx(ax.bbox.y1)
    plt.close(fig)


def test_limits_are_kept_inside_the_scale_and_every_finite_value_is_in_range():
    fig, ax = _axes(**PAPER)
    ax.set_ylim(-3, 3)
    assert ax.get_ylim() == pytest.approx((-1.5, 1.5))
    ax.set_ylim(-1.0, 0.5)
    assert ax.get_ylim() == pytest.approx((-1.0, 0.5))
    ax.set_ylim(5.0, 6.0)  # wholly outside: the scale's own range
    assert ax.get_ylim() == pytest.approx((-1.5, 1.5))
    scale = wm.WiderMiddleScale(ax.yaxis, **PAPER)
    assert scale.limit_range_for_scale(5.0, 6.0, 1e-300) == (-1.5, 1.5)
    assert list(scale.val_in_range(np.array([-9.0, 0.0, 9.0, np.nan]))) == [True, True, True, False]
    plt.close(fig)


def test_default_ticks_include_ends_and_focus_and_do_not_overlap():
    for params in (PAPER, dict(vmin=-2, vmax=2, focus=(-0.1, 0.3), share=0.5)):
        fig, ax = _axes(**params)
        ticks = ax.get_yticks()
        for v in (params["vmin"], params["vmax"], *params["focus"]):
            assert np.any(np.isclose(ticks, v)), (v, ticks)
        assert len(ticks) >= 6  # linear ticks are added where there is room
        boxes = [t.get_window_extent() for t in ax.get_yticklabels() if t.get_text()]
        assert len(boxes) == len(ticks)
        for first, second in zip(boxes, boxes[1:]):
            assert not first.overlaps(second)
        plt.close(fig)


def test_paper_ticks_and_compact_labels():
    fig, ax = _axes(**PAPER)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert {"\N{MINUS SIGN}1.5", "0.05", "0.1", "1.5", "1"} <= set(labels)
    assert "0" not in labels  # too close to the 0.05 focus bound on a 4-inch axis
    fmt = wm.CompactFormatter()
    assert [fmt(v) for v in (-0.0, 1.0, 0.075, 1e-17, 12345.0)] == ["0", "1", "0.075", "0", "1.23e+04"]
    plt.close(fig)


@pytest.mark.parametrize("kwargs, message", [
    (dict(vmin=1, vmax=-1, focus=(0, 0.5), share=0.3), "vmin < a < b < vmax"),
    (dict(vmin=-1, vmax=1, focus=(0.5, 0.2), share=0.3), "vmin < a < b < vmax"),
    (dict(vmin=-1, vmax=1, focus=(-2, 0.2), share=0.3), "vmin < a < b < vmax"),
    (dict(vmin=-1, vmax=1, focus=(0, 0.2), share=1.0), "share"),
    (dict(vmin=-1, vmax=1, focus=(0, 0.2), share=0), "share"),
    (dict(vmin=-1, vmax=1, focus=0.2, share=0.5), "focus must be a pair"),
    (dict(vmin=-1, vmax=np.inf, focus=(0, 0.2), share=0.5), "finite"),
])
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        wm.forward(0.0, **kwargs)
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match=message):
        ax.set_yscale("wider_middle", **kwargs)
    plt.close(fig)
