"""Screening before the model, and drift detectors calibrated on a reference file."""

from __future__ import annotations

import numpy as np
import pytest

from bastion.errors import ConfigurationError
from bastion.serve.screening import build_screener


class ListSink:
    def __init__(self) -> None:
        self.alerts: list = []

    def send(self, alert) -> None:
        self.alerts.append(alert)


def test_contract_screening_rejects_out_of_distribution_samples(make_gateway, digits_np):
    h = make_gateway(_with_screening("reject"))
    x = digits_np[0]
    clean = h.predict(x[1400:1450])
    assert clean.status_code == 200, clean.text
    ood = x[1450:1454].copy()
    ood[1] = 1.0 - ood[1]  # an inverted digit: inside the value range, far from the data
    r = h.predict(ood)
    assert r.status_code == 422
    assert r.json()["error"] == "screened_out" and "[1]" in r.json()["detail"]
    assert 'bastion_screened_total{action="reject",model="digits"} 1.0' in \
        h.metrics()


def test_flag_mode_serves_and_names_the_flagged_samples(make_gateway, digits_np):
    h = make_gateway(_with_screening("flag"))
    ood = digits_np[0][1450:1454].copy()
    ood[2] = 1.0 - ood[2]
    r = h.predict(ood)
    assert r.status_code == 200
    assert r.json()["flagged"] == [2] and len(r.json()["predictions"]) == 4


def test_plugin_screener_and_bad_specs(model_files):
    from bastion.data.contracts import load_contract
    from bastion.serve.config import ModelSettings

    settings = ModelSettings(name="m", path="x")
    contract = load_contract(model_files["contract"])
    with pytest.raises(ConfigurationError, match="cannot be imported"):
        build_screener("nowhere.module:make", contract=contract, settings=settings)
    with pytest.raises(ConfigurationError, match="needs the model's 'contract'"):
        build_screener("contract", contract=None, settings=settings)
    with pytest.raises(ConfigurationError, match="has no 'name'"):
        build_screener("builtins:dict", contract=contract, settings=settings)


def test_ks_drift_from_a_reference_file(make_gateway, digits_np, tmp_path):
    x = digits_np[0]
    np.save(tmp_path / "reference.npy", x[:1000])
    sink = ListSink()
    h = make_gateway({"monitoring": {"drift": {"enabled": True, "method": "ks", "window": 100,
                                               "reference": str(tmp_path / "reference.npy"),
                                               "p_value": 0.01},
                                     "extraction": {"enabled": False}}}, alert_sinks=[sink])
    for start in range(1400, 1600, 50):
        assert h.predict(x[start:start + 50]).status_code == 200
    h.gateway.drain()
    assert h.gateway.monitors["digits"].drift.windows_tested == 2 and sink.alerts == []
    shifted = np.clip(x[1600:1700] * 0.8 + 0.2, 0, 1).astype(np.float32)
    for start in (0, 50):  # one window of 100 drifted samples
        assert h.predict(shifted[start:start + 50]).status_code == 200
    h.gateway.drain()
    assert [a.kind for a in sink.alerts] == ["drift"]
    assert 'bastion_drift_p_value{method="ks",model="digits"}' in h.metrics()


def _with_screening(action: str) -> dict:
    return {"model": {"screening": {"detector": "contract", "action": action}}}
