"""Re-audit campaigns: many models, each audit one unit of work, one summary.

A campaign audits every version the registry says is due (:func:`registry_due`, what
``bastion registry audit-due`` lists) or every model given (:func:`given_models`) with one
audit configuration (data, threat model, check settings). Each model is a unit of work for an
:class:`~bastion.audit.executor.Executor`, so a Ray cluster audits many models at once; each
writes its own report folder ``OUT/<name>-v<version>/`` (or ``OUT/<file stem>/``), and the
campaign writes ``OUT/campaign.json`` and ``OUT/campaign.md`` (model, version, verdict,
findings, report path).

An interrupted campaign resumes: an audit whose folder already holds its ``report.json`` (for
the same model source) is not run again, and an audit stopped half-way resumes from its own
saved checks. Every audit uses the campaign's seed, so a model gets the same report in a
campaign as alone, whichever worker ran it and in whichever order.

The report folders are written by the workers: on a cluster of several machines give an
``--out`` on a file system every node mounts, as for any Ray job's outputs.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bastion._io import atomic_write_json, atomic_write_text
from bastion.audit.config import AuditConfig
from bastion.errors import BastionError, ConfigurationError, InputError

__all__ = [
    "Campaign",
    "CampaignItem",
    "CampaignRow",
    "given_models",
    "registry_due",
    "run_campaign",
]

#: The environment a worker needs to pull ``registry://`` models as the driver would.
_REGISTRY_ENV = (
    "BASTION_REGISTRY_URL",
    "BASTION_REGISTRY_TOKEN",
    "BASTION_REGISTRY_METADATA_URL",
    "BASTION_REGISTRY_STORAGE_URL",
    "BASTION_ACTOR",
    "BASTION_TRUSTED_KEYS",
    "BASTION_REGISTRY_KEK_FILE",
    "BASTION_REGISTRY_CHECKPOINT",
    "BASTION_REGISTRY_CHECKPOINT_KEY",
)


@dataclass(frozen=True)
class CampaignItem:
    """One model of a campaign: its source (a file or ``registry://name@version``) and the
    name of its report folder inside the campaign's folder."""

    source: str
    folder: str
    name: str
    version: int | None = None


@dataclass(frozen=True)
class CampaignRow:
    """What one model's audit gave (``status``: ``audited``, ``reused`` or ``error``)."""

    source: str
    name: str
    version: int | None
    status: str
    verdict: str | None = None
    max_severity: str | None = None
    findings: int = 0
    report: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Campaign:
    """Every model's row, in the campaign's order, and the summary files written."""

    rows: tuple[CampaignRow, ...]
    out: Path
    written: tuple[Path, ...] = ()

    @property
    def counts(self) -> dict[str, int]:
        out = {"models": len(self.rows), "audited": 0, "reused": 0, "error": 0}
        for r in self.rows:
            out[r.status] += 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "bastion.campaign/1",
            "counts": self.counts,
            "models": [asdict(r) for r in self.rows],
        }

    def to_markdown(self) -> str:
        """The summary table (Markdown)."""
        lines = [
            "# Re-audit campaign",
            "",
            ", ".join(f"{v} {k}" for k, v in self.counts.items()),
            "",
            "| model | version | verdict | findings | report |",
            "|---|---|---|---|---|",
        ]
        for r in self.rows:
            verdict = r.verdict or "error"
            if r.max_severity and r.max_severity != "none":
                verdict += f" (max {r.max_severity})"
            where = r.report or (r.error or "").replace("|", "\\|")
            version = "-" if r.version is None else str(r.version)
            lines.append(f"| {r.name} | {version} | {verdict} | {r.findings} | {where} |")
        return "\n".join(lines) + "\n"


def registry_due(max_age: str = "30d") -> list[CampaignItem]:
    """The versions ``bastion registry audit-due`` lists, from the registry the environment
    configures (``BASTION_REGISTRY_URL`` or ``BASTION_REGISTRY_METADATA_URL``/``..._STORAGE_URL``,
    as ``registry://`` references use)."""
    from bastion.artifacts.registry.connect import open_registry_from_env

    env = os.environ
    if not (env.get("BASTION_REGISTRY_URL") or env.get("BASTION_REGISTRY_METADATA_URL")):
        raise ConfigurationError(
            "--registry-due needs a registry: set BASTION_REGISTRY_URL (a registry service) or "
            "BASTION_REGISTRY_METADATA_URL and BASTION_REGISTRY_STORAGE_URL"
        )
    with open_registry_from_env() as reg:
        due = reg.audit_due(max_age=max_age)
    return [
        CampaignItem(
            f"registry://{d['name']}@{d['version']}",
            _safe(f"{d['name']}-v{d['version']}"),
            str(d["name"]),
            int(d["version"]),
        )
        for d in due
    ]


def given_models(sources: Sequence[str]) -> list[CampaignItem]:
    """One item per model source, each with its own report folder (the file's stem, or the
    registry name and reference; repeated names get ``-2``, ``-3``...)."""
    items: list[CampaignItem] = []
    used: set[str] = set()
    for source in dict.fromkeys(sources):
        if source.startswith("registry://"):
            name, _, ref = source[len("registry://") :].partition("@")
            folder = f"{name}-{ref or 'latest'}"
            version = int(ref) if ref.isdigit() else None
        else:
            name, version = Path(source).stem or source, None
            folder = name
        folder = base = _safe(folder)
        k = 2
        while folder in used:
            folder, k = f"{base}-{k}", k + 1
        used.add(folder)
        items.append(CampaignItem(source, folder, name, version))
    return items


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"


@dataclass(frozen=True)
class _Shared:
    config: AuditConfig
    out: Path
    fresh: bool
    formats: tuple[str, ...]
    env: dict[str, str]


def _row(item: CampaignItem, doc: dict[str, Any], report: Path, status: str) -> CampaignRow:
    verdict = doc.get("verdict", {})
    findings = sum(
        1 for c in doc.get("checks", []) for f in c.get("findings", []) if not f.get("suppressed")
    )
    return CampaignRow(
        item.source,
        item.name,
        item.version,
        status,
        verdict=verdict.get("status"),
        max_severity=verdict.get("max_severity"),
        findings=findings,
        report=str(report),
    )


def _audit_unit(shared: _Shared, item: CampaignItem) -> CampaignRow:
    """One unit: audit one model into its own folder (resuming its saved checks)."""
    from bastion.audit.runner import run_audit

    saved = {k: os.environ.get(k) for k in shared.env}
    os.environ.update(shared.env)  # a worker pulls registry:// models as the driver would
    try:
        folder = shared.out / item.folder
        config = shared.config.with_overrides(model=item.source, out=folder)
        outcome = run_audit(config, fresh=shared.fresh, formats=shared.formats)
        return _row(item, outcome.document, folder / "report.json", "audited")
    except BastionError as exc:
        return CampaignRow(item.source, item.name, item.version, "error", error=str(exc))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _finished(item: CampaignItem, report: Path) -> dict[str, Any] | None:
    """The saved document of this model's finished audit, if there is one."""
    try:
        doc = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("model", {}).get("source") != item.source:
        return None
    return doc


def run_campaign(
    config: AuditConfig,
    items: Sequence[CampaignItem],
    *,
    out: Path,
    executor: Any = None,
    fresh: bool = False,
    formats: Sequence[str] = ("json", "html", "md"),
    gpus_per_task: float = 0.0,
) -> Campaign:
    """Audit every item with ``config`` (its model replaced), each a unit of work on
    ``executor`` (default in-process); skip audits already finished in ``out`` unless
    ``fresh``; write ``out/campaign.json`` and ``out/campaign.md``. ``gpus_per_task``: what
    each audit asks Ray for (a model that runs on a GPU)."""
    from bastion.audit.executor import InProcessExecutor, UnitFailed

    if not items:
        raise InputError("the campaign has no models: nothing is due, or no model was given")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[int, CampaignRow] = {}
    todo: list[tuple[int, CampaignItem]] = []
    for i, item in enumerate(items):
        report = out / item.folder / "report.json"
        doc = None if fresh else _finished(item, report)
        if doc is not None:
            rows[i] = _row(item, doc, report, "reused")
        else:
            todo.append((i, item))
    shared = _Shared(
        config,
        out,
        fresh,
        tuple(formats),
        {k: v for k in _REGISTRY_ENV if (v := os.environ.get(k)) is not None},
    )
    runner = executor or InProcessExecutor()
    results = runner.map(
        _audit_unit,
        [item for _, item in todo],
        shared=shared,
        errors="return",
        gpus_per_task=gpus_per_task,
    )
    for (i, item), result in zip(todo, results, strict=True):
        if isinstance(result, UnitFailed):
            result = CampaignRow(item.source, item.name, item.version, "error", error=result.cause)
        rows[i] = result
    campaign = Campaign(tuple(rows[i] for i in range(len(items))), out)
    written = (
        atomic_write_json(out / "campaign.json", campaign.to_dict()),
        atomic_write_text(out / "campaign.md", campaign.to_markdown()),
    )
    return Campaign(campaign.rows, out, written)
