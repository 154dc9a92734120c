"""``bastion data`` pages: drifted columns drawn (reference beside batch), accepted ranges,
untrusted column names escaped, and both pages clean in Chromium."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from bastion.cli import data as data_cli
from bastion.data.contracts import infer_contract, validate
from bastion.data.contracts.drift_plots import drift_plots

from .conftest import HOSTILE, typer_app


def _frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(0)
    ref = pd.DataFrame({"age": rng.integers(18, 90, 400), HOSTILE: rng.gamma(2, 30, 400),
                        "city": rng.choice(["north", "south", "east"], 400),
                        "steady": rng.normal(0, 1, 400)})
    batch = pd.DataFrame({"age": rng.integers(40, 95, 300), HOSTILE: rng.gamma(2, 70, 300),
                          "city": rng.choice(["north", "south", "west"], 300, p=[.2, .2, .6]),
                          "steady": ref["steady"].to_numpy()[::-1][:300]})
    return ref, batch


def test_drift_plots_compare_reference_and_batch_for_drifted_columns_only() -> None:
    ref, batch = _frames()
    contract = infer_contract(ref, name="t")
    drift = validate(batch, contract).to_dict()["drift"]
    assert {d["column"] for d in drift if d["drifted"]} == {"age", HOSTILE, "city"}
    plots = drift_plots(batch, contract, drift)
    kinds = {p["x_label"]: p["kind"] for p in plots}
    assert kinds == {"age": "histogram", HOSTILE: "histogram", "city": "bar"}
    for p in plots:
        reference, current = p["series"]
        assert sum(reference["y"]) == pytest.approx(1.0, abs=1e-4)
        assert sum(current["y"]) == pytest.approx(1.0, abs=1e-4)
    age = next(p for p in plots if p["x_label"] == "age")
    centres, ref_y, cur_y = age["series"][0]["x"], age["series"][0]["y"], age["series"][1]["y"]
    below_40 = [i for i, c in enumerate(centres) if c < 38]
    assert sum(ref_y[i] for i in below_40) > 0.2 and sum(cur_y[i] for i in below_40) == 0
    city = next(p for p in plots if p["kind"] == "bar")
    assert "west" in city["series"][1]["x"]
    assert len(drift_plots(batch, contract, drift, max_plots=1)) == 1



def test_data_pages_render_cleanly(tmp_path: Path, check_page: Callable[..., list[Any]]) -> None:
    ref, batch = _frames()
    ref.to_csv(tmp_path / "ref.csv", index=False)
    batch.to_csv(tmp_path / "batch.csv", index=False)
    runner, app = CliRunner(), typer_app(data_cli.register)
    res = runner.invoke(app, ["data", "infer-contract", str(tmp_path / "ref.csv"), "-o",
                                 str(tmp_path / "c.yaml"), "--report-dir",
                                 str(tmp_path / "contract")])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "contract" / "report.html").read_text()
    assert "accepted range" in page and "<script" not in page
    res = runner.invoke(app, ["data", "validate", str(tmp_path / "batch.csv"), "--contract",
                                 str(tmp_path / "c.yaml"), "--out", str(tmp_path / "v")])
    assert res.exit_code == 1, res.output
    doc = json.loads((tmp_path / "v" / "report.json").read_text())
    assert len(doc["plots"]) == 3
    page = (tmp_path / "v" / "report.html").read_text()
    assert page.count('<svg class="chart"') == 3 and "Drifted columns" in page
    assert "<script" not in page and "&lt;script&gt;" in page
    check_page(tmp_path / "contract" / "report.html")
    check_page(tmp_path / "v" / "report.html")
