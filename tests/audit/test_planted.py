"""End to end: a model or data set with a planted weakness, audited from files with
``run_audit``, is caught by the right check (and the audit says which, with a finding)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bastion.attacks.poisoning import BadNets
from bastion.audit.config import AuditConfig, AuditThreat
from bastion.audit.findings import Severity
from bastion.audit.runner import run_audit
from bastion.data import load_digits
from bastion.models.zoo import small_cnn, small_mlp, train_classifier

MEMBERSHIP = {"n_reference": 2, "reference_epochs": 10, "max_samples": 200, "bootstrap": 50}
RANK = {s.value: s.rank for s in Severity}


def _cnn() -> nn.Module:
    return small_cnn((1, 8, 8), 10, width=8)


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_digits()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    return data.x[perm], data.y[perm]


def _files(d: Path, net: nn.Module, train: tuple, test: tuple) -> dict[str, Path]:
    """A torch state dict (loaded through a factory, as users ship weights) and the data."""
    d.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), d / "model.pt")
    np.savez(d / "train.npz", x=train[0].numpy(), y=train[1].numpy())
    np.savez(d / "test.npz", x=test[0].numpy(), y=test[1].numpy())
    return {"model": d / "model.pt", "train": d / "train.npz", "test": d / "test.npz"}


def _audit(files: dict[str, Path], out: Path, check: str, factory, **kw) -> dict:
    config = AuditConfig(model=str(files["model"]), train=files["train"], test=files["test"],
                         out=out, only=(check,), model_options={"factory": factory}, **kw)
    doc = run_audit(config, formats=("json",)).document
    return next(c for c in doc["checks"] if c["name"] == check)


def test_overfit_model_is_a_membership_finding(digits, tmp_path) -> None:
    x, y = digits
    torch.manual_seed(0)
    net = train_classifier(small_mlp(64, 10, hidden=256), x[:100], y[:100], epochs=100,
                           lr=3e-3, seed=0)
    files = _files(tmp_path, net, (x[:100], y[:100]), (x[1400:], y[1400:]))
    entry = _audit(files, tmp_path / "audit", "membership",
                   lambda: small_mlp(64, 10, hidden=256), settings={"membership": MEMBERSHIP})
    assert entry["status"] == "failed"
    worst = max(entry["findings"], key=lambda f: RANK[f["severity"]])
    assert worst["id"].startswith("membership.") and RANK[worst["severity"]] >= RANK["medium"]


def test_full_scores_and_a_big_budget_is_an_extraction_finding(digits, tmp_path) -> None:
    x, y = digits
    torch.manual_seed(0)
    net = train_classifier(small_cnn((1, 8, 8), 10, width=8), x[:1400], y[:1400], epochs=10,
                           lr=3e-3, seed=0)
    files = _files(tmp_path, net, (x[:1400], y[:1400]), (x[1400:], y[1400:]))
    entry = _audit(files, tmp_path / "audit", "extraction", _cnn,
                   threat=AuditThreat(access="scores", query_budget=10_000))
    assert entry["status"] == "failed"
    assert "extraction.high-fidelity" in {f["id"] for f in entry["findings"]}
    assert entry["metrics"]["fidelity"]["value"] >= 0.9


def test_planted_backdoor_is_a_poisoning_finding(digits, tmp_path) -> None:
    x, y = digits[0][:1400], digits[1][:1400]
    poisoned = BadNets(target_class=0, rate=0.05, seed=0).poison(x, y)
    torch.manual_seed(0)
    net = train_classifier(small_cnn((1, 8, 8), 10, width=8), poisoned.x, poisoned.y,
                           epochs=10, lr=3e-3, seed=0)
    files = _files(tmp_path, net, (poisoned.x, poisoned.y), (digits[0][1400:],
                                                             digits[1][1400:]))
    entry = _audit(files, tmp_path / "audit", "poisoning", _cnn)
    assert entry["status"] == "failed"
    [finding] = [f for f in entry["findings"] if f["id"] == "poisoning.suspected-backdoor"]
    assert finding["location"] == "class:0"
