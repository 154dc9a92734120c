"""Assessments: evaluation runners and the findings they produce."""

from bastion.audit.findings import Finding, Severity

__all__ = ["Finding", "Severity"]
