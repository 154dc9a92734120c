"""The policy accepts the nulls its example's comments allow, and says what is missing."""

from __future__ import annotations

import pytest

from bastion.errors import ConfigurationError
from bastion.serve.config import parse_policy

BASE = "version: 1\nmodels:\n  - name: digits-cnn\n"


def test_alias_null_with_a_pinned_version_or_a_path() -> None:
    pinned = parse_policy(BASE + "    alias: null\n    version: 3\n")
    assert pinned.models[0].source == "registry:digits-cnn@v3"
    local = parse_policy(BASE + "    alias: null\n    path: /models/m.pt\n")
    assert local.models[0].source == "file:/models/m.pt"


def test_alias_version_and_path_all_null_is_refused_by_name() -> None:
    with pytest.raises(ConfigurationError, match=r"alias.*version.*path"):
        parse_policy(BASE + "    alias: null\n")


def test_factory_kwargs_null_means_none() -> None:
    policy = parse_policy(BASE + "    factory: null\n    factory_kwargs: null\n")
    assert policy.models[0].factory_kwargs == {}


def test_the_example_cites_only_commands_that_exist() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "examples" / "gateway-policy.yaml").read_text()
    assert "bastion data contract" not in text
    assert "bastion data infer-contract" in text
