"""Fix and verify: harden a model against the findings of its audit, rerun the same audit on
the hardened model, and compare the two.

>>> from bastion.defences.fix import harden_from_audit              # doctest: +SKIP
>>> result = harden_from_audit("audit/", out="fixed/", epochs=5)    # doctest: +SKIP
>>> [f.id for f in result.diff.fixed], result.regressed             # doctest: +SKIP
(['evasion.low-robust-accuracy', 'extraction.high-fidelity'], False)

What each finding of the audit gets (:data:`NOT_ADDRESSED` gives the reason for the others):

- ``evasion.*`` (and ``extraction.transferable-adversarial-examples``): adversarial training of
  a copy of the model at the audit's eps and norm (PGD-AT; ``evasion_method`` ``"trades"``,
  ``"fast"`` or ``"free"`` for the others of :mod:`bastion.defences.training.cheap`), or,
  for an L2 threat with ``evasion_method="smooth"``, Gaussian-augmentation training with
  ``sigma`` = eps for randomized smoothing (the rerun attacks the base model).
- ``membership.*``: DP-SGD at ``target_epsilon`` (default :data:`DEFAULT_TARGET_EPSILON`) from
  fresh weights. DP-SGD and adversarial training cannot be combined in one run (any
  non-private training after DP-SGD voids its guarantee, and DP-SGD must start from fresh
  weights), so when both are wanted the finding of higher severity decides (evasion on a tie)
  and the other is listed as not addressed; ``address=`` chooses.
- ``extraction.high-fidelity``: the model is served through an output policy (``label-only``
  by default; ``topk:K`` or ``rounding:D``), and the rerun's extraction check attacks the
  model as served. The policy is written to ``OUT/output-policy.json`` in the gateway's form.

The rerun uses the audit's own record: the same checks (names, order, selection and
configured settings, from the document's ``config``), the same seed, the same threat model and
the same data files (their SHA-256 must match the audit's). Training data is the audit's
``train`` split. Everything else is compared by :func:`~bastion.audit.baseline.diff_documents`:
findings fixed, new and unchanged, and metric changes judged by their 95% intervals.

A hardening that made things worse is a :class:`Regression`: a metric that moved the wrong way
beyond both intervals (clean accuracy under DP, membership leakage after adversarial training),
a new finding, a finding whose severity rose, a check that passed before and fails now, or a
drop of the served model's accuracy on the test split larger than ``max_accuracy_drop``.

Files written to ``out``: ``model.pt`` (the hardened model: a ``state_dict``, or TorchScript
when the audited model was), ``output-policy.json`` (when a policy is applied),
``before/report.json`` (the audit), ``after/report.{json,html,md}`` (the rerun, with a
``baseline`` section summarising the diff) and ``report.{json,html,md}`` (this comparison,
schema ``bastion.harden-fix/1``).
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from bastion.errors import ConfigurationError, InputError, ModelError

if TYPE_CHECKING:
    import torch

    from bastion.audit.baseline import AuditDiff
    from bastion.defences.output import OutputPolicy

__all__ = [
    "DEFAULT_OUTPUT_POLICY",
    "DEFAULT_TARGET_EPSILON",
    "NOT_ADDRESSED",
    "FixResult",
    "NotAddressed",
    "Regression",
    "Remedy",
    "harden_from_audit",
    "plan_remedies",
]

log = logging.getLogger(__name__)

SCHEMA = "bastion.harden-fix/1"
#: ε of DP-SGD when not given: the level at which DP-SGD keeps most of a model's accuracy in
#: published results (De et al., "Unlocking high-accuracy differentially private image
#: classification through scale", 2022, report ε = 8) while the membership attacks of the
#: audit fall to chance; pass a lower target_epsilon for a stronger guarantee.
DEFAULT_TARGET_EPSILON = 8.0
#: the output policy against extraction: no scores at all, labels (and accuracy) unchanged
DEFAULT_OUTPUT_POLICY = "label-only"
#: why the findings of the other checks are not addressed by retraining or an output policy
NOT_ADDRESSED = {
    "artifact": "a finding about the model file (unsafe to load, unsigned), not its weights: "
                "re-save the model in a safe format and sign it (bastion sign)",
    "data": "a finding about the data (contract, drift, train/test overlap): fix the data "
            "pipeline; hardening the model does not change the data",
    "poisoning": "suspected poisoned or mislabelled training samples: remove them (the "
                 "finding lists them) and retrain; any training on the same data learns them "
                 "again",
    "inversion": "no automatic remedy for model inversion: DP-SGD (address membership) and "
                 "label-only outputs reduce what it recovers; rerun the audit to measure",
}
_POLICIES = ("label-only", "topk", "rounding")
_EVASION_METHODS = ("pgd", "trades", "fast", "free", "smooth")
Action = Literal["evasion", "membership", "extraction"]


# ------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class Remedy:
    """One hardening applied: what it targets, how, and with which settings."""

    target: Action
    method: str
    findings: tuple[str, ...]
    settings: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "method": self.method, "findings": list(self.findings),
                "settings": dict(self.settings)}


@dataclass(frozen=True)
class NotAddressed:
    """A finding of the audit that no hardening here addresses, and why."""

    check: str
    id: str
    fingerprint: str
    severity: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Regression:
    """Something the hardening made worse, with the numbers.

    ``kind``: ``metric`` (worse beyond both 95% intervals), ``new-finding``, ``severity`` (a
    finding that got more severe), ``status`` (a check that passed and now fails) or
    ``accuracy`` (the served model's test accuracy fell by more than the tolerance).
    """

    kind: Literal["metric", "new-finding", "severity", "status", "accuracy"]
    check: str
    what: str
    before: Any
    after: Any
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FixResult:
    """What :func:`harden_from_audit` did and found."""

    out: Path
    before: Mapping[str, Any]
    after: Mapping[str, Any]
    diff: AuditDiff
    remedies: tuple[Remedy, ...]
    not_addressed: tuple[NotAddressed, ...]
    regressions: tuple[Regression, ...]
    accuracy: Mapping[str, Any]
    training: Mapping[str, Any]
    files: Mapping[str, Path]
    output_policy: Mapping[str, Any] | None = None
    warnings: tuple[str, ...] = ()
    seconds: float = 0.0
    audit_source: str = ""

    @property
    def regressed(self) -> bool:
        """Whether the hardening made any check worse."""
        return bool(self.regressions)

    def to_dict(self) -> dict[str, Any]:
        from bastion import __version__

        diff = self.diff.to_dict()
        return {
            "schema": SCHEMA,
            "bastion_version": __version__,
            "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "audit": {"source": self.audit_source,
                      "model_digest": (self.before.get("model") or {}).get("digest"),
                      "created": self.before.get("created"),
                      "verdict": (self.before.get("verdict") or {}).get("status")},
            "after": {"model_digest": (self.after.get("model") or {}).get("digest"),
                      "verdict": (self.after.get("verdict") or {}).get("status")},
            "seed": self.after.get("seed"),
            "threat_model": dict(self.after.get("threat_model") or {}),
            "checks": [c.get("name") for c in self.after.get("checks", [])],
            "remedies": [r.to_dict() for r in self.remedies],
            "not_addressed": [n.to_dict() for n in self.not_addressed],
            "regressed": self.regressed,
            "regressions": [r.to_dict() for r in self.regressions],
            "accuracy": dict(self.accuracy),
            "output_policy": None if self.output_policy is None else dict(self.output_policy),
            "training": dict(self.training),
            "diff": {k: v for k, v in diff.items() if k != "schema"},
            "files": {k: str(v) for k, v in self.files.items()},
            "warnings": list(self.warnings),
            "seconds": round(self.seconds, 2),
        }


# -------------------------------------------------------------------------------- planning
def _route(check: str, finding_id: str) -> Action | None:
    if check == "evasion" or finding_id == "extraction.transferable-adversarial-examples":
        return "evasion"
    if check == "membership":
        return "membership"
    if finding_id == "extraction.high-fidelity":
        return "extraction"
    return None


def plan_remedies(
    doc: Mapping[str, Any], address: Sequence[str] | None = None
) -> tuple[dict[Action, list[dict[str, Any]]], list[NotAddressed]]:
    """Which findings of ``doc`` each hardening targets, and the findings left with a reason.

    ``address`` limits the hardenings to ``evasion``, ``membership`` and/or ``extraction``
    (``None``: every one that a finding calls for; evasion and membership exclude each other).
    """
    from bastion.audit.baseline import iter_findings
    from bastion.audit.findings import Severity

    chosen = None if address is None else set(address)
    if chosen is not None:
        unknown = sorted(chosen - {"evasion", "membership", "extraction"})
        if unknown:
            raise ConfigurationError(
                f"unknown hardening target(s) {', '.join(unknown)}: choose from evasion, "
                "membership, extraction")
        if {"evasion", "membership"} <= chosen:
            raise ConfigurationError(
                "evasion and membership cannot be addressed in one run: DP-SGD trains from fresh "
                "weights and any non-private training after it voids its guarantee; run twice")
    wanted: dict[Action, list[dict[str, Any]]] = {}
    left: list[NotAddressed] = []
    for check, f in iter_findings(doc):
        fid, fp, sev = str(f.get("id", "")), str(f.get("fingerprint", "")), str(
            f.get("severity", ""))

        def skip(reason: str, check: str = check, fid: str = fid, fp: str = fp,
                 sev: str = sev) -> None:
            left.append(NotAddressed(check, fid, fp, sev, reason))

        if f.get("suppressed"):
            owner = f["suppressed"].get("owner", "?")
            skip(f"suppressed as an accepted risk (owner {owner}, until "
                 f"{f['suppressed'].get('expires', '?')})")
            continue
        if sev == "info":
            skip("informational: nothing to fix")
            continue
        target = _route(check, fid)
        if target is None:
            skip(NOT_ADDRESSED.get(check, f"no automatic remedy for {check} findings"))
            continue
        if chosen is not None and target not in chosen:
            skip(f"not asked for: add {target} to the hardenings to address (--address)")
            continue
        wanted.setdefault(target, []).append({"check": check, **f})
    if "evasion" in wanted and "membership" in wanted:
        def worst(items: list[dict[str, Any]]) -> int:
            ranks = []
            for item in items:
                try:
                    ranks.append(Severity(str(item.get("severity"))).rank)
                except ValueError:
                    ranks.append(0)
            return max(ranks, default=0)

        drop: Action = "membership" if worst(wanted["evasion"]) >= worst(
            wanted["membership"]) else "evasion"
        keep = "evasion" if drop == "membership" else "membership"
        for f in wanted.pop(drop):
            left.append(NotAddressed(
                f["check"], str(f.get("id")), str(f.get("fingerprint")), str(f.get("severity")),
                f"{keep} was addressed instead (its findings are as or more severe): adversarial "
                "training and DP-SGD cannot be combined in one run (DP-SGD trains from fresh "
                "weights and later non-private training voids its guarantee); run again with "
                f"--address {drop} to trade one for the other"))
    return wanted, left


# ----------------------------------------------------------------------------------- inputs
def _read_audit(audit: str | Path | Mapping[str, Any]) -> tuple[dict[str, Any], Path | None]:
    from bastion.audit.document import load_document, validate_document

    if isinstance(audit, Mapping):
        doc = copy.deepcopy(dict(audit))
        validate_document(doc)
        return doc, None
    p = Path(audit)
    path = p / "report.json" if p.is_dir() else p
    if not path.exists():
        raise InputError(f"audit report {path} not found: give an audit folder (with "
                         "report.json) or the report.json that bastion audit wrote")
    return load_document(path), path.parent


def _locate(source: str | None, given: str | Path | None, sha: str | None, role: str,
            base: Path | None) -> Path | None:
    """The file of one of the audit's data sets (``given`` overrides where it is); its digest
    must be the audit's."""
    from bastion.audit.sources import file_digest

    if given is not None:
        path = Path(given)
        if not path.is_file():
            raise InputError(f"--{role} {path} is not a file")
    elif source is None:
        return None
    else:
        path = Path(source)
        if not path.is_file() and base is not None and (base / path.name).is_file():
            path = base / path.name
        if not path.is_file():
            raise InputError(
                f"the audit's {role} data {source} is not there any more: pass --{role} with "
                "the same file")
    if sha is not None and file_digest(path) != sha:
        raise InputError(
            f"{path} is not the {role} data the audit used (its SHA-256 differs from "
            f"{sha[:16]}…); the rerun must use the same data: pass --{role} with that file")
    return path


def _rerun_config(doc: Mapping[str, Any], *, model: Path, train: Path | None,
                  test: Path | None, contract: Path | None, out: Path
                  ) -> tuple[Any, list[str], list[str]]:
    """The :class:`AuditConfig` that reruns ``doc``'s audit, its checks, and warnings."""
    from bastion.audit.checks import load_catalogue
    from bastion.audit.config import AuditConfig, AuditThreat

    warnings: list[str] = []
    names = [str(c["name"]) for c in doc["checks"]]
    catalogue = load_catalogue()
    missing = [n for n in names if n not in catalogue]
    if missing:
        raise InputError(f"the audit ran check(s) {', '.join(missing)} that this bastion does "
                         "not have; upgrade bastion to rerun it")
    rec = doc.get("config")
    if rec is not None:
        only, skip = tuple(rec.get("only", ())), tuple(rec.get("skip", ()))
        settings = {k: dict(v) for k, v in (rec.get("settings") or {}).items()}
        options = {k: v for k, v in (rec.get("model_options") or {}).items()
                   if k != "trust_pickle"}
    else:  # an audit written before documents recorded their configuration
        warnings.append("the audit does not record its configuration (written by an older "
                        "bastion): the rerun takes each check's settings from its results")
        plan = {p["check"]: p for p in doc.get("plan", [])}
        skip = tuple(n for n, p in plan.items()
                     if str(p.get("reason") or "").startswith("skipped by the configuration"))
        not_selected = {n for n, p in plan.items()
                        if str(p.get("reason") or "").startswith("not selected")}
        only = tuple(n for n in names if n not in not_selected) if not_selected else ()
        settings = {c["name"]: {k: v for k, v in (c.get("settings") or {}).items()
                                if k in catalogue[c["name"]].defaults}
                    for c in doc["checks"]}
        options = {}
    tm = doc["threat_model"]
    threat = AuditThreat(
        access=tm["access"], norm=tm["norm"], eps=tm["eps"], targeted=tm.get("targeted", False),
        query_budget=tm.get("query_budget"), sensitive=tuple(tm.get("sensitive") or ("train",)),
        time_budget_s=tm.get("time_budget_s"), output_policy=tm.get("output_policy"))
    config = AuditConfig(model=str(model), train=train, test=test, out=out,
                         seed=int(doc["seed"]), threat=threat, model_options=options,
                         only=only, skip=skip, settings=settings, contract=contract,
                         label=(rec or {}).get("label"))
    return config, names, warnings


def _load(doc: Mapping[str, Any], model: str | Path | None, factory: str | None,
          trust_pickle: bool, device: str) -> Any:
    """The audited model, loaded as the audit did (scanned first); its digest must match."""
    from bastion.audit.sources import resolve_model

    info = doc["model"]
    kind = info.get("kind")
    source = str(model) if model is not None else str(info.get("source") or "")
    if model is None and kind == "remote":
        raise ModelError(
            f"the audit's model is a remote endpoint ({source}): it cannot be retrained here; "
            "pass the model file with --model")
    if model is None and kind == "object":
        raise ModelError("the audit's model was handed over in-process and has no file: pass "
                         "the model file with --model")
    rec = doc.get("config") or {}
    opts = {k: v for k, v in (rec.get("model_options") or {}).items() if k != "trust_pickle"}
    if factory is not None:
        opts["factory"] = factory
    opts["trust_pickle"] = trust_pickle
    opts["device"] = device
    bounds = tuple(info.get("bounds") or (0.0, 1.0))
    shape = info.get("input_shape")
    loaded = resolve_model(
        source, options=opts, input_shape=tuple(shape) if shape else None,
        num_classes=info.get("num_classes"), bounds=(float(bounds[0]), float(bounds[1])),
        domain=str(info.get("domain") or "other"), access="white-box", query_budget=None)
    if loaded.classifier is None:
        loaded.close()
        raise ModelError(f"{source}: {loaded.unavailable}")
    digest = info.get("digest")
    if digest and loaded.info.get("digest") != digest:
        loaded.close()
        raise InputError(
            f"{source} is not the model the audit assessed (its digest differs from "
            f"{digest}); pass the audited model with --model")
    return loaded


def _policy(spec: str) -> OutputPolicy:
    from bastion.attacks.extraction.catalog import parse_policy

    name = spec.strip().lower().partition(":")[0]
    if name not in _POLICIES and name not in ("labels", "labelonly"):
        raise ConfigurationError(
            f"--output-policy {spec!r}: use label-only, topk:K or rounding:D")
    return parse_policy(spec)


def _gateway_form(policy: OutputPolicy) -> dict[str, Any]:
    """The policy as the gateway's ``output:`` entry (``bastion serve``)."""
    from bastion.defences.output import LabelOnly, Rounding, TopK

    if isinstance(policy, TopK):
        return {"policy": "top-k", "k": policy.k}
    if isinstance(policy, Rounding):
        return {"policy": "rounding", "decimals": policy.decimals}
    if isinstance(policy, LabelOnly):
        return {"policy": "label-only"}
    raise ConfigurationError(f"no gateway form for {policy.describe()}")  # pragma: no cover


# --------------------------------------------------------------------------------- training
def _shuffled(x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return x[perm], y[perm]


def _train(target: Action, clf: Any, x: torch.Tensor, y: torch.Tensor, *, opts: Mapping[str, Any],
           eps: float, norm: str, bounds: tuple[float, float], seed: int
           ) -> tuple[Any, str, dict[str, Any], dict[str, Any]]:
    """Train a hardened copy of ``clf.module``: the module, the method, its settings and the
    training report."""
    from bastion.defences.training.modules import fresh_weights, trainable_copy

    device = clf.device
    x, y = _shuffled(x, y, seed)
    if target == "membership":
        from bastion.defences.training.dp import DPSGDTrainer

        n = len(x)
        delta = opts["delta"] if opts["delta"] is not None else min(1e-5, 0.1 / n)
        trainer = DPSGDTrainer(
            epochs=opts["epochs"], target_epsilon=opts["target_epsilon"], delta=delta,
            max_grad_norm=opts["max_grad_norm"], batch_size=min(opts["dp_batch_size"], n),
            lr=opts["dp_lr"], seed=seed)
        net = fresh_weights(clf.module, seed).to(device)
        privacy = trainer.fit(net, x.to(device), y.to(device))
        net.eval()
        settings = {"target_epsilon": opts["target_epsilon"], "delta": delta,
                    "epochs": opts["epochs"], "lr": opts["dp_lr"],
                    "batch_size": min(opts["dp_batch_size"], n),
                    "max_grad_norm": opts["max_grad_norm"]}
        return net, "dp-sgd", settings, {
            "trainer": repr(trainer),
            "initialisation": "fresh weights (a non-private start would void the guarantee)",
            "privacy": privacy.to_dict()}
    net = trainable_copy(clf.module)
    if opts["evasion_method"] == "smooth":
        from bastion.defences.certify import train_gaussian_augmentation

        sigma = float(opts["sigma"] if opts["sigma"] is not None else eps)
        report = train_gaussian_augmentation(
            net, x, y, sigma=sigma, epochs=opts["epochs"], lr=opts["lr"],
            batch_size=opts["batch_size"], seed=seed, progress=opts["progress"])
        settings = {"sigma": sigma, "epochs": opts["epochs"], "lr": opts["lr"],
                    "batch_size": opts["batch_size"]}
        return net, "randomized-smoothing (Gaussian augmentation)", settings, {
            "initialisation": "the audited model's weights", "report": report.to_dict()}
    from bastion.defences.training.cheap import (
        METHOD_TITLES,
        describe_method,
        make_adversarial_trainer,
    )

    at = make_adversarial_trainer(
        opts["evasion_method"], eps=eps, norm=norm, steps=opts["train_steps"],
        epochs=opts["epochs"], lr=opts["lr"], batch_size=opts["batch_size"], bounds=bounds,
        device=device, seed=seed, progress=opts["progress"])
    n_val = min(500, max(1, len(x) // 10)) if len(x) >= 20 else 0
    val = (x[:n_val], y[:n_val]) if n_val else None
    report_at = at.fit(net, (x[n_val:], y[n_val:]), val=val)
    settings = {"eps": eps, "norm": norm, "steps": opts["train_steps"],
                "epochs": opts["epochs"], "lr": opts["lr"], "batch_size": opts["batch_size"]}
    method = METHOD_TITLES[opts["evasion_method"]]
    return net, method, settings, {"trainer": repr(at), "method": describe_method(at),
                                   "initialisation": "the audited model's weights",
                                   "n_val": n_val, "report": report_at.to_dict()}


def _certify(clf: Any, x: torch.Tensor, y: torch.Tensor, *, sigma: float, radius: float,
             seed: int, samples: int = 100, n0: int = 100, n: int = 1000,
             alpha: float = 0.001) -> dict[str, Any]:
    """Certified accuracy of the smoothed classifier at the audit's L2 radius (the rerun's
    evasion check attacks the base model; this is the smoothed model's guarantee)."""
    from bastion.defences.certify import SmoothedClassifier, certified_accuracy

    smoothed = SmoothedClassifier(clf, sigma=sigma, seed=seed)
    res = smoothed.certify(x[:samples], n0=n0, n=n, alpha=alpha)
    curve = dict(certified_accuracy(res, y[:samples], [0.0, radius]))
    return {"sigma": sigma, "radius": radius, "samples": len(res), "n0": n0, "n": n,
            "alpha": alpha, "certified_accuracy": curve[radius], "smoothed_accuracy": curve[0.0],
            "abstention_rate": float(res.abstained.double().mean())}


def _accuracy(clf: Any, x: torch.Tensor, y: torch.Tensor) -> float:
    import torch

    from bastion.models.base import unmetered

    with unmetered(clf), torch.no_grad():
        pred = torch.cat([clf.predict(x[i:i + 512]).cpu() for i in range(0, len(x), 512)])
    return float((pred == y.cpu()).double().mean()) if len(y) else float("nan")


# ------------------------------------------------------------------------------ comparing
def _regressions(before: Mapping[str, Any], after: Mapping[str, Any], diff: AuditDiff,
                 accuracy: Mapping[str, Any], max_drop: float) -> list[Regression]:
    from bastion.audit.findings import Severity
    from bastion.report.formats import estimate_text

    out: list[Regression] = []
    for m in diff.metrics:
        if m.change == "regression":
            out.append(Regression(
                "metric", m.check, m.metric, m.before, m.after,
                f"{m.check} {m.metric} worsened from {estimate_text(m.before, m.ci_before)} to "
                f"{estimate_text(m.after, m.ci_after)} (beyond both 95% intervals)"))
    for f in diff.new:
        out.append(Regression(
            "new-finding", f.check, f.id, None, f.severity,
            f"new {f.severity} finding {f.id} ({f.fingerprint}): {f.title}"))
    for f in diff.unchanged:
        try:
            rose = Severity(f.severity).rank > Severity(str(f.severity_before)).rank
        except ValueError:
            rose = False
        if rose:
            out.append(Regression(
                "severity", f.check, f.id, f.severity_before, f.severity,
                f"{f.id} ({f.fingerprint}) rose from {f.severity_before} to {f.severity}"))
    for s in diff.checks:
        if s.get("before") == "passed" and s.get("after") == "failed":
            out.append(Regression("status", str(s["check"]), "status", "passed", "failed",
                                  f"check {s['check']} passed before and fails now"))
    b, a = accuracy.get("before"), accuracy.get("after")
    if b is not None and a is not None and b - a > max_drop:
        out.append(Regression(
            "accuracy", "test", "accuracy", b, a,
            f"the served model's accuracy on the audit's test split fell from {b:.1%} to "
            f"{a:.1%} ({a - b:+.1%}), more than the tolerated {max_drop:.1%}"))
    return out


def _splice(doc: dict[str, Any], served: Mapping[str, Any], policy: OutputPolicy,
            names: Sequence[str]) -> None:
    """Put the extraction check run against the served model into ``doc`` (and recount)."""
    from bastion.audit.checks import load_catalogue
    from bastion.audit.document import scorecard, verdict

    entry = next(c for c in served["checks"] if c["name"] == "extraction")
    entry = {**entry, "summary": f"served through {policy.describe()}: {entry['summary'] or ''}"}
    plan = next(p for p in served["plan"] if p["check"] == "extraction")
    doc["checks"] = [entry if c["name"] == "extraction" else c for c in doc["checks"]]
    doc["plan"] = [plan if p["check"] == "extraction" else p for p in doc["plan"]]
    catalogue = load_catalogue()
    doc["scorecard"] = scorecard(doc["checks"], {n: catalogue[n] for n in names})
    doc["verdict"] = verdict(doc["checks"])
    doc["model"]["served_output_policy"] = policy.describe()


# ------------------------------------------------------------------------------------ main
def harden_from_audit(
    audit: str | Path | Mapping[str, Any],
    *,
    out: str | Path = "bastion-fix",
    model: str | Path | None = None,
    factory: str | None = None,
    trust_pickle: bool = False,
    train: str | Path | None = None,
    test: str | Path | None = None,
    contract: str | Path | None = None,
    address: Sequence[str] | None = None,
    evasion_method: str = "pgd",
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 128,
    train_steps: int = 10,
    sigma: float | None = None,
    target_epsilon: float = DEFAULT_TARGET_EPSILON,
    delta: float | None = None,
    max_grad_norm: float = 1.0,
    dp_lr: float = 0.5,
    dp_batch_size: int = 100,
    output_policy: str = DEFAULT_OUTPUT_POLICY,
    max_accuracy_drop: float = 0.05,
    device: str = "cpu",
    progress: bool = False,
    say: Callable[[str], None] | None = None,
) -> FixResult:
    """Harden the audited model against the findings of ``audit`` (a folder, a report.json or
    the document), rerun the same audit on it and compare (see the module docstring).

    ``model``, ``train``, ``test`` and ``contract`` say where the audited files are now when
    they moved (their digests must match the audit's); ``factory`` builds the network of a
    ``state_dict`` when the audit did not record one. Raises :class:`~bastion.errors.InputError`,
    :class:`~bastion.errors.ConfigurationError` or :class:`~bastion.errors.ModelError` with the
    reason for bad input, before any training.
    """
    from bastion._io import atomic_write_bytes, atomic_write_json
    from bastion.audit.baseline import Suppression, diff_documents
    from bastion.audit.runner import run_audit
    from bastion.audit.share import SharingOptions
    from bastion.audit.sources import load_dataset, load_named_arrays
    from bastion.audit.tabular import align_columns
    from bastion.defences.output import HardenedClassifier
    from bastion.defences.training.modules import module_bytes
    from bastion.models import TorchClassifier

    start = time.perf_counter()
    note = say or (lambda _msg: None)
    if evasion_method not in _EVASION_METHODS:
        raise ConfigurationError(f"evasion method must be one of {', '.join(_EVASION_METHODS)}, "
                                 f"got {evasion_method!r}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size),
                        ("train_steps", train_steps), ("dp_batch_size", dp_batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigurationError(f"{name} must be a whole number >= 1, got {value!r}")
    for name, number in (("lr", lr), ("dp_lr", dp_lr), ("target_epsilon", target_epsilon),
                         ("max_grad_norm", max_grad_norm)):
        if not (math.isfinite(number) and number > 0):
            raise ConfigurationError(f"{name} must be a positive number, got {number!r}")
    if not 0.0 <= max_accuracy_drop <= 1.0:
        raise ConfigurationError(
            f"max_accuracy_drop must lie in [0, 1], got {max_accuracy_drop!r}")
    policy = _policy(output_policy)

    before, base = _read_audit(audit)
    out = Path(out)
    wanted, left = plan_remedies(before, address)
    tm = before["threat_model"]
    eps, norm = tm.get("eps"), str(tm.get("norm"))
    if "evasion" in wanted:
        why = None
        if eps is None or not eps > 0:
            why = "the audit's threat model has no positive eps to train against"
        elif norm not in ("linf", "l2"):
            why = f"adversarial training supports linf and l2, not the audit's {norm}"
        elif evasion_method == "smooth" and norm != "l2":
            why = ("randomized smoothing certifies L2 radii; the audit's threat is "
                   f"{norm}: use evasion method pgd or trades")
        if why is not None:
            for f in wanted.pop("evasion"):
                left.append(NotAddressed(f["check"], str(f.get("id")), str(f.get("fingerprint")),
                                         str(f.get("severity")), why))
    if "extraction" in wanted and tm.get("access") == "labels":
        for f in wanted.pop("extraction"):
            left.append(NotAddressed(
                f["check"], str(f.get("id")), str(f.get("fingerprint")), str(f.get("severity")),
                "the attacker already sees labels only (threat access labels): no output "
                "policy reveals less; limit queries per client (bastion serve quotas)"))
    retrain: Action | None = next((t for t in ("evasion", "membership") if t in wanted), None)

    train_path = _locate((before["data"].get("train") or {}).get("source"), train,
                         (before["data"].get("train") or {}).get("sha256"), "train", base)
    test_path = _locate((before["data"].get("test") or {}).get("source"), test,
                        (before["data"].get("test") or {}).get("sha256"), "test", base)
    contract_path = _locate((before["data"].get("contract") or {}).get("source"), contract,
                            (before["data"].get("contract") or {}).get("sha256"), "contract",
                            base)
    if retrain is not None and train_path is None:
        raise InputError(
            f"{retrain} hardening retrains the model but the audit has no training data (it "
            "ran without --train): rerun the audit with --train, or address extraction only")
    if test_path is None:
        raise InputError("the audit has no test data (--test): the rerun and the accuracy "
                         "comparison need it")
    loaded = _load(before, model, factory, trust_pickle, device)
    try:
        clf = loaded.classifier
        if retrain is not None and not isinstance(clf, TorchClassifier):
            raise ModelError(
                f"the audited model loaded as {type(clf).__name__}: {retrain} hardening "
                "retrains it, which needs a torch model (a state dict with --factory, or "
                "TorchScript); address extraction only (--address extraction)")
        bounds = (float(clf.bounds[0]), float(clf.bounds[1]))
        raw = {role: load_named_arrays(p, (before.get("config") or {}).get("label"))
               for role, p in (("train", train_path), ("test", test_path)) if p is not None}
        raw, _ = align_columns(raw, getattr(clf, "feature_names", None))
        test_ds = load_dataset(test_path, bounds, clf.num_classes, arrays=raw["test"][:2])
        train_ds = (load_dataset(train_path, bounds, clf.num_classes, arrays=raw["train"][:2])
                    if train_path else None)
        remedies: list[Remedy] = []
        training: dict[str, Any] = {}
        hardened = clf
        out.mkdir(parents=True, exist_ok=True)
        files: dict[str, Path] = {}
        if retrain is not None and train_ds is not None:
            note(f"hardening against {retrain} ({len(train_ds)} training samples) ...")
            net, method, settings, training = _train(
                retrain, clf, train_ds.x, train_ds.y,
                opts={"epochs": epochs, "lr": lr, "batch_size": batch_size,
                      "train_steps": train_steps, "sigma": sigma,
                      "evasion_method": evasion_method, "target_epsilon": target_epsilon,
                      "delta": delta, "max_grad_norm": max_grad_norm, "dp_lr": dp_lr,
                      "dp_batch_size": dp_batch_size, "progress": progress},
                eps=float(eps or 0.0), norm=norm, bounds=bounds, seed=int(before["seed"]))
            hardened = copy.copy(clf)
            hardened.module = net
            if method.startswith("randomized-smoothing"):
                note("certifying the smoothed classifier ...")
                training["certified"] = _certify(hardened, test_ds.x, test_ds.y,
                                                 sigma=float(settings["sigma"]),
                                                 radius=float(eps or 0.0),
                                                 seed=int(before["seed"]))
            remedies.append(Remedy(retrain, method, tuple(
                str(f.get("id")) for f in wanted[retrain]), settings))
        if isinstance(hardened, TorchClassifier):
            data, fmt = module_bytes(hardened.module)
            files["model"] = atomic_write_bytes(out / "model.pt", data)
            training["model_format"] = fmt
        else:  # nothing retrained and not torch: the audited file itself, served differently
            src = Path(str(loaded.path))
            target = out / ("model" + "".join(src.suffixes) if src.is_file() else src.name)
            if src.is_dir():
                shutil.copytree(src, target, dirs_exist_ok=True)
            else:
                shutil.copyfile(src, target)
            files["model"] = target
        policy_record = None
        if "extraction" in wanted:
            policy_record = {"policy": policy.describe(), "gateway": _gateway_form(policy)}
            files["output_policy"] = atomic_write_json(out / "output-policy.json", {
                "policy": policy.describe(),
                "gateway": {"output": _gateway_form(policy)},
                "note": "serve the model through this policy (bastion serve: the model's "
                        "output: entry); the rerun's extraction check attacked it so"})
            remedies.append(Remedy("extraction", "output policy", tuple(
                str(f.get("id")) for f in wanted["extraction"]), {"policy": policy.describe()}))
        served = HardenedClassifier(hardened, policy) if policy_record else hardened

        files["before"] = atomic_write_json(out / "before" / "report.json", before)
        config, names, warnings = _rerun_config(before, model=files["model"], train=train_path,
                                                test=test_path, contract=contract_path,
                                                out=out / "after")
        served_doc: dict[str, Any] | None = None
        if policy_record is not None and "extraction" in names:
            note(f"rerunning extraction against the model served through "
                 f"{policy.describe()} ...")
            only_extraction = replace(config, only=(), skip=(), settings={
                k: v for k, v in config.settings.items() if k == "extraction"})
            served_doc = run_audit(only_extraction, checks=["extraction"], classifier=served,
                                   command="harden fix", fresh=True, write=False).document
            config = config.with_overrides(skip=(*config.skip, "extraction"))
        sup = before.get("suppressions") or {}
        kept = tuple(Suppression(s["fingerprint"], s["reason"], s["owner"],
                                 dt.date.fromisoformat(s["expires"]))
                     for s in [*sup.get("applied", []), *sup.get("expired", [])])
        sharing = SharingOptions(baseline=before, baseline_source=str(
            (base / "report.json") if base else "<document>"), suppressions=kept,
            suppressions_source="the audit's suppressions" if kept else None)

        def finalize(doc: dict[str, Any]) -> None:
            if served_doc is not None:
                _splice(doc, served_doc, policy, names)
            doc["threat_model"]["eps_source"] = tm.get("eps_source", "given")
            if "config" in before:  # the same configuration (the skip above is how it reran)
                doc["config"] = copy.deepcopy(before["config"])
            sharing.finalize(doc)

        note(f"rerunning the audit's {len(names)} checks on the hardened model ...")
        outcome = run_audit(config, checks=names, classifier=hardened, command="harden fix",
                            fresh=True, progress=progress, finalize=finalize)
        after = outcome.document
        files.update({f"after_{k}": v for k, v in outcome.written.items()})
        acc = {"before": _accuracy(clf, test_ds.x, test_ds.y),
               "after": _accuracy(served, test_ds.x, test_ds.y), "n": len(test_ds),
               "max_drop": max_accuracy_drop,
               "served_through": None if policy_record is None else policy.describe()}
    finally:
        loaded.close()
    diff = diff_documents(before, after)
    regressions = _regressions(before, after, diff, acc, max_accuracy_drop)
    changed = [c["name"] for c, d in zip(before["checks"], after["checks"], strict=False)
               if c["name"] == d["name"] and c.get("settings") != d.get("settings")
               and d["name"] != "extraction"]
    for c in after["checks"]:
        if c["status"] == "error":
            warnings.append(f"check {c['name']} ended in error on the hardened model "
                            f"({c.get('reason')}): its comparison is missing")
    if changed:
        warnings.append(f"the recorded settings of {', '.join(changed)} differ between the "
                        "audit and the rerun (a setting derived from the model)")
    result = FixResult(
        out=out, before=before, after=after, diff=diff, remedies=tuple(remedies),
        not_addressed=tuple(left), regressions=tuple(regressions), accuracy=acc,
        training=training, files=files, output_policy=policy_record,
        warnings=tuple(warnings), seconds=time.perf_counter() - start,
        audit_source=str((base / "report.json") if base else "<document>"))
    files.update(write_fix_report(result.to_dict(), out))
    return result


def write_fix_report(doc: Mapping[str, Any], out: Path) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and ``report.html`` of a fix (atomically)."""
    from bastion._io import atomic_write_json, atomic_write_text
    from bastion.report.document import json_safe
    from bastion.report.fix import render_fix_html, render_fix_markdown

    clean = json_safe(dict(doc))
    return {
        "report_json": atomic_write_json(out / "report.json", clean),
        "report_md": atomic_write_text(out / "report.md", render_fix_markdown(clean)),
        "report_html": atomic_write_text(out / "report.html", render_fix_html(clean)),
    }
