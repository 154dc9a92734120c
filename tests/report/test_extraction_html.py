"""The extraction page: fidelity vs queries drawn by matplotlib (one point has sane axes)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bastion.report.extraction import render_extraction_html, write_extraction_report

from .conftest import HOSTILE


def _doc(history: list[list[float]]) -> dict[str, Any]:
    return {
        "model": HOSTILE, "data": "d.npz", "strategy": "knockoff", "access": "scores",
        "surrogate": "mlp", "n_pool": 100, "transfer": {"transfer_rate": 0.4, "eps": 0.1},
        "attack": {"attack": "knockoff", "params": {"rounds": 1}, "queries": 980,
                   "query_budget": 1000, "fidelity": 0.91, "accuracy": 0.88,
                   "victim_accuracy": 0.95, "seconds": 1.5, "history": history},
        "hardening": [{"policy": "round:2", "accuracy": 0.95, "accuracy_cost": 0.0,
                       "attacks": {"knockoff": {"blocked": False, "fidelity": 0.7,
                                                "fidelity_drop": 0.21}}}],
        "findings": [{"id": "extraction.high-fidelity", "fingerprint": "0" * 16,
                      "title": "A copy agrees 91%", "severity": "high",
                      "threat": "model stealing", "atlas": [], "owasp": [], "evidence": {},
                      "remediation": "Rate-limit " + HOSTILE}],
    }


def test_one_point_history_and_escaping(tmp_path: Path,
                                        check_page: Callable[..., list[Any]]) -> None:
    page = render_extraction_html(_doc([[980, 0.91]]))
    assert page.count('<svg class="chart"') == 1 and "Output hardening" in page
    assert "<script" not in page and "&lt;script&gt;" in page
    json_path, html_path = write_extraction_report(_doc([[100, 0.5], [980, 0.91]]), tmp_path)
    assert json.loads(json_path.read_text())["kind"] == "extraction"
    check_page(html_path)
