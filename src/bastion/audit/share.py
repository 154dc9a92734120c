"""What ``bastion audit --baseline/--suppressions/--sign-key`` adds to an audit.

:class:`SharingOptions` reads the baseline report and the suppressions file up front (so a bad
file is refused before any check runs), amends the new document before it is written (marks
suppressed findings, records the baseline's diff summary), and signs the written report.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bastion.audit.baseline import (
    Suppression,
    SuppressionReport,
    apply_suppressions,
    diff_documents,
    load_suppressions,
)

__all__ = ["DEFAULT_SUPPRESSIONS", "SharingOptions"]

#: read from the working directory when ``--suppressions`` is not given
DEFAULT_SUPPRESSIONS = "bastion-suppressions.yaml"


@dataclass
class SharingOptions:
    """A baseline to diff against, suppressions to apply and a key to sign with (all optional)."""

    baseline: dict[str, Any] | None = None
    baseline_source: str | None = None
    suppressions: tuple[Suppression, ...] = ()
    suppressions_source: str | None = None
    sign_key: Path | None = None
    today: dt.date | None = None
    suppression_report: SuppressionReport | None = field(default=None, init=False)

    @classmethod
    def from_cli(cls, baseline: str | os.PathLike[str] | None,
                 suppressions: str | os.PathLike[str] | None,
                 sign_key: str | os.PathLike[str] | None) -> SharingOptions:
        from bastion.audit.document import load_document
        from bastion.errors import InputError

        old = None
        if baseline is not None:
            path = Path(baseline)
            old = load_document(path / "report.json" if path.is_dir() else path)
        sup_path = Path(suppressions) if suppressions is not None else None
        if sup_path is None and Path(DEFAULT_SUPPRESSIONS).is_file():
            sup_path = Path(DEFAULT_SUPPRESSIONS)
        key = Path(sign_key) if sign_key is not None else None
        if key is not None:
            from bastion.artifacts.signing import load_private_key

            if not key.is_file():
                raise InputError(f"--sign-key {key} is not a file")
            load_private_key(key)  # refuse a bad key before the audit runs
        return cls(
            baseline=old, baseline_source=None if baseline is None else str(baseline),
            suppressions=load_suppressions(sup_path) if sup_path is not None else (),
            suppressions_source=None if sup_path is None else str(sup_path), sign_key=key,
        )

    def finalize(self, doc: dict[str, Any]) -> None:
        """Amend the new audit document before it is written."""
        if self.suppressions or self.suppressions_source:
            self.suppression_report = apply_suppressions(doc, self.suppressions, today=self.today)
        if self.baseline is not None:
            diff = diff_documents(self.baseline, doc)
            doc["baseline"] = {
                "source": self.baseline_source or "",
                "model_digest": (self.baseline.get("model") or {}).get("digest"),
                "created": self.baseline.get("created"),
                "summary": diff.to_dict()["summary"],
            }

    def sign(self, out_dir: str | os.PathLike[str]) -> Path | None:
        """Sign the written report when a key was given; return the attestation's path."""
        if self.sign_key is None:
            return None
        from bastion.audit.attest import sign_audit

        return sign_audit(out_dir, self.sign_key)
