"""Plot data of the columns that drifted: the reference beside the batch.

For each drifted numeric column the reference distribution (from the contract's CDF sketch)
and the batch's are binned over the same equal-width bins; for each drifted categorical column
the category frequencies are compared. The result uses the ``plot`` shape of the audit
document (``{"kind", "title", "series", ...}``), so any report renderer draws it.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from bastion.data.contracts._common import cat_key, prepare
from bastion.data.contracts._stats import sketch_cdf
from bastion.data.contracts.model import Contract, TableContract

__all__ = ["drift_plots"]

_BINS = 20
_MAX_CATEGORIES = 15


def _numeric(name: str, sketch: Any, values: np.ndarray) -> dict[str, Any] | None:
    x = values[np.isfinite(values)]
    if not x.size:
        return None
    lo = min(float(sketch.values[0]), float(x.min()))
    hi = max(float(sketch.values[-1]), float(x.max()))
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, _BINS + 1)
    cdf = sketch_cdf(sketch, edges)
    cdf[-1] = 1.0
    reference = np.clip(np.diff(np.concatenate([[0.0], cdf[1:]])), 0.0, 1.0)
    batch = np.histogram(x, bins=edges)[0] / x.size
    centres = ((edges[:-1] + edges[1:]) / 2).round(6).tolist()
    return {"kind": "histogram", "title": f"{name}: reference vs batch",
            "x_label": name, "y_label": "fraction of rows",
            "series": [{"label": "reference", "x": centres, "y": reference.round(6).tolist()},
                       {"label": "batch", "x": centres, "y": batch.round(6).tolist()}]}


def _categorical(name: str, counts: dict[str, int], keys: list[str]) -> dict[str, Any] | None:
    batch = Counter(keys)
    n_ref, n_batch = sum(counts.values()), sum(batch.values())
    if not n_ref or not n_batch:
        return None
    cats = sorted(set(counts) | set(batch), key=lambda c: -(counts.get(c, 0) / n_ref
                                                          + batch.get(c, 0) / n_batch))
    cats = cats[:_MAX_CATEGORIES]
    return {"kind": "bar", "title": f"{name}: category frequencies, reference vs batch",
            "x_label": name, "y_label": "fraction of rows",
            "series": [{"label": "reference", "x": cats,
                        "y": [round(counts.get(c, 0) / n_ref, 6) for c in cats]},
                       {"label": "batch", "x": cats,
                        "y": [round(batch.get(c, 0) / n_batch, 6) for c in cats]}]}


def drift_plots(data: Any, contract: Contract, drift: list[dict[str, Any]], *,
                max_plots: int = 6) -> list[dict[str, Any]]:
    """Plots of the drifted columns of ``drift`` (``ValidationReport.to_dict()["drift"]``),
    the largest test statistic first, at most ``max_plots``."""
    drifted = sorted((d for d in drift if d.get("drifted")),
                     key=lambda d: -(d.get("statistic") or 0.0))
    frame = prepare(data, contract.kind)
    ref = contract.reference
    plots: list[dict[str, Any]] = []
    for d in drifted:
        if len(plots) >= max_plots:
            break
        name = str(d["column"])
        plot = None
        if isinstance(contract, TableContract) and isinstance(frame, pd.DataFrame):
            if name not in frame.columns:
                continue
            if name in ref.sketches:
                values = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float)
                plot = _numeric(name, ref.sketches[name], values)
            elif name in ref.counts:
                keys = [cat_key(v) for v in frame[name].dropna().tolist()]
                plot = _categorical(name, ref.counts[name], keys)
        elif name == "values" and "values" in ref.sketches and isinstance(frame, np.ndarray):
            plot = _numeric("values", ref.sketches["values"],
                            np.asarray(frame, dtype=float).ravel())
        if plot is not None:
            plots.append(plot)
    return plots
