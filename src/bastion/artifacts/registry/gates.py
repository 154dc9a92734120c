"""Promotion gates: clean scan, valid signature from a trusted key, assessment thresholds."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bastion.artifacts.signing import (
    PublicKey,
    compare_manifests,
    load_public_key,
    public_key_hint,
    verify_bundle,
)
from bastion.errors import ConfigurationError, SignatureError

__all__ = [
    "GateConfig",
    "GateResult",
    "check_signature",
    "evaluate_gates",
    "load_keys",
    "lookup_metric",
    "report_binding",
]


@dataclass(frozen=True)
class GateConfig:
    """What a version must show before an alias may point at it.

    ``minimums`` maps a report metric to its lowest acceptable value, e.g.
    ``{"robust_accuracy": 0.5}`` or ``{"attacks.pgd.robust_accuracy": 0.4}`` (dotted paths
    reach into the ``report.json`` of ``bastion evaluate evasion``); ``maximums`` the same for
    metrics that must stay low. ``trusted_keys`` are public keys (paths or key objects) of
    which one must have made a valid signature; when empty, the registry's trusted keys apply.
    """

    require_clean_scan: bool = True
    require_signature: bool = True
    minimums: Mapping[str, float] = field(default_factory=dict)
    maximums: Mapping[str, float] = field(default_factory=dict)
    trusted_keys: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        for label, bounds in (("minimums", self.minimums), ("maximums", self.maximums)):
            for k, v in bounds.items():
                if not isinstance(k, str) or not k:
                    raise ConfigurationError(f"{label}: metric names must be non-empty strings")
                if not isinstance(v, int | float) or not math.isfinite(float(v)):
                    raise ConfigurationError(f"{label}[{k!r}] must be a finite number, got {v!r}")
        object.__setattr__(self, "minimums", {k: float(v) for k, v in self.minimums.items()})
        object.__setattr__(self, "maximums", {k: float(v) for k, v in self.maximums.items()})
        object.__setattr__(self, "trusted_keys", tuple(self.trusted_keys))

    def to_dict(self) -> dict[str, Any]:
        return {
            "require_clean_scan": self.require_clean_scan,
            "require_signature": self.require_signature,
            "minimums": dict(self.minimums),
            "maximums": dict(self.maximums),
            "trusted_keys": [os.fspath(k) if isinstance(k, str | os.PathLike) else "<key>"
                             for k in self.trusted_keys],
        }


@dataclass(frozen=True)
class GateResult:
    """``passed`` if every gate held; ``reasons`` names each failed gate in words."""

    passed: bool
    reasons: tuple[str, ...]
    checks: Mapping[str, Any]
    #: the report the thresholds were checked against: ``{id, digest, attached_by,
    #: attached_at}`` (``None`` when no threshold was asked or no report qualified)
    report: Mapping[str, Any] | None = None


def _bare(digest: Any) -> str | None:
    if not isinstance(digest, str):
        return None
    text = digest.lower()
    return text[len("sha256:"):] if text.startswith("sha256:") else text


def report_binding(report: Mapping[str, Any], digest: str,
                   manifest: Mapping[str, str]) -> str | None:
    """``None`` if ``report`` is about the version with root ``digest`` and files
    ``manifest``; else why not, in words.

    A report names its model as the audit document does (``model.digest``, or
    ``model.files[].sha256``, see ``bastion.audit/1``) or with a top-level ``model_digest``.
    It binds to the version when that digest is the version's root digest (or, for one file,
    the file's SHA-256) or when its files' digests are exactly the version's.
    """
    raw = report.get("model")
    model: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    claimed = [_bare(report.get("model_digest")), _bare(model.get("digest"))]
    accepted = {digest}
    if len(manifest) == 1:
        accepted.add(next(iter(manifest.values())))
    if any(c in accepted for c in claimed if c):
        return None
    listed = model.get("files")
    if isinstance(listed, list) and listed:
        shas = sorted(_bare(f.get("sha256")) or "" for f in listed if isinstance(f, Mapping))
        if shas == sorted(manifest.values()):
            return None
    named = [c for c in claimed if c]
    if named or listed:
        return (f"the report is about another model (digest {(named or ['of its files'])[0]}),"
                f" not this version (sha256:{digest})")
    return ("the report names no model digest: it must carry the version's digest"
            f" (model.digest = 'sha256:{digest}' as in a bastion.audit/1 document, or"
            " model_digest)")


def lookup_metric(report: Mapping[str, Any], path: str) -> float | None:
    """Read a dotted ``path`` from a report; ``None`` when absent or not a number.

    In a ``bastion.audit/1`` document the path names a check's metric: ``evasion.robust_accuracy``
    or just ``robust_accuracy`` (the first check that has it); the older evasion report's
    ``attacks.<attack>.robust_accuracy`` reads ``robust_accuracy.<attack>``.
    """
    if report.get("schema") == "bastion.audit/1":
        return _audit_metric(report, path)
    node: Any = report
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    if isinstance(node, bool) or not isinstance(node, int | float):
        return None
    return float(node)


def _audit_metric(doc: Mapping[str, Any], path: str) -> float | None:
    parts = path.split(".")
    if len(parts) == 3 and parts[0] == "attacks":
        path = f"{parts[2]}.{parts[1]}"
    checks = [c for c in doc.get("checks", []) if isinstance(c, Mapping)]
    head, _, rest = path.partition(".")
    named = [(c, rest) for c in checks if c.get("name") == head and rest]
    for check, key in [*named, *((c, path) for c in checks)]:
        metric = check.get("metrics", {}).get(key)
        if isinstance(metric, Mapping):
            value = metric.get("value")
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
    return None


def check_signature(
    bundle: Mapping[str, Any] | None, files: Mapping[str, str], keys: tuple[PublicKey, ...]
) -> tuple[bool, str, str | None]:
    """Verify ``bundle`` against a manifest with any of ``keys``: ``(ok, why, key hint)``."""
    if bundle is None:
        return False, "the version is not signed", None
    if not keys:
        return False, "no trusted public key is configured to check the signature", None
    last = "no key matched"
    for key in keys:
        try:
            _, signed, _ = verify_bundle(bundle, key)
        except SignatureError as exc:
            last = str(exc)
            continue
        diff = compare_manifests(signed, files)
        if diff.ok:
            return True, "valid signature", public_key_hint(key)
        return False, f"the signature does not cover the stored files: {diff.describe()}", None
    return False, f"the signature does not verify with any trusted key ({last})", None


def load_keys(keys: tuple[Any, ...]) -> tuple[PublicKey, ...]:
    return tuple(load_public_key(k) for k in keys)


def evaluate_gates(
    gates: GateConfig, *, scan_verdict: str, signature: Mapping[str, Any] | None,
    manifest: Mapping[str, str], report: Mapping[str, Any] | None, keys: tuple[PublicKey, ...],
    reasons: tuple[str, ...] = (), report_info: Mapping[str, Any] | None = None,
) -> GateResult:
    """Check one version against ``gates``; every failed gate is named in ``reasons``.

    ``reasons`` given are failures found before (the facts behind the gate do not match the
    audit log); ``report_info`` says which report ``report`` is. A metric that is not a
    finite number (NaN, infinity) fails every threshold.
    """
    reasons_: list[str] = list(reasons)
    checks: dict[str, Any] = {}
    if report_info is not None:
        checks["report"] = dict(report_info)
    if gates.require_clean_scan:
        checks["scan"] = scan_verdict
        if scan_verdict != "clean":
            reasons_.append(f"scan: the verdict is {scan_verdict!r}, not 'clean'")
    if gates.require_signature:
        ok, why, _ = check_signature(signature, manifest, keys)
        checks["signature"] = why
        if not ok:
            reasons_.append(f"signature: {why}")
    if (gates.minimums or gates.maximums) and report is not None:
        for metric, bound, low in [*((m, b, True) for m, b in gates.minimums.items()),
                                   *((m, b, False) for m, b in gates.maximums.items())]:
            value = lookup_metric(report, metric)
            checks[metric] = value if value is None or math.isfinite(value) else str(value)
            if value is None:
                reasons_.append(f"assessment: the report has no number at {metric!r}")
            elif not math.isfinite(value):
                reasons_.append(f"assessment: {metric} = {value} is not a finite number")
            elif low and value < bound:
                reasons_.append(f"assessment: {metric} = {value:.4g} is below {bound:.4g}")
            elif not low and value > bound:
                reasons_.append(f"assessment: {metric} = {value:.4g} is above {bound:.4g}")
    return GateResult(passed=not reasons_, reasons=tuple(reasons_), checks=checks,
                      report=report_info)
