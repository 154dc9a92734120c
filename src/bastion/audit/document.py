"""The ``bastion.audit/1`` document: building it, its scorecard and verdict, validating it.

Every assessing command writes this one document (``report.json``) and every renderer reads
it; :func:`validate_document` checks it against ``schemas/audit-1.schema.json`` before it is
written.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import platform
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from bastion.audit.contract import PRACTICES, THREATS, Check, CheckResult
from bastion.errors import InputError

__all__ = [
    "SCHEMA",
    "SEVERITIES",
    "build_document",
    "catalogue_version",
    "check_entry",
    "environment",
    "load_document",
    "scorecard",
    "validate_document",
    "verdict",
    "write_json",
]

SCHEMA = "bastion.audit/1"
SEVERITIES = ("info", "low", "medium", "high", "critical")
#: threats without a scorecard row, and the row they count in
_ROW_OF = {"data_quality": "data_poisoning"}
_PACKAGES = ("bastion", "torch", "numpy", "scikit-learn", "scipy", "onnxruntime")


@functools.cache
def _validator() -> Any:
    import jsonschema

    text = resources.files("bastion.audit").joinpath("schemas/audit-1.schema.json").read_text()
    schema = json.loads(text)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def validate_document(doc: Mapping[str, Any]) -> None:
    """Raise :class:`~bastion.errors.InputError` naming the first place ``doc`` breaks the
    schema."""
    errors = sorted(_validator().iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = "/".join(map(str, e.absolute_path)) or "(top level)"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise InputError(f"not a valid {SCHEMA} document at {where}: {e.message}{more}")


def check_entry_valid(entry: Mapping[str, Any]) -> bool:
    """Whether a saved check result (``OUT/checks/*.json``) has the schema's check form."""
    return not any(True for _ in _check_validator().iter_errors(entry))


@functools.cache
def _check_validator() -> Any:
    full = _validator()
    return full.evolve(schema={"$id": full.schema["$id"], "$defs": full.schema["$defs"],
                               "$ref": "#/$defs/check"})


def load_document(path: str | Path) -> dict[str, Any]:
    """Read and validate a ``report.json``."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"report {p} not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{p} is not a JSON document: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise InputError(f"{p} is not a {SCHEMA} report (its 'schema' field says "
                         f"{doc.get('schema') if isinstance(doc, dict) else None!r})")
    validate_document(doc)
    return doc


def write_json(path: Path, obj: Any) -> Path:
    """Write ``obj`` as JSON through a temporary file and a rename (never half-written)."""
    from bastion._io import atomic_write_json

    return atomic_write_json(path, obj)


def catalogue_version(catalogue: Mapping[str, type[Check]]) -> str:
    """Each check's name and version, e.g. ``artifact@1,data@1,evasion@1``."""
    return ",".join(f"{name}@{cls.version}" for name, cls in sorted(catalogue.items()))


def environment(device: str, executor: str) -> dict[str, Any]:
    packages: dict[str, str] = {}
    for name in _PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {"python": platform.python_version(), "platform": platform.platform(terse=True),
            "packages": packages, "device": device, "executor": executor}


def _json_value(value: Any) -> Any:
    """Settings and evidence as plain JSON (tuples to lists, numpy scalars to numbers)."""
    return json.loads(json.dumps(value, default=_default))


def _default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    return str(value)


def check_entry(
    check: Check | type[Check], result: CheckResult, *, seconds: float,
    input_fingerprint: str | None,
) -> dict[str, Any]:
    """The document's ``checks[]`` object of one check's result."""
    return {
        "name": check.name,
        "title": check.title,
        "threat": check.threat,
        "practices": list(check.practices),
        "status": result.status,
        "reason": result.reason,
        "enable": result.enable,
        "summary": result.summary,
        "seconds": round(float(seconds), 4),
        "input_fingerprint": input_fingerprint,
        "settings": _json_value(dict(result.settings)),
        "metrics": {k: m.to_dict() for k, m in result.metrics.items()},
        "findings": [_json_value(f.to_dict()) for f in result.findings],
        "plots": _json_value(list(result.plots)),
        "tables": _json_value(list(result.tables)),
    }


def _combine(statuses: Iterable[str]) -> str:
    s = set(statuses)
    if not s:
        return "not_run"
    if "failed" in s:
        return "failed"
    if "error" in s:
        return "error"
    if s == {"passed"}:
        return "passed"
    if s == {"not_run"}:
        return "not_run"
    return "partial"


def scorecard(
    checks: Sequence[Mapping[str, Any]], catalogue: Mapping[str, type[Check]]
) -> dict[str, Any]:
    """Rows: the five threats; columns: the practices the catalogue's checks bear on.

    A cell combines the statuses of the checks of that threat that bear on that practice
    (``failed`` > ``error`` > ``passed``; a mix of passed and not run is ``partial``); it is
    ``n/a`` where no check of the threat bears on the practice. Data-quality checks (the
    ``data`` contract check) have no row of their own: they count in the data-poisoning row,
    since validating what enters training and serving is that threat's data-validation practice.
    """
    bearing = {p for cls in catalogue.values() for p in cls.practices}
    practices = [p for p in PRACTICES if p in bearing]
    rows = []
    cells = []
    def row_of(threat: str) -> str:
        return _ROW_OF.get(threat, threat)

    for threat, title in THREATS.items():
        mine = [c for c in checks if row_of(c["threat"]) == threat]
        rows.append({"threat": threat, "title": title,
                     "status": _combine(c["status"] for c in mine),
                     "checks": [c["name"] for c in mine]})
        relevant = {p for cls in catalogue.values() if row_of(cls.threat) == threat
                    for p in cls.practices}
        for practice in practices:
            here = [c for c in mine if practice in c["practices"]]
            status = "n/a" if practice not in relevant else _combine(c["status"] for c in here)
            cells.append({"threat": threat, "practice": practice, "status": status,
                          "checks": [c["name"] for c in here]})
    return {"threats": rows, "practices": practices, "cells": cells}


def verdict(checks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``failed`` when a check failed; ``incomplete`` when one did not run or raised;
    ``passed`` otherwise. ``max_severity`` over unsuppressed findings; counts of findings per
    severity and of checks per status."""
    counts = {s: 0 for s in SEVERITIES}
    counts.update({s: 0 for s in ("passed", "failed", "not_run", "error")})
    worst = -1
    for c in checks:
        counts[c["status"]] += 1
        for f in c["findings"]:
            if f.get("suppressed"):
                continue
            counts[f["severity"]] += 1
            worst = max(worst, SEVERITIES.index(f["severity"]))
    if counts["failed"]:
        status = "failed"
    elif counts["error"] or counts["not_run"]:
        status = "incomplete"
    else:
        status = "passed"
    return {"status": status, "max_severity": "none" if worst < 0 else SEVERITIES[worst],
            "counts": counts}


def build_document(
    *, command: str, seed: int, model: Mapping[str, Any], data: Mapping[str, Any],
    threat_model: Mapping[str, Any], plan: Sequence[Mapping[str, Any]],
    checks: Sequence[Mapping[str, Any]], environment: Mapping[str, Any],
    catalogue: Mapping[str, type[Check]], config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole document, validated (``config``: what the audit was asked to run, recorded so
    that it can be rerun exactly)."""
    from bastion import __version__

    doc = {
        "schema": SCHEMA,
        "bastion_version": __version__,
        "catalogue_version": catalogue_version(catalogue),
        "created": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "seed": seed,
        "command": command,
        "model": dict(model),
        "data": dict(data),
        "environment": dict(environment),
        "threat_model": dict(threat_model),
        "plan": list(plan),
        "checks": list(checks),
        "scorecard": scorecard(checks, catalogue),
        "verdict": verdict(checks),
    }
    if config is not None:
        doc["config"] = _json_value(dict(config))
    validate_document(doc)
    return doc
