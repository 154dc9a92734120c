"""API key tokens: format, randomness, hashing, durations."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest

from bastion.access.keys import (
    hash_secret,
    new_token,
    parse_duration,
    parse_token,
    secret_matches,
)
from bastion.errors import AuthenticationError, ConfigurationError


def test_tokens_are_fresh_and_parse_back() -> None:
    made = [new_token() for _ in range(200)]
    assert len({t for _, _, t in made}) == 200 and len({k for k, _, _ in made}) == 200
    for key_id, secret, token in made:
        assert token == f"bst_{key_id}_{secret}"
        assert parse_token(token) == (key_id, secret)
        assert len(key_id) == 16 and len(secret) == 43  # 64 and 256 random bits


def test_hash_is_sha256_of_id_and_secret() -> None:
    key_id, secret, _ = new_token()
    stored = hash_secret(key_id, secret)
    assert stored == hashlib.sha256(f"{key_id}:{secret}".encode()).hexdigest()
    assert secret not in stored
    assert secret_matches(key_id, secret, stored)
    assert not secret_matches(key_id, secret[:-1] + ("A" if secret[-1] != "A" else "B"), stored)
    other_id, _, _ = new_token()
    assert not secret_matches(other_id, secret, stored)  # the hash is bound to the key id


def test_malformed_tokens_name_the_problem_without_the_secret() -> None:
    key_id, secret, token = new_token()
    for bad, message in [(token[:-1], "43 URL-safe"), (token + "x", "43 URL-safe"),
                         (token.replace("bst_", "bsk_"), "start with 'bst_'"),
                         (f"bst_{'G' * 16}_{secret}", "16 hexadecimal"),
                         (f"bst_{key_id}-{secret}", "16 hexadecimal"),
                         (token[:-2] + "!!", "43 URL-safe")]:
        with pytest.raises(AuthenticationError, match=message) as info:
            parse_token(bad)
        assert secret[:-2] not in str(info.value)
    assert parse_token(f"  {token}\n") == (key_id, secret)  # stray whitespace from a header


@pytest.mark.parametrize("text,expected", [
    ("30d", dt.timedelta(days=30)), ("12h", dt.timedelta(hours=12)),
    ("90m", dt.timedelta(minutes=90)), ("2w", dt.timedelta(weeks=2)),
    ("3600s", dt.timedelta(hours=1)), ("never", None), (" 7D ", dt.timedelta(days=7)),
])
def test_durations(text: str, expected: dt.timedelta | None) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("bad", ["", "30", "d", "-1d", "0d", "1y", "1.5d"])
def test_bad_durations(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="bad duration"):
        parse_duration(bad)
