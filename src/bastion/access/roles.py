"""Roles, actions and resources of bastion's access control.

An identity (a user or a service account) holds *grants*: a role on a resource. A role is a
fixed set of actions (:data:`ROLE_ACTIONS`); a resource is ``"model:NAME"``,
``"dataset:NAME"``, ``"model:*"`` (every model), ``"dataset:*"`` (every dataset) or ``"*"``
(everything, including global actions such as ``manage_keys`` and ``read_audit``, which are
checked against the resource ``"*"``).

==================  =====================================================================
role                actions
==================  =====================================================================
``admin``           every action
``maintainer``      predict, read, push, promote, read_data, write_data
``data_scientist``  predict, read, push, read_data, write_data
``auditor``         read, read_audit
``consumer``        predict, read
==================  =====================================================================

Actions: ``predict`` (call a served model), ``read`` (model metadata, versions, reports),
``push`` (register a new model version), ``promote`` (move an alias such as ``champion``),
``manage_keys`` (create and revoke API keys), ``manage_users`` (add identities, grant and
revoke roles), ``read_audit`` (read and verify the audit log), ``read_data`` / ``write_data``
(datasets).

>>> covers("model:*", "model:fraud"), covers("model:fraud", "model:churn"), covers("*", "*")
(True, False, True)
>>> "predict" in ROLE_ACTIONS[Role.AUDITOR]
False
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType

from bastion.errors import ConfigurationError

__all__ = [
    "ACTIONS",
    "ROLE_ACTIONS",
    "Role",
    "check_action",
    "check_identity_name",
    "check_resource",
    "covers",
    "overlaps",
    "parse_role",
]


class Role(StrEnum):
    """The five roles; see the module docstring for what each may do."""

    ADMIN = "admin"
    MAINTAINER = "maintainer"
    DATA_SCIENTIST = "data_scientist"
    AUDITOR = "auditor"
    CONSUMER = "consumer"


#: every action the access layer knows
ACTIONS: frozenset[str] = frozenset({
    "predict", "read", "push", "promote", "manage_keys", "manage_users", "read_audit",
    "read_data", "write_data",
})

#: which role may do what (read-only)
ROLE_ACTIONS: Mapping[Role, frozenset[str]] = MappingProxyType({
    Role.ADMIN: ACTIONS,
    Role.MAINTAINER: frozenset({"predict", "read", "push", "promote", "read_data", "write_data"}),
    Role.DATA_SCIENTIST: frozenset({"predict", "read", "push", "read_data", "write_data"}),
    Role.AUDITOR: frozenset({"read", "read_audit"}),
    Role.CONSUMER: frozenset({"predict", "read"}),
})

_NAME = r"[A-Za-z0-9][A-Za-z0-9._\-]{0,127}"
_RESOURCE = re.compile(rf"\*|(model|dataset):(\*|{_NAME})")
_IDENTITY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@\-]{0,127}")


def parse_role(role: Role | str) -> Role:
    """``role`` as a :class:`Role`; ConfigurationError naming the valid roles otherwise."""
    try:
        return Role(role)
    except ValueError:
        valid = ", ".join(r.value for r in Role)
        raise ConfigurationError(f"unknown role {role!r}; use one of: {valid}") from None


def check_action(action: str) -> str:
    """Return ``action`` if it is known; ConfigurationError listing the actions otherwise."""
    if action not in ACTIONS:
        raise ConfigurationError(
            f"unknown action {action!r}; use one of: {', '.join(sorted(ACTIONS))}")
    return action


def check_resource(resource: str) -> str:
    """Return ``resource`` if well formed (``*``, ``model:NAME``, ``dataset:*`` ...)."""
    if not isinstance(resource, str) or _RESOURCE.fullmatch(resource) is None:
        raise ConfigurationError(
            f"bad resource {resource!r}; use '*', 'model:NAME', 'model:*', 'dataset:NAME' or"
            " 'dataset:*' (NAME: letters, digits, '.', '_', '-', at most 128 characters)")
    return resource


def check_identity_name(name: str) -> str:
    """Return ``name`` if it is a valid identity name (letters, digits, ``._@-``)."""
    if not isinstance(name, str) or _IDENTITY.fullmatch(name) is None:
        raise ConfigurationError(
            f"bad identity name {name!r}; use letters, digits, '.', '_', '@', '-'"
            " (at most 128 characters, starting with a letter or digit)")
    return name


def covers(grant: str, resource: str) -> bool:
    """Whether a grant (or key) on ``grant`` includes ``resource``.

    ``"*"`` covers everything; ``"model:*"`` covers ``"model:*"`` and every ``"model:NAME"``;
    ``"model:NAME"`` covers only itself. Global actions are checked on ``"*"``, which only
    ``"*"`` covers.
    """
    if grant == "*" or grant == resource:
        return True
    kind, _, name = grant.partition(":")
    return name == "*" and resource.startswith(kind + ":")


def overlaps(a: str, b: str) -> bool:
    """Whether two resource patterns share at least one resource."""
    return covers(a, b) or covers(b, a)

