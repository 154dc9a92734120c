"""One call that runs the chosen detectors on a training set and turns flags into findings."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bastion.audit.findings import Finding, Severity
from bastion.defences.data.activation_clustering import ActivationClustering
from bastion.defences.data.confident_learning import ConfidentLearning
from bastion.defences.data.spectral import SpectralSignatures
from bastion.errors import ConfigurationError
from bastion.threat import ATLAS, OWASP

__all__ = ["METHODS", "MethodReport", "PoisonScan", "parse_methods", "scan_poison"]

#: method names accepted by :func:`scan_poison` (and their aliases)
METHODS = {
    "ac": "activation_clustering",
    "activation_clustering": "activation_clustering",
    "spectral": "spectral_signatures",
    "spectral_signatures": "spectral_signatures",
    "cl": "confident_learning",
    "confident_learning": "confident_learning",
}


def parse_methods(text: str | Sequence[str]) -> list[str]:
    """``"ac,spectral,cl"`` → canonical method names, in order, without duplicates."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out: list[str] = []
    for raw in items:
        name = raw.strip().lower().replace("-", "_")
        if not name:
            continue
        if name not in METHODS:
            raise ConfigurationError(
                f"unknown poison-detection method {raw!r}; choose from ac, spectral, cl"
            )
        if METHODS[name] not in out:
            out.append(METHODS[name])
    if not out:
        raise ConfigurationError("give at least one method (ac, spectral, cl)")
    return out


@dataclass(frozen=True)
class MethodReport:
    """What one detector flagged, with its per-class analysis and 2-D projections."""

    method: str
    flags: torch.Tensor
    scores: torch.Tensor
    seconds: float
    classes: list[dict[str, Any]] = field(default_factory=list)
    projections: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    #: method-specific figures (confident learning: ``estimated_noise_rate``)
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def n_flagged(self) -> int:
        return int(self.flags.sum())

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "n_flagged": self.n_flagged,
            "flagged_indices": torch.nonzero(self.flags).flatten().tolist(),
            "seconds": self.seconds,
            "classes": self.classes,
            "stats": self.stats,
        }


@dataclass(frozen=True)
class PoisonScan:
    """The result of :func:`scan_poison`: per-method reports and findings."""

    n: int
    num_classes: int
    layer: str | None
    methods: dict[str, MethodReport]
    findings: list[Finding]

    @property
    def suspicious(self) -> bool:
        return any(r.n_flagged for r in self.methods.values())

    def flagged_by_any(self) -> torch.Tensor:
        out = torch.zeros(self.n, dtype=torch.bool)
        for r in self.methods.values():
            out |= r.flags
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "poison_scan",
            "n": self.n,
            "num_classes": self.num_classes,
            "layer": self.layer,
            "suspicious": self.suspicious,
            "n_flagged_any": int(self.flagged_by_any().sum()),
            "methods": {k: r.to_dict() for k, r in self.methods.items()},
            "findings": [f.to_dict() for f in self.findings],
        }


def scan_poison(
    model: nn.Module | Any | None,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    methods: Sequence[str] = ("activation_clustering", "spectral_signatures"),
    layer: str | None = None,
    seed: int = 0,
    cl_train_fn: Any = None,
) -> PoisonScan:
    """Run ``methods`` on the training set ``(x, y)`` of ``model``.

    Activation clustering and spectral signatures need a torch model (``model``); confident
    learning trains its own cross-validated models on ``(x, y)``: small networks, or
    ``cl_train_fn(x, y, seed) -> nn.Module`` (tree ensembles for a table).
    """
    names = parse_methods(list(methods))
    y = y.long()
    reports: dict[str, MethodReport] = {}
    for name in names:
        start = time.perf_counter()
        if name == "confident_learning":
            cl = ConfidentLearning(seed=seed, train_fn=cl_train_fn)
            cl.fit(x, y)
            reports[name] = MethodReport(name, cl.flags_, cl.scores_, time.perf_counter() - start,
                                         stats={"estimated_noise_rate": cl.noise_rate_})
            continue
        if model is None:
            raise ConfigurationError(f"{name} needs the torch model trained on the data")
        det: ActivationClustering | SpectralSignatures
        if name == "activation_clustering":
            det = ActivationClustering(model, layer=layer)
        else:
            det = SpectralSignatures(model, layer=layer)
        det.fit(x, y)
        projections: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        if isinstance(det, ActivationClustering):
            for c, z in det.reduced_.items():
                projections[c] = (z, det.flags_[y == c])
        reports[name] = MethodReport(
            name,
            det.flags_,
            det.scores_,
            time.perf_counter() - start,
            classes=[sp.to_dict() for sp in det.splits_.values()],
            projections=projections,
        )
    num_classes = int(y.max()) + 1 if y.numel() else 0
    findings = [_finding(r, x.shape[0]) for r in reports.values() if r.n_flagged]
    return PoisonScan(x.shape[0], num_classes, layer, reports, findings)


def _finding(report: MethodReport, n: int) -> Finding:
    backdoor = report.method != "confident_learning"
    suspicious = [c["label"] for c in report.classes if c.get("suspicious")]
    frac = report.n_flagged / n if n else 0.0
    what = "backdoor-like clusters" if backdoor else "likely mislabelled samples"
    return Finding(
        id=f"poison.{report.method}",
        title=f"{report.n_flagged} training samples ({frac:.1%}) flagged as {what} by "
        f"{report.method.replace('_', ' ')}",
        severity=Severity.HIGH if backdoor else Severity.MEDIUM,
        threat="data_poisoning",
        atlas=(ATLAS["poison_training_data"], ATLAS["backdoor_trigger"]),
        owasp=(OWASP["data_poisoning"], OWASP["model_poisoning"]),
        evidence={
            "n_flagged": report.n_flagged,
            "fraction": frac,
            "suspicious_classes": suspicious,
        },
        remediation=(
            "Inspect the flagged samples (report.json lists their indices) and their sources; "
            "drop or relabel them and retrain, then check the backdoor's success rate and the "
            "clean accuracy (bastion.defences.data.repair)."
        ),
    )
