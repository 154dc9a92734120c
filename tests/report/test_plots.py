"""Charts as a reader sees them: sane axes for one point, log decades, legends off the data."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from bastion.report.plots import decade_label, figure, png_data_uri, svg


def _draw(fig: Figure) -> FigureCanvasAgg:
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas


def _ticks(fig: Figure, axis: str = "x") -> list[str]:
    _draw(fig)
    ax = fig.axes[0]
    labels = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
    lo, hi = ax.get_xlim() if axis == "x" else ax.get_ylim()
    ticks = ax.get_xticks() if axis == "x" else ax.get_yticks()
    return [t.get_text() for t, v in zip(labels, ticks, strict=True)
            if min(lo, hi) <= v <= max(lo, hi)]


def test_one_point_gets_distinct_readable_ticks() -> None:
    fig = figure({"kind": "line", "title": "Fidelity vs queries", "x_label": "queries",
                  "series": [{"label": "knockoff", "x": [980], "y": [0.41]}]})
    labels = _ticks(fig)
    assert len(labels) >= 3 and len(set(labels)) == len(labels), labels
    assert all(label.lstrip("−-").isdigit() for label in labels), labels  # integers, no offset
    lo, hi = fig.axes[0].get_xlim()
    assert lo < 980 < hi and hi - lo >= 100
    assert fig.axes[0].get_ylim() == pytest.approx((-0.02, 1.02))  # a proportion: all of [0, 1]


def test_roc_is_log_log_ticked_at_decades_with_a_chance_line() -> None:
    fpr = np.logspace(-3, 0, 30)
    fig = figure({"kind": "roc", "title": "ROC", "series": [
        {"label": "lira", "x": [0.0, *fpr], "y": [0.0, *(fpr ** 0.5)]},
        {"label": "chance", "x": [0.01, 1.0], "y": [0.01, 1.0]}]})
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert _ticks(fig, "x") == ["10⁻³", "10⁻²", "10⁻¹", "1"]
    assert _ticks(fig, "y") == ["10⁻³", "10⁻²", "10⁻¹", "1"]
    assert [line.get_label() for line in ax.get_lines()] == ["lira", "chance"]
    chance = ax.get_lines()[1]
    assert np.allclose(chance.get_xdata(), chance.get_ydata())


@pytest.mark.parametrize("kind", ["line", "roc", "histogram", "bar"])
def test_the_legend_never_covers_the_plot(kind: str) -> None:
    x = [0.001, 0.01, 0.1, 0.5, 1.0]
    series: list[dict[str, Any]] = [
        {"label": f"series {i} with a long name " + "y" * 30, "x": x if kind != "bar" else
         ["a", "b", "c", "d", "e"], "y": [v ** (0.3 + i / 5) for v in x],
         "values": list(np.random.default_rng(i).normal(i, 1, 50))} for i in range(4)]
    fig = figure({"kind": kind, "title": "t", "series": series})
    renderer = _draw(fig).get_renderer()
    legend = fig.legends[0].get_window_extent(renderer)
    axes = fig.axes[0].get_window_extent(renderer)
    assert not legend.overlaps(axes)
    figure_box = fig.bbox
    assert legend.x0 >= figure_box.x0 and legend.x1 <= figure_box.x1  # not cut off either


def test_labels_are_text_never_markup_or_mathtext() -> None:
    hostile = r"$\frac{1}{$ <script>alert(1)</script> --> ]]>"
    out = svg({"kind": "line", "title": hostile, "x_label": hostile, "series": [
        {"label": hostile, "x": ["a<b", "c"], "y": [0.2, 0.3]}]})
    assert out.startswith('<svg class="chart"') and "<script" not in out
    assert "<!--" not in out and "<metadata" not in out and "<?xml" not in out


def test_histogram_of_values_and_of_prebinned_counts() -> None:
    fig = figure({"kind": "histogram", "title": "scores", "series": [
        {"label": "clean", "values": [0.1, 0.2, 0.2, 0.3, float("nan")]},
        {"label": "counts", "x": [0, 1, 2], "y": [3, 5, 1]}]})
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert sum(heights[:30]) == 4  # the NaN is left out
    assert heights[30:] == [3, 5, 1]


def test_bar_chart_with_intervals_and_long_category_names() -> None:
    fig = figure({"kind": "bar", "title": "per class", "series": [
        {"label": "robust", "x": ["cat", "dog", "x" * 200], "y": [0.2, 0.5, 0.9],
         "lo": [0.1, 0.4, 0.8], "hi": [0.3, 0.6, 1.0]}]})
    labels = _ticks(fig)
    assert labels[:2] == ["cat", "dog"] and len(labels[2]) <= 18 and labels[2].endswith("…")
    assert [round(p.get_height(), 3) for p in fig.axes[0].patches] == [0.2, 0.5, 0.9]


def test_images_become_png_data_uris_of_the_right_shape() -> None:
    rgb = np.random.default_rng(0).uniform(0, 1, (3, 5, 7))
    for pixels, shape in ((rgb, (5, 7)), (np.zeros((1, 4, 6)), (4, 6)),
                          (np.ones((8, 8)) * 2.0, (8, 8))):
        uri = png_data_uri(pixels.tolist())
        assert uri.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
        assert image.size == (shape[1], shape[0])
    with pytest.raises(ValueError, match="got shape"):
        png_data_uri([[[[0.0]]]])


def test_decade_labels() -> None:
    assert [decade_label(v) for v in (1e-4, 0.01, 1.0, 10.0, 0.05, 0.0)] == [
        "10⁻⁴", "10⁻²", "1", "10¹", "", ""]
