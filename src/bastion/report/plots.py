"""Charts of a report, drawn by matplotlib (Agg) from the plot data a check returns.

A check never draws: it returns plot *data* (``{"kind", "title", "series", ...}``, see the
``plot`` definition of ``audit-1.schema.json``) and this module turns it into inline SVG (line,
ROC, histogram and bar charts) or inline PNG data URIs (images). Every label comes from the
document and may come from an untrusted file: with ``svg.fonttype = "path"`` matplotlib writes
text as glyph outlines, so no label reaches the page as markup.

:func:`figure` returns the matplotlib figure itself, so tests can check what a reader sees
(tick labels, log decades, where the legend sits) without parsing SVG.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import math
import re
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["PLOT_KINDS", "decade_label", "figure", "image_cells", "png_data_uri", "svg"]

#: The plot kinds of the schema that are drawn as charts (``images`` are drawn cell by cell).
PLOT_KINDS = ("line", "roc", "histogram", "bar")

_PALETTE = ("#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#be185d")
_RC = {
    "svg.fonttype": "path",
    "svg.hashsalt": "bastion",
    "text.parse_math": False,  # labels are untrusted text, never mathtext
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e5e7ee",
    "grid.linewidth": 0.6,
}
_ids = itertools.count()
_LEGEND_CHARS = 40
_TICK_CHARS = 18
_TITLE_CHARS = 72
_MAX_IMAGE_SIDE = 512


def _mpl() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    return matplotlib


def _floats(values: Sequence[Any] | None) -> np.ndarray:
    """Numbers of a series as floats; ``None`` and non-numbers become NaN (not drawn)."""
    out = []
    for v in values or ():
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            out.append(math.nan)
    return np.asarray(out, dtype=float)


def _categorical(values: Sequence[Any]) -> bool:
    return any(isinstance(v, str) for v in values)


def figure(plot: dict[str, Any]) -> Figure:
    """The matplotlib figure of a ``line``, ``roc``, ``histogram`` or ``bar`` plot."""
    mpl = _mpl()
    from matplotlib.figure import Figure

    kind = plot.get("kind")
    with mpl.rc_context(_RC):
        fig = Figure(figsize=(6.4, 3.8), layout="constrained")
        ax = fig.add_subplot()
        series = [s for s in plot.get("series") or [] if isinstance(s, dict)]
        if kind == "roc":
            _roc(ax, series, plot)
        elif kind == "histogram":
            _histogram(ax, series)
        elif kind == "bar":
            _bar(ax, series)
        else:
            _line(ax, series, plot)
        title = textwrap.wrap(" ".join(str(plot.get("title", "")).split()), _TITLE_CHARS)
        ax.set_title("\n".join(title[:2]) + (" …" if len(title) > 2 else ""), loc="left")
        ax.set_xlabel(_short(plot.get("x_label", ""), 80))
        ax.set_ylabel(_short(plot.get("y_label", ""), 50))
        labels = ax.get_legend_handles_labels()[1]
        if labels:
            # Outside the axes, below them: a legend never covers a curve.
            wide = max(len(label) for label in labels) > 22
            fig.legend(loc="outside lower center", ncols=1 if wide else min(3, len(labels)),
                       frameon=False)
        if not ax.has_data():
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", color="#667")
    return fig


def _short(text: Any, limit: int) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _label(s: dict[str, Any], i: int) -> str:
    # matplotlib hides legend labels that start with an underscore; keep the user's text.
    label = _short(s.get("label", f"series {i + 1}"), _LEGEND_CHARS)
    return " " + label if label.startswith("_") else label


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def decade_label(value: float, _pos: int | None = None) -> str:
    """``10⁻³`` for a power of ten (``1`` for 10⁰); empty between decades."""
    if value <= 0:
        return ""
    exponent = math.log10(value)
    if abs(exponent - round(exponent)) > 1e-9:
        return ""
    e = round(exponent)
    return "1" if e == 0 else "10" + str(e).translate(_SUPERSCRIPT)


def _line(ax: Axes, series: list[dict[str, Any]], plot: dict[str, Any]) -> None:
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    all_x: list[float] = []
    categories: list[str] = []
    for s in series:
        if _categorical(s.get("x") or []):
            categories += [str(v) for v in s.get("x") or [] if str(v) not in categories]
    for i, s in enumerate(series):
        raw_x = s.get("x") or list(range(len(s.get("y") or [])))
        x = (np.asarray([categories.index(str(v)) for v in raw_x], dtype=float) if categories
             else _floats(raw_x))
        y = _floats(s.get("y"))
        n = min(len(x), len(y))
        x, y = x[:n], y[:n]
        colour = _PALETTE[i % len(_PALETTE)]
        ax.plot(x, y, marker="o", markersize=4, color=colour, label=_label(s, i))
        lo, hi = _floats(s.get("lo"))[:n], _floats(s.get("hi"))[:n]
        if len(lo) == n and len(hi) == n and n:
            ax.fill_between(x, lo, hi, color=colour, alpha=0.15, linewidth=0)
        all_x += [v for v in x.tolist() if math.isfinite(v)]
    if plot.get("log_x"):
        ax.set_xscale("log")
    if plot.get("log_y"):
        ax.set_yscale("log")
    finite_y = [v for s in series for v in _floats(s.get("y")).tolist() if math.isfinite(v)]
    if finite_y and not plot.get("log_y") and min(finite_y) >= 0 and max(finite_y) <= 1:
        ax.set_ylim(-0.02, 1.02)  # a proportion: show all of [0, 1]
    if categories:
        _category_ticks(ax, categories)
        return
    if all_x and not plot.get("log_x"):
        lo_x, hi_x = min(all_x), max(all_x)
        if hi_x == lo_x:  # one point (or one x): a sane range around it, not 980 980 981
            pad = abs(lo_x) * 0.5 or 1.0
            ax.set_xlim(lo_x - pad, hi_x + pad)
        if all(float(v).is_integer() for v in all_x):
            ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
        formatter = ScalarFormatter(useOffset=False)
        formatter.set_scientific(False)
        ax.xaxis.set_major_formatter(formatter)


def _roc(ax: Axes, series: list[dict[str, Any]], plot: dict[str, Any]) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    log_x = plot.get("log_x", True)
    log_y = plot.get("log_y", True)
    floor = 1.0
    for i, s in enumerate(series):
        x, y = _floats(s.get("x")), _floats(s.get("y"))
        n = min(len(x), len(y))
        x, y = x[:n], y[:n]
        positive = x[(x > 0) & np.isfinite(x)]
        if len(positive):
            floor = min(floor, float(positive.min()))
        if log_x or log_y:  # zeros have no place on a log axis; keep the rest of the curve
            keep = ((x > 0) if log_x else np.isfinite(x)) & ((y > 0) if log_y else np.isfinite(y))
            x, y = x[keep], y[keep]
        if str(s.get("label", "")).strip().lower() == "chance":
            continue  # drawn once, below, over the whole axis
        ax.plot(x, y, color=_PALETTE[i % len(_PALETTE)], linewidth=1.6, label=_label(s, i))
    low = 10 ** math.floor(math.log10(floor)) if log_x else 0.0
    low = min(low, 1e-3) if log_x else low
    grid = np.logspace(math.log10(low), 0, 50) if log_x else np.linspace(0, 1, 50)
    ax.plot(grid, grid, linestyle="--", color="#9ca3af", linewidth=1, label="chance")
    for axis, is_log in ((ax.xaxis, log_x), (ax.yaxis, log_y)):
        if is_log:
            (ax.set_xscale if axis is ax.xaxis else ax.set_yscale)("log")
            axis.set_major_locator(LogLocator(base=10, numticks=12))
            axis.set_major_formatter(FuncFormatter(decade_label))
            axis.set_minor_formatter(NullFormatter())
    ax.set_xlim(low, 1.0)
    ax.set_ylim(low if log_y else 0.0, 1.02 if not log_y else 1.0)


def _histogram(ax: Axes, series: list[dict[str, Any]]) -> None:
    raw = [_floats(s.get("values")) for s in series]
    raw = [v[np.isfinite(v)] for v in raw]
    finite = np.concatenate(raw) if raw else np.zeros(0)
    edges: list[float] | int = 30
    if len(finite):
        lo, hi = float(finite.min()), float(finite.max())
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, 31).tolist()
    for i, (s, values) in enumerate(zip(series, raw, strict=True)):
        colour = _PALETTE[i % len(_PALETTE)]
        if len(values):
            ax.hist(values, bins=edges, alpha=0.55, color=colour, label=_label(s, i))
        elif s.get("x") is not None and s.get("y") is not None:  # pre-binned counts
            x, y = _floats(s.get("x")), _floats(s.get("y"))
            n = min(len(x), len(y))
            width = float(np.min(np.diff(x[:n]))) if n > 1 else 1.0
            ax.bar(x[:n], y[:n], width=width, alpha=0.55, color=colour, label=_label(s, i))
    ax.set_ylabel("count")


def _bar(ax: Axes, series: list[dict[str, Any]]) -> None:
    categories: list[str] = []
    for s in series:
        categories += [str(v) for v in s.get("x") or [] if str(v) not in categories]
    width = 0.8 / max(1, len(series))
    for i, s in enumerate(series):
        xs = [str(v) for v in s.get("x") or []]
        y = _floats(s.get("y"))
        n = min(len(xs), len(y))
        pos = np.asarray([categories.index(v) for v in xs[:n]], dtype=float)
        pos = pos - 0.4 + width * (i + 0.5)
        lo, hi = _floats(s.get("lo"))[:n], _floats(s.get("hi"))[:n]
        yerr = None
        if len(lo) == n and len(hi) == n and n:
            yerr = np.vstack([np.clip(y[:n] - lo, 0, None), np.clip(hi - y[:n], 0, None)])
        ax.bar(pos, y[:n], width=width, color=_PALETTE[i % len(_PALETTE)], label=_label(s, i),
               yerr=yerr, ecolor="#374151", capsize=2)
    _category_ticks(ax, categories)
    ax.grid(axis="x", visible=False)


def _category_ticks(ax: Axes, categories: list[str]) -> None:
    labels = [_short(c, _TICK_CHARS) for c in categories]
    rotate = len(labels) > 8 or any(len(c) > 8 for c in labels)
    ax.set_xticks(range(len(labels)), labels, rotation=45 if rotate else 0,
                  ha="right" if rotate else "center", rotation_mode="anchor")


_ID = re.compile(r'\bid="([^"]+)"')


def svg(plot: dict[str, Any]) -> str:
    """The plot as an inline ``<svg>`` element that scales to its container.

    Ids inside matplotlib's SVG (glyphs, clip paths) are made unique per chart, since several
    charts share one HTML document; the XML prologue and the metadata block are dropped.
    """
    mpl = _mpl()
    fig = figure(plot)
    buf = io.StringIO()
    with mpl.rc_context(_RC):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"<metadata>.*?</metadata>\s*|<!--.*?-->", "", text, flags=re.S)
    prefix = f"c{next(_ids)}-"
    ids = set(_ID.findall(text))
    text = _ID.sub(lambda m: f'id="{prefix}{m.group(1)}"', text)
    text = re.sub(
        r'(href="#|url\(#)([^")]+)',
        lambda m: m.group(1) + (prefix + m.group(2) if m.group(2) in ids else m.group(2)),
        text,
    )
    title = html.escape(_short(plot.get("title", "chart"), 200), quote=True)
    text = re.sub(r'<svg ([^>]*?)width="[^"]*" height="[^"]*"',
                  f'<svg class="chart" role="img" aria-label="{title}" \\1', text, count=1)
    return text


def png_data_uri(pixels: Any) -> str:
    """A ``data:image/png;base64,...`` URI of an image in [0, 1] (H×W, H×W×C or C×H×W)."""
    mpl = _mpl()
    from matplotlib import image

    arr = np.asarray(pixels, dtype=float)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)) or arr.size == 0:
        raise ValueError(f"an image must be H×W, H×W×C or C×H×W, got shape {list(arr.shape)}")
    if max(arr.shape[:2]) > _MAX_IMAGE_SIDE:
        step = math.ceil(max(arr.shape[:2]) / _MAX_IMAGE_SIDE)
        arr = arr[::step, ::step]
    arr = np.clip(np.nan_to_num(arr, nan=0.0), 0.0, 1.0)
    buf = io.BytesIO()
    with mpl.rc_context(_RC):
        image.imsave(buf, arr, cmap="gray", vmin=0.0, vmax=1.0, format="png",
                     metadata={"Software": ""})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def image_cells(plot: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of an ``images`` plot with each cell's PNG URI (or why it could not be drawn)."""
    rows = []
    for row in plot.get("images") or []:
        cells = []
        for cell in row.get("cells") or []:
            try:
                cells.append({"label": str(cell.get("label", "")),
                              "uri": png_data_uri(cell.get("pixels")), "error": None})
            except (TypeError, ValueError) as exc:
                cells.append({"label": str(cell.get("label", "")), "uri": None,
                              "error": str(exc)})
        rows.append({"caption": str(row.get("caption", "")), "cells": cells})
    return rows
