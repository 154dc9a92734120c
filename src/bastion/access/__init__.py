"""Access control for served models: identities, roles, API keys and a hash-chained audit log.

See :mod:`bastion.access.roles` for the role -> actions table and the resource syntax,
:mod:`bastion.access.store` for :class:`AccessStore` (and how long a revocation takes to
take effect), :mod:`bastion.access.keys` for the key format and why SHA-256 suffices, and
:mod:`bastion.access.audit` for the audit log and its batching writer.
"""

from __future__ import annotations

from bastion.access.audit import AccessAuditRecord, AuditLog, AuditVerification, AuditWriter
from bastion.access.keys import IssuedKey, KeyInfo, parse_duration, parse_token
from bastion.access.roles import ACTIONS, ROLE_ACTIONS, Role, covers
from bastion.access.store import AccessStore, GrantInfo, IdentityInfo, Principal

__all__ = [
    "ACTIONS",
    "ROLE_ACTIONS",
    "AccessAuditRecord",
    "AccessStore",
    "AuditLog",
    "AuditVerification",
    "AuditWriter",
    "GrantInfo",
    "IdentityInfo",
    "IssuedKey",
    "KeyInfo",
    "Principal",
    "Role",
    "covers",
    "parse_duration",
    "parse_token",
]
