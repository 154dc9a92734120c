"""The hardening report page: before/after, curves as charts, privacy section for DP."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bastion._io import atomic_write_text
from bastion.report.harden import render_harden_html

from .conftest import HOSTILE

DATA = Path(__file__).parent / "data"


def _doc(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((DATA / f"harden-{name}.json").read_text())
    return doc


def _with_privacy(doc: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    doc["privacy"] = {  # the shape `harden dp` writes, plus intervals and curves
        "before": {"attack": "loss", "n_members": 400,
                   "auc": {"value": 0.64, "ci": [0.6, 0.68], "ci_method": "bootstrap"},
                   "tpr_at_0_1pct_fpr": 0.012, "tpr_at_1pct_fpr": 0.05},
        "after": {"attack": "loss", "n_members": 400,
                  "auc": {"value": 0.51, "ci": [0.47, 0.55], "ci_method": "bootstrap"},
                  "tpr_at_0_1pct_fpr": 0.001, "tpr_at_1pct_fpr": 0.011},
        "roc": {"before": {"fpr": [0.001, 0.01, 0.1, 1.0], "tpr": [0.012, 0.05, 0.3, 1.0]},
                "after": {"fpr": [0.001, 0.01, 0.1, 1.0], "tpr": [0.001, 0.011, 0.1, 1.0]}},
    }
    return doc


def test_dp_report_shows_the_privacy_effect() -> None:
    page = render_harden_html(_with_privacy(_doc("dp")))
    section = page[page.index("Privacy: membership inference"):page.index("<h2>Attacks")]
    assert "TPR at 0.1% FPR" in section and "TPR at 1% FPR" in section
    assert "0.012" in section and "0.001" in section and "-0.011" in section
    assert "0.64 (0.6 – 0.68)" in section and "AUC" in section
    assert section.count('<svg class="chart"') == 1  # the ROC before/after
    assert "membership attack: TPR at 0.1% FPR" in page  # headline cards
    assert "membership attack: TPR at 1% FPR" in page
    assert "(loss attack, 400 members)" in section and "<td>loss</td>" not in section
    assert "Privacy: membership" not in render_harden_html(_doc("dp"))


def test_curves_are_charts_and_smoothing_shows_certified_accuracy() -> None:
    dp = render_harden_html(_doc("dp"))
    assert dp.count('<svg class="chart"') == 1 and "Robustness curve (pgd)" in dp
    smooth = render_harden_html(_doc("smooth"))
    assert "Certified accuracy (randomized smoothing)" in smooth
    assert smooth.count('<svg class="chart"') == 2
    assert "abstention rate before" in smooth


def test_untrusted_names_are_escaped() -> None:
    doc = _doc("dp")
    doc["data"]["source"] = HOSTILE
    doc["after"]["warnings"] = [HOSTILE]
    page = render_harden_html(doc)
    assert "<script" not in page and "&lt;script&gt;" in page


@pytest.mark.parametrize("name", ["dp", "smooth"])
def test_harden_pages_render_cleanly_in_chromium(
        name: str, check_page: Callable[..., list[Any]], tmp_path: Path) -> None:
    path = atomic_write_text(tmp_path / f"harden-{name}.html",
                             render_harden_html(_with_privacy(_doc(name))))
    check_page(path)
