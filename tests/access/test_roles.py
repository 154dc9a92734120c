"""Roles, actions and resource patterns."""

from __future__ import annotations

import re

import pytest

from bastion.access import roles
from bastion.access.roles import (
    ACTIONS,
    ROLE_ACTIONS,
    Role,
    check_identity_name,
    check_resource,
    covers,
    overlaps,
    parse_role,
)
from bastion.errors import ConfigurationError


def test_documented_table_matches_role_actions() -> None:
    doc = roles.__doc__ or ""
    rows = dict(re.findall(r"^``(\w+)``\s{2,}(.+)$", doc, flags=re.MULTILINE))
    assert set(rows) == {r.value for r in Role}
    for role in Role:
        text = rows[role.value].strip()
        documented = ACTIONS if text == "every action" else {a.strip() for a in text.split(",")}
        assert documented == ROLE_ACTIONS[role], role


def test_role_table_shape() -> None:
    assert ROLE_ACTIONS[Role.ADMIN] == ACTIONS
    assert all(actions <= ACTIONS for actions in ROLE_ACTIONS.values())
    assert "manage_keys" not in ROLE_ACTIONS[Role.CONSUMER]
    assert "read_audit" in ROLE_ACTIONS[Role.AUDITOR]
    assert "predict" not in ROLE_ACTIONS[Role.AUDITOR]
    assert "promote" in ROLE_ACTIONS[Role.MAINTAINER]
    assert "promote" not in ROLE_ACTIONS[Role.DATA_SCIENTIST]
    with pytest.raises(TypeError):
        ROLE_ACTIONS[Role.CONSUMER] = ACTIONS  # type: ignore[index]


@pytest.mark.parametrize("grant,resource,expected", [
    ("*", "*", True),
    ("*", "model:a", True),
    ("*", "dataset:a", True),
    ("model:*", "model:a", True),
    ("model:*", "model:*", True),
    ("model:*", "dataset:a", False),
    ("model:*", "*", False),
    ("model:a", "model:a", True),
    ("model:a", "model:ab", False),
    ("model:a", "model:*", False),
    ("dataset:*", "dataset:credit", True),
    ("model:a", "*", False),
])
def test_covers(grant: str, resource: str, expected: bool) -> None:
    assert covers(grant, resource) is expected


def test_overlaps_is_symmetric() -> None:
    assert overlaps("model:a", "model:*") and overlaps("model:*", "model:a")
    assert overlaps("*", "dataset:x") and not overlaps("model:a", "model:b")


@pytest.mark.parametrize("bad", ["", "model:", "model", "bucket:x", "model:a b", "model:../x",
                                 "model:*x", "**", "model:" + "a" * 200])
def test_bad_resources(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="bad resource"):
        check_resource(bad)


def test_names_and_roles() -> None:
    assert check_identity_name("svc-fraud.prod@team") == "svc-fraud.prod@team"
    for bad in ("", "-x", "a b", "a/b", "x" * 129):
        with pytest.raises(ConfigurationError):
            check_identity_name(bad)
    assert parse_role("auditor") is Role.AUDITOR and parse_role(Role.ADMIN) is Role.ADMIN
    with pytest.raises(ConfigurationError, match="data_scientist"):
        parse_role("root")
