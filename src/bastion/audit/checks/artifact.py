"""The ``artifact`` check: a static scan of the model file, and its signature when a key or
the registry can vouch for it.

The scan never loads the file (see :mod:`bastion.artifacts.scan`). Each construct that would
run code on load becomes an ``artifact.unsafe-import`` finding located by the archive member
and the callable (``data.pkl:os.system``), so the same payload has the same fingerprint in
every audit. A file that cannot be scanned completely is ``artifact.unscannable``. With
``--signature-key`` the file is verified against its signature bundle
(``artifact.bad-signature`` when it does not verify); a model from the registry carries the
registry's signature status (``artifact.unsigned`` when it has none).
"""

from __future__ import annotations

from typing import Any, ClassVar

from bastion.audit.contract import (
    AuditContext,
    Check,
    CheckResult,
    Metric,
    Requirement,
    Status,
    register,
)
from bastion.audit.findings import Finding, Severity
from bastion.threat import ATLAS, OWASP

__all__ = ["ArtifactCheck"]

_SEVERITY = {
    0: Severity.INFO,
    1: Severity.LOW,
    2: Severity.MEDIUM,
    3: Severity.HIGH,
    4: Severity.CRITICAL,
}
_REMEDY = (
    "Do not load this file. Re-export the model in a format that cannot run code "
    "(safetensors, ONNX, skops with trusted types, or a torch state dict loaded with "
    f"weights_only=True), and pull models only from a signed registry "
    f"({ATLAS['mitigation_verify_artifacts']}, {ATLAS['mitigation_validate_model']})."
)


def _member(path: str, root: str) -> str:
    """The model-independent part of a scanned path: the member inside the archive."""
    _, sep, inner = path.partition("!")
    return inner if sep else path.rsplit("/", 1)[-1] if path == root else path


@register
class ArtifactCheck(Check):
    """Scan the model file statically; verify its signature when a key or registry is given."""

    name = "artifact"
    title = "Unsafe artifacts: model file scan and signature"
    threat = "unsafe_artifacts"
    practices: ClassVar[tuple[str, ...]] = (
        "secure_data_access",
        "model_validation",
        "regular_updates",
    )
    needs_model = False
    defaults: ClassVar[dict[str, Any]] = {}

    def requires(self, ctx: AuditContext) -> Requirement | None:
        if ctx.model_path is None:
            return Requirement(
                "the model is a remote endpoint or an in-memory object: there is no file to scan",
                "audit the model file or a registry://name@version reference",
            )
        return None

    def inputs(self, ctx: AuditContext) -> dict[str, Any]:
        key = None if ctx.signature_key is None else str(ctx.signature_key)
        return {"signature_key": key, "registry_signature": ctx.model_info.get("signature_status")}

    def run(self, ctx: AuditContext) -> CheckResult:
        from bastion.artifacts.scan import scan_path

        assert_path = ctx.model_path
        if assert_path is None:  # requires() rules this out
            return CheckResult("not_run", reason="no model file")
        paths = (
            sorted(p for p in assert_path.rglob("*") if p.is_file())
            if assert_path.is_dir()
            else [assert_path]
        )
        findings: list[Finding] = []
        rows: list[list[Any]] = []
        unsafe = 0
        for p in paths:
            scan = scan_path(p)
            verdict = str(getattr(scan.verdict, "value", scan.verdict))
            rows.append([p.name, scan.format, verdict, len(scan.all_findings())])
            if verdict == "unsafe":
                unsafe += 1
            if verdict == "error":
                findings.append(
                    Finding(
                        id="artifact.unscannable",
                        title=f"{p.name} could not be scanned completely",
                        severity=Severity.HIGH,
                        threat="unsafe_artifacts",
                        atlas=(ATLAS["unsafe_artifacts"],),
                        owasp=(OWASP["supply_chain"],),
                        evidence={"file": p.name, "error": scan.error},
                        remediation=_REMEDY,
                        location=p.name,
                    )
                )
            seen: set[str] = set()
            for where, f in scan.all_findings():
                location = f"{_member(where, scan.path)}:{f.target}"
                if location in seen:
                    continue
                seen.add(location)
                findings.append(
                    Finding(
                        id="artifact.unsafe-import",
                        title=f"Loading {p.name} would run {f.target} ({f.operator})",
                        severity=_SEVERITY.get(int(f.severity), Severity.HIGH),
                        threat="unsafe_artifacts",
                        atlas=(ATLAS["unsafe_artifacts"], ATLAS["supply_chain_model"]),
                        owasp=(OWASP["supply_chain"],),
                        evidence={
                            "file": p.name,
                            "member": where,
                            "operator": f.operator,
                            "target": f.target,
                            "position": f.position,
                            "why": f.why,
                        },
                        remediation=_REMEDY,
                        location=location,
                    )
                )
        metrics = {
            "files_scanned": Metric(float(len(paths)), label="files scanned"),
            "unsafe_files": Metric(float(unsafe), label="unsafe files", higher_is_better=False),
        }
        signature = self._signature(ctx, findings)
        status: Status = (
            "failed" if any(f.severity.rank >= Severity.MEDIUM.rank for f in findings) else "passed"
        )
        verdict_text = (
            f"{unsafe} of {len(paths)} file(s) would run code when loaded"
            if unsafe
            else f"{len(paths)} file(s) scanned clean"
        )
        return CheckResult(
            status,
            metrics=metrics,
            findings=findings,
            tables=[
                {
                    "title": "Files scanned",
                    "columns": ["file", "format", "verdict", "findings"],
                    "rows": rows,
                }
            ],
            summary=f"{verdict_text}; signature: {signature}.",
            settings=self.inputs(ctx),
        )

    def _signature(self, ctx: AuditContext, findings: list[Finding]) -> str:
        """Verify with ``--signature-key`` or take the registry's status; say which."""
        registry_status = ctx.model_info.get("signature_status")
        if ctx.signature_key is not None and ctx.model_path is not None:
            from bastion.artifacts.signing import verify

            try:
                result = verify(ctx.model_path, ctx.signature_key, strict=False)
                ok, why = result.ok, result.describe()
            except FileNotFoundError as exc:
                ok, why = False, f"no signature bundle found ({exc.filename})"
            if not ok:
                findings.append(self._bad_signature(why))
            return "verified" if ok else f"does not verify ({why})"
        if registry_status is not None:
            if registry_status == "valid":
                return "valid (registry)"
            if registry_status == "unsigned":
                findings.append(
                    Finding(
                        id="artifact.unsigned",
                        title="The registry version is not signed",
                        severity=Severity.LOW,
                        threat="unsafe_artifacts",
                        atlas=(ATLAS["supply_chain_model"],),
                        owasp=(OWASP["supply_chain"],),
                        evidence={"signature_status": registry_status},
                        remediation="Sign models when pushing them (bastion registry push "
                        "--sign-key) and configure trusted keys.",
                    )
                )
                return "unsigned (registry)"
            findings.append(self._bad_signature(f"registry status {registry_status}"))
            return f"{registry_status} (registry)"
        return "not checked (pass --signature-key, or audit a registry reference)"

    @staticmethod
    def _bad_signature(why: str) -> Finding:
        return Finding(
            id="artifact.bad-signature",
            title="The model does not match a trusted signature",
            severity=Severity.HIGH,
            threat="unsafe_artifacts",
            atlas=(ATLAS["supply_chain_model"], ATLAS["mitigation_verify_artifacts"]),
            owasp=(OWASP["supply_chain"],),
            evidence={"why": why},
            remediation="Do not deploy this file: obtain the model from its signed source and "
            "verify it (bastion verify) before use.",
        )
