"""Small, schema-valid audit documents for the tests of diffs, formats and attestations."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

from bastion.audit.contract import finding_fingerprint


def finding(check: str, kind: str, severity: str, *, location: str | None = None,
            title: str | None = None) -> dict[str, Any]:
    return {
        "id": f"{check}.{kind}",
        "fingerprint": finding_fingerprint(check, kind, location),
        "location": location,
        "title": title or f"{check} {kind}",
        "severity": severity,
        "threat": check,
        "atlas": ["AML.T0043"],
        "owasp": ["ML01"],
        "evidence": {"n": 100},
        "remediation": f"fix {kind}",
    }


def metric(value: float, lo: float, hi: float, *, higher: bool = True) -> dict[str, Any]:
    return {"value": value, "ci": [lo, hi], "ci_method": "clopper-pearson", "n": 100,
            "higher_is_better": higher, "unit": None, "label": None}


def make_doc(*, model_bytes: bytes = b"weights", robust: tuple[float, float, float] = (
        0.42, 0.32, 0.52), evasion_findings: list[dict[str, Any]] | None = None,
        created: str = "2026-12-01T10:00:00Z") -> dict[str, Any]:
    digest = hashlib.sha256(model_bytes).hexdigest()
    ev = evasion_findings if evasion_findings is not None else [
        finding("evasion", "low-robust-accuracy", "high")
    ]
    checks = [
        {
            "name": "artifact", "title": "Model file", "threat": "unsafe_artifacts",
            "practices": ["regular_updates"], "status": "passed", "metrics": {},
            "findings": [], "seconds": 0.1,
        },
        {
            "name": "evasion", "title": "Evasion", "threat": "evasion",
            "practices": ["model_validation"], "status": "failed" if ev else "passed",
            "metrics": {"robust_accuracy": metric(*robust)}, "findings": ev, "seconds": 2.5,
            "summary": "robust accuracy under attack",
        },
        {
            "name": "membership", "title": "Membership", "threat": "inversion_membership",
            "practices": ["privacy_protection"], "status": "failed",
            "metrics": {"auc": metric(0.61, 0.58, 0.64, higher=False)},
            "findings": [finding("membership", "lira", "medium")], "seconds": 3.0,
        },
        {
            "name": "poisoning", "title": "Poisoning", "threat": "data_poisoning",
            "practices": ["data_validation"], "status": "not_run", "metrics": {},
            "findings": [], "seconds": 0.0, "reason": "needs --train",
            "enable": "pass --train (the training set)",
        },
    ]
    counts = {s: 0 for s in ("info", "low", "medium", "high", "critical")}
    for c in checks:
        for f in c["findings"]:
            counts[f["severity"]] += 1
    order = ["info", "low", "medium", "high", "critical"]
    present = [s for s in order if counts[s]]
    return copy.deepcopy({
        "schema": "bastion.audit/1",
        "bastion_version": "0.1.0",
        "catalogue_version": "1",
        "created": created,
        "seed": 0,
        "model": {"source": "model.pt", "kind": "file", "digest": f"sha256:{digest}",
                  "files": [{"path": "model.pt", "sha256": digest}],
                  "adapter": "TorchClassifier", "capabilities": ["gradients", "scores", "labels"],
                  "input_shape": [1, 8, 8], "num_classes": 10, "bounds": [0.0, 1.0],
                  "domain": "image"},
        "data": {"train": {"source": "train.npz", "sha256": "ab" * 32, "n": 1400},
                 "test": {"source": "test.npz", "sha256": "cd" * 32, "n": 397}},
        "environment": {"python": "3.11", "platform": "linux", "packages": {"torch": "2.13.0"},
                        "device": "cpu"},
        "threat_model": {"access": "white-box", "norm": "linf", "eps": 0.1,
                         "sensitive": ["train"]},
        "plan": [{"check": c["name"], "will_run": c["status"] != "not_run",
                  "reason": c.get("reason")} for c in checks],
        "checks": checks,
        "scorecard": {"threats": [], "practices": [], "cells": []},
        "verdict": {"status": "failed" if present else "passed",
                    "max_severity": present[-1] if present else "none", "counts": counts},
    })
