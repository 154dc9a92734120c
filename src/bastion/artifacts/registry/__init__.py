"""The versioned, signed model registry (``bastion registry ...``).

See :class:`~bastion.artifacts.registry.core.Registry`.
"""

from __future__ import annotations

from bastion.artifacts.registry.audit import AuditRecord, AuditVerification
from bastion.artifacts.registry.core import Registry, Scanner, default_scanner
from bastion.artifacts.registry.gates import GateConfig, GateResult
from bastion.artifacts.registry.models import LEVELS, Lineage, ModelVersion
from bastion.artifacts.registry.storage import LocalStorage, S3Storage, open_storage

__all__ = [
    "LEVELS",
    "AuditRecord",
    "AuditVerification",
    "GateConfig",
    "GateResult",
    "Lineage",
    "LocalStorage",
    "ModelVersion",
    "Registry",
    "S3Storage",
    "Scanner",
    "default_scanner",
    "open_storage",
]
