"""Value objects of the registry: lineage, versions, permission levels."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bastion.errors import ConfigurationError

__all__ = [
    "LEVELS",
    "Lineage",
    "ModelVersion",
    "check_alias",
    "check_level",
    "check_name",
    "level_rank",
    "parse_ref",
]

#: permission levels, each including the ones before it
LEVELS = ("read", "use", "edit", "manage")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}", re.ASCII)
_ALIAS = re.compile(r"[a-z][a-z0-9_-]{0,63}", re.ASCII)
#: a version reference: ``3`` or ``v3`` (ASCII digits only, no sign, no spaces)
_VERSION = re.compile(r"v?([0-9]{1,9})", re.ASCII)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigurationError(
            f"model name {name!r} is invalid: use letters, digits, '.', '_' and '-' (at most 200)"
        )
    return name


def check_alias(alias: str) -> str:
    if not isinstance(alias, str) or not _ALIAS.fullmatch(alias) or alias == "latest":
        raise ConfigurationError(
            f"alias {alias!r} is invalid: lower-case letters, digits, '_' and '-', starting with a"
            " letter, not 'latest' (for example 'champion' or 'staging')"
        )
    return alias


def parse_ref(ref: int | str) -> int | str:
    """A version reference as ``int`` (``3``, ``"3"``, ``"v3"``), or ``"latest"``, or an alias.

    Parsing is strict: ``"vv3"``, ``" 3"``, ``"3\\n"``, ``"-1"`` or non-ASCII digits are refused
    with ConfigurationError rather than resolved to something else.
    """
    if isinstance(ref, bool) or not isinstance(ref, int | str):
        raise ConfigurationError(f"version {ref!r} must be a number, 'vN', an alias or 'latest'")
    if isinstance(ref, int):
        if ref < 1:
            raise ConfigurationError(f"version {ref} is invalid: versions start at 1")
        return ref
    m = _VERSION.fullmatch(ref)
    if m:
        number = int(m.group(1))
        if number < 1:
            raise ConfigurationError(f"version {ref!r} is invalid: versions start at 1")
        return number
    if ref == "latest" or _ALIAS.fullmatch(ref):
        return ref
    raise ConfigurationError(
        f"version {ref!r} is invalid: give a number (3 or v3), an alias (lower-case letters,"
        " digits, '_', '-') or 'latest'")


def check_level(level: str) -> str:
    if level not in LEVELS:
        raise ConfigurationError(f"permission must be one of {', '.join(LEVELS)}; got {level!r}")
    return level


def level_rank(level: str | None) -> int:
    """0 for no permission, 1 for read ... 4 for manage."""
    return 0 if level is None else LEVELS.index(level) + 1


@dataclass(frozen=True)
class Lineage:
    """Where a version comes from: training data digest, code version, parameters, metrics."""

    training_data_digest: str | None = None
    code_version: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    parents: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        d = self.training_data_digest
        if d is not None and not re.fullmatch(r"(sha256:)?[0-9a-f]{64}", d):
            raise ConfigurationError(
                "training_data_digest must be a SHA-256 hex digest (optionally 'sha256:...')"
            )
        for k, v in self.metrics.items():
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ConfigurationError(f"metric {k!r} must be a number, got {v!r}")
        try:
            json.dumps(dict(self.parameters))
        except TypeError as exc:
            raise ConfigurationError(f"lineage parameters must be JSON values: {exc}") from exc
        object.__setattr__(self, "parameters", dict(self.parameters))
        object.__setattr__(self, "metrics", {k: float(v) for k, v in self.metrics.items()})
        object.__setattr__(self, "parents", tuple(self.parents))

    def to_dict(self) -> dict[str, Any]:
        return {
            "training_data_digest": self.training_data_digest,
            "code_version": self.code_version,
            "parameters": dict(self.parameters),
            "metrics": dict(self.metrics),
            "parents": list(self.parents),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Lineage:
        data = dict(data or {})
        unknown = set(data) - {"training_data_digest", "code_version", "parameters", "metrics",
                               "parents"}
        if unknown:
            raise ConfigurationError(f"unknown lineage field(s): {sorted(unknown)}")
        return cls(
            training_data_digest=data.get("training_data_digest"),
            code_version=data.get("code_version"),
            parameters=data.get("parameters") or {},
            metrics=data.get("metrics") or {},
            parents=tuple(data.get("parents") or ()),
        )


@dataclass(frozen=True)
class ModelVersion:
    """One immutable version of a named model, as stored in the registry."""

    name: str
    version: int
    digest: str
    kind: str
    source_name: str
    files: Mapping[str, Mapping[str, Any]]
    size: int
    signature_status: str
    signer_hint: str | None
    scan_verdict: str
    scan_details: Mapping[str, Any]
    lineage: Lineage
    created_at: str
    created_by: str
    aliases: tuple[str, ...] = ()
    #: signed audits kept with the version (``Registry.audits``), oldest first
    audits: tuple[Mapping[str, Any], ...] = ()

    @property
    def manifest(self) -> dict[str, str]:
        """``{file name: sha256}`` as signed."""
        return {n: str(f["sha256"]) for n, f in self.files.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelVersion:
        """The inverse of :meth:`to_dict` (what the registry service sends)."""
        fields = dict(data)
        fields["lineage"] = Lineage.from_dict(fields.get("lineage"))
        fields["aliases"] = tuple(fields.get("aliases") or ())
        fields["audits"] = tuple(fields.get("audits") or ())
        return cls(**fields)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "version": self.version, "digest": self.digest,
            "kind": self.kind, "source_name": self.source_name,
            "files": {k: dict(v) for k, v in self.files.items()}, "size": self.size,
            "signature_status": self.signature_status, "signer_hint": self.signer_hint,
            "scan_verdict": self.scan_verdict, "scan_details": dict(self.scan_details),
            "lineage": self.lineage.to_dict(), "created_at": self.created_at,
            "created_by": self.created_by, "aliases": list(self.aliases),
            "audits": [dict(a) for a in self.audits],
        }
