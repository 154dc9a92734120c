"""API keys: the token format, generation and hashing.

A token reads ``bst_<key_id>_<secret>``: ``key_id`` is 16 hex characters (64 random bits, the
public handle that ``keys list`` and the audit log show) and ``secret`` is
``secrets.token_urlsafe(32)`` (256 random bits, 43 characters, shown once at creation).

Only ``SHA-256(key_id ":" secret)`` is stored. A fast hash is enough here: slow password
hashes (bcrypt, scrypt, Argon2) exist to make guessing *low-entropy* human passwords from a
stolen hash expensive, but a 256-bit uniformly random secret cannot be guessed at any hashing
speed, so stretching would only slow every request down. The stored and computed hashes are
compared with :func:`hmac.compare_digest` (constant time).

>>> key_id, secret, token = new_token()
>>> parse_token(token) == (key_id, secret), len(secret)
(True, 43)
>>> parse_token("bst_nothex_x")
Traceback (most recent call last):
...
bastion.errors.AuthenticationError: malformed API key: the key id must be 16 hexadecimal characters
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from bastion.errors import AuthenticationError, ConfigurationError

__all__ = [
    "PREFIX",
    "IssuedKey",
    "KeyInfo",
    "hash_secret",
    "new_token",
    "parse_duration",
    "parse_token",
    "secret_matches",
]

PREFIX = "bst_"
_KEY_ID = re.compile(r"[0-9a-f]{16}")
_SECRET = re.compile(r"[A-Za-z0-9_\-]{43}")
_MAX_TOKEN = 200


@dataclass(frozen=True)
class IssuedKey:
    """A newly created key. ``token`` is the only copy of the secret: show it once."""

    key_id: str
    token: str
    expires_at: dt.datetime | None

    def __repr__(self) -> str:  # never print the secret by accident
        return f"IssuedKey(key_id={self.key_id!r}, token='bst_{self.key_id}_…', " \
               f"expires_at={self.expires_at!r})"


@dataclass(frozen=True)
class KeyInfo:
    """What :meth:`AccessStore.list_keys` shows of a key: never its secret or hash."""

    key_id: str
    owner: str
    scopes: tuple[str, ...]
    resources: tuple[str, ...]
    label: str
    created_at: dt.datetime
    created_by: str
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None

    def status(self, now: dt.datetime | None = None) -> str:
        """``"active"``, ``"expired"`` or ``"revoked"``."""
        now = now or dt.datetime.now(dt.UTC)
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


def new_token() -> tuple[str, str, str]:
    """A fresh ``(key_id, secret, token)``."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return key_id, secret, f"{PREFIX}{key_id}_{secret}"


def parse_token(token: str | None) -> tuple[str, str]:
    """Split a token into ``(key_id, secret)``; AuthenticationError naming what is wrong.

    The message never contains the secret (nor the token).
    """
    if token is None or token == "":
        raise AuthenticationError("no API key given: send 'Authorization: Bearer bst_...'")
    if not isinstance(token, str) or len(token) > _MAX_TOKEN:
        raise AuthenticationError("malformed API key: too long to be a bastion key")
    token = token.strip()
    if not token.startswith(PREFIX):
        raise AuthenticationError("malformed API key: it must start with 'bst_'")
    key_id, sep, secret = token[len(PREFIX):].partition("_")
    if not _KEY_ID.fullmatch(key_id):
        raise AuthenticationError(
            "malformed API key: the key id must be 16 hexadecimal characters")
    if not sep or not _SECRET.fullmatch(secret):
        raise AuthenticationError(
            f"malformed API key {PREFIX}{key_id}_…: the secret must be 43 URL-safe characters")
    return key_id, secret


def hash_secret(key_id: str, secret: str) -> str:
    """The stored form of a key: hex SHA-256 of ``key_id:secret``."""
    return hashlib.sha256(f"{key_id}:{secret}".encode()).hexdigest()


def secret_matches(key_id: str, secret: str, stored_hash: str) -> bool:
    """Constant-time comparison of a presented secret with the stored hash."""
    return hmac.compare_digest(hash_secret(key_id, secret), stored_hash)


_DURATION = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> dt.timedelta | None:
    """``"30d"``, ``"12h"``, ``"90m"``, ``"2w"``, ``"3600s"`` as a timedelta; ``"never"`` is None.

    >>> parse_duration("30d").days, parse_duration("never")
    (30, None)
    """
    text = text.strip().lower()
    if text in {"never", "none", "0"}:
        return None
    m = _DURATION.fullmatch(text)
    if m is None or int(m.group(1)) == 0:
        raise ConfigurationError(
            f"bad duration {text!r}; use a positive number and a unit s, m, h, d or w"
            " (e.g. 30d, 12h) or 'never'")
    return dt.timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])
