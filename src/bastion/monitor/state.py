"""Shared state of the gateway's guards: counters, token buckets, bounded vector lists.

Rate limits, query budgets, the extraction detector and alert de-duplication keep their state
behind one small protocol, :class:`StateBackend`, so that one gateway process keeps it in
memory (:class:`InMemoryState`, the default: nothing to start) and several replicas share it
through Redis (:class:`RedisState`). :func:`open_state` picks the backend from a URL.

Every operation that reads and then writes (a token bucket, a counter with an expiry, a
set-if-absent) is atomic: under a lock in memory, in one Lua script or one command in Redis.
Redis keys are namespaced (``bastion:`` by default) and time in Redis scripts is the server's
clock, so replicas whose clocks disagree still share one bucket.

Both backends also offer batch forms, ``push_rows`` and ``vectors_many`` (one round trip to
Redis instead of one per vector); the extraction detector uses them when a backend has them.

>>> state = open_state("memory://")
>>> state.incr("requests:alice"), state.incr("requests:alice", 2)
(1, 3)
>>> state.take_tokens("bucket:alice", rate=1.0, burst=2)
(True, 0.0)
>>> state.set_once("alert:alice", ttl=60.0), state.set_once("alert:alice", ttl=60.0)
(True, False)
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable
from urllib.parse import urlparse, urlunparse

import numpy as np

from bastion.errors import BastionError, ConfigurationError, brief

__all__ = ["InMemoryState", "RedisState", "StateBackend", "StateUnavailable", "open_state"]

_F = TypeVar("_F", bound=Callable[..., Any])


class StateUnavailable(BastionError):
    """The shared state backend (Redis) cannot be reached: a service problem, not the
    client's (the gateway answers 503 and reports not ready)."""


@runtime_checkable
class StateBackend(Protocol):
    """The operations the guards need; every read-modify-write is atomic."""

    def incr(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        """Add ``amount`` to an integer counter and return the new value.

        A counter that does not exist starts at 0. With ``ttl`` (seconds) a counter that has no
        expiry yet gets one, so it vanishes ``ttl`` seconds after its first increment (a fixed
        window); later increments do not extend it.
        """
        ...

    def get_int(self, key: str) -> int:
        """The value of a counter, 0 when it does not exist or has expired."""
        ...

    def take_tokens(
        self, key: str, *, rate: float, burst: int, cost: int = 1
    ) -> tuple[bool, float]:
        """Take ``cost`` tokens from a bucket of ``burst`` tokens refilled at ``rate`` per second.

        Returns ``(True, 0.0)`` and takes the tokens when enough are there, otherwise
        ``(False, seconds until enough will be)`` and takes nothing. A new bucket starts full.
        """
        ...

    def push_vector(
        self, key: str, vector: np.ndarray, *, max_len: int, ttl: float | None = None
    ) -> None:
        """Append a vector (stored as float32) to a list that keeps the latest ``max_len``.

        ``ttl`` (seconds), when given, makes the whole list expire that long after the last push.
        """
        ...

    def vectors(self, key: str) -> np.ndarray:
        """The list as a float32 array ``(n, d)``, oldest first; ``(0, 0)`` when empty."""
        ...

    def set_once(self, key: str, ttl: float) -> bool:
        """Set a marker for ``ttl`` seconds; True if it was not already set."""
        ...

    def close(self) -> None:
        """Release connections; the state itself survives in Redis."""
        ...


def _check_ttl(ttl: float | None, name: str = "ttl") -> None:
    if ttl is not None and not (math.isfinite(ttl) and ttl > 0):
        raise ConfigurationError(
            f"{name} must be a positive number of seconds or None, got {ttl!r}"
        )


def _check_bucket(rate: float, burst: int, cost: int) -> None:
    if not (math.isfinite(rate) and rate > 0):
        raise ConfigurationError(
            f"rate must be a positive number of tokens per second, got {rate!r}"
        )
    if int(burst) != burst or burst < 1:
        raise ConfigurationError(f"burst must be a positive integer, got {burst!r}")
    if int(cost) != cost or cost < 0:
        raise ConfigurationError(f"cost must be a non-negative integer, got {cost!r}")


def _as_row(vector: np.ndarray) -> np.ndarray:
    row = np.asarray(vector, dtype=np.float32).reshape(-1)
    if row.size == 0:
        raise ConfigurationError("cannot store an empty vector")
    return row


def _as_rows(rows: np.ndarray) -> np.ndarray:
    block = np.asarray(rows, dtype=np.float32)
    if block.ndim != 2 or block.shape[1] == 0:
        raise ConfigurationError(f"rows must be a 2-D array (n, d) with d > 0, got {block.shape}")
    return block


def _check_max_len(max_len: int) -> None:
    if int(max_len) != max_len or max_len < 1:
        raise ConfigurationError(f"max_len must be a positive integer, got {max_len!r}")


class InMemoryState:
    """State in this process, guarded by one lock (thread-safe); lost when the process exits.

    ``clock`` (seconds, monotonic) is injectable so that tests can move time without sleeping.
    Expired keys are dropped lazily when touched and in a sweep every few thousand writes.
    """

    _SWEEP_EVERY = 4096

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._ints: dict[str, int] = {}
        self._buckets: dict[str, tuple[float, float, float]] = {}  # key -> (tokens, at, full at)
        self._vectors: dict[str, np.ndarray] = {}
        self._markers: dict[str, float] = {}  # key -> expires at
        self._expiry: dict[str, float] = {}  # ints and vector lists with a TTL
        self._writes = 0

    def __repr__(self) -> str:
        return "InMemoryState()"

    # -- helpers (call with the lock held) -------------------------------------------------
    def _expired(self, key: str, now: float) -> bool:
        at = self._expiry.get(key)
        if at is not None and at <= now:
            self._expiry.pop(key, None)
            self._ints.pop(key, None)
            self._vectors.pop(key, None)
            return True
        return False

    def _sweep(self, now: float) -> None:
        self._writes += 1
        if self._writes % self._SWEEP_EVERY:
            return
        for key in [k for k, at in self._expiry.items() if at <= now]:
            self._expired(key, now)
        for key in [k for k, at in self._markers.items() if at <= now]:
            del self._markers[key]
        for key in [k for k, (_, _, full) in self._buckets.items() if full <= now]:
            del self._buckets[key]  # a full bucket is the same as no bucket

    # -- protocol ------------------------------------------------------------------------
    def incr(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        _check_ttl(ttl)
        with self._lock:
            now = self._clock()
            self._expired(key, now)
            value = self._ints.get(key, 0) + int(amount)
            self._ints[key] = value
            if ttl is not None and key not in self._expiry:
                self._expiry[key] = now + ttl
            self._sweep(now)
            return value

    def get_int(self, key: str) -> int:
        with self._lock:
            self._expired(key, self._clock())
            return self._ints.get(key, 0)

    def take_tokens(
        self, key: str, *, rate: float, burst: int, cost: int = 1
    ) -> tuple[bool, float]:
        _check_bucket(rate, burst, cost)
        with self._lock:
            now = self._clock()
            tokens, at, _ = self._buckets.get(key, (float(burst), now, now))
            tokens = min(float(burst), tokens + max(0.0, now - at) * rate)
            if tokens >= cost:
                tokens -= cost
                self._buckets[key] = (tokens, now, now + (burst - tokens) / rate)
                allowed, wait = True, 0.0
            else:
                self._buckets[key] = (tokens, now, now + (burst - tokens) / rate)
                allowed, wait = False, (cost - tokens) / rate
            self._sweep(now)
            return allowed, wait

    def _append(
        self, key: str, rows: np.ndarray, max_len: int, ttl: float | None, now: float
    ) -> None:
        self._expired(key, now)
        old = self._vectors.get(key)
        if old is not None and old.shape[1] != rows.shape[1]:
            raise ConfigurationError(
                f"vector of length {rows.shape[1]} pushed to {key!r}, which holds vectors of "
                f"length {old.shape[1]}"
            )
        self._vectors[key] = (rows if old is None else np.concatenate([old, rows]))[-max_len:]
        if ttl is not None:
            self._expiry[key] = now + ttl
        self._sweep(now)

    def push_vector(
        self, key: str, vector: np.ndarray, *, max_len: int, ttl: float | None = None
    ) -> None:
        _check_max_len(max_len)
        _check_ttl(ttl)
        row = _as_row(vector)
        with self._lock:
            self._append(key, row[None], max_len, ttl, self._clock())

    def push_rows(
        self, pushes: Sequence[tuple[str, np.ndarray, int]], *, ttl: float | None = None
    ) -> None:
        """Batch form of :meth:`push_vector`: append each ``(key, rows (n, d), max_len)``."""
        _check_ttl(ttl)
        checked = [(key, _as_rows(rows), max_len) for key, rows, max_len in pushes]
        for _, _, max_len in checked:
            _check_max_len(max_len)
        with self._lock:
            now = self._clock()
            for key, rows, max_len in checked:
                if rows.shape[0]:
                    self._append(key, rows, max_len, ttl, now)

    def vectors(self, key: str) -> np.ndarray:
        with self._lock:
            self._expired(key, self._clock())
            stored = self._vectors.get(key)
            return np.zeros((0, 0), np.float32) if stored is None else stored.copy()

    def vectors_many(self, keys: Sequence[str]) -> list[np.ndarray]:
        """Batch form of :meth:`vectors`."""
        return [self.vectors(key) for key in keys]

    def set_once(self, key: str, ttl: float) -> bool:
        _check_ttl(ttl)
        with self._lock:
            now = self._clock()
            at = self._markers.get(key)
            if at is not None and at > now:
                return False
            self._markers[key] = now + ttl
            self._sweep(now)
            return True

    def ping(self) -> None:
        """Always reachable."""

    def close(self) -> None:
        """Nothing to release."""


# Lua scripts: atomic on the server, using the server's clock (replicas may disagree on time).
_INCR = """
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if tonumber(ARGV[2]) > 0 and redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return v
"""

_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil then tokens = burst; at = now end
local elapsed = now - at
if elapsed < 0 then elapsed = 0 end
tokens = math.min(burst, tokens + elapsed * rate)
local allowed = 0
local wait = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(1000 * (burst / rate + 1)))
return {allowed, tostring(wait)}
"""

_PUSH = """
redis.call('RPUSH', KEYS[1], ARGV[3])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[1]), -1)
if tonumber(ARGV[2]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
"""


def _ms(seconds: float | None) -> int:
    return 0 if seconds is None else max(1, math.ceil(seconds * 1000))


def _guarded(method: _F) -> _F:
    """Turn a Redis client error in ``method`` into :class:`StateUnavailable`."""

    @functools.wraps(method)
    def wrapper(self: RedisState, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except self._errors as exc:
            raise StateUnavailable(
                f"the state backend Redis at {_redact(self.url)!r} is unavailable ({brief(exc)})"
            ) from exc

    return wrapper  # type: ignore[return-value]


class RedisState:
    """State in Redis, shared by every gateway replica that opens the same URL.

    ``url`` is a redis-py URL (``redis://[:password@]host:port/db``, ``rediss://`` for TLS,
    ``unix://``). Keys are prefixed with ``prefix``. The connection is checked at construction:
    an unreachable server raises :class:`~bastion.errors.ConfigurationError` naming the URL
    (without its password). Vectors are stored as float32 bytes in a capped list.
    """

    def __init__(self, url: str, *, prefix: str = "bastion:", socket_timeout: float = 2.0) -> None:
        import redis

        self.url = url
        self.prefix = prefix
        self._errors: type[Exception] = redis.RedisError
        safe = _redact(url)
        try:
            self._client: Any = redis.Redis.from_url(
                url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout
            )
        except ValueError as exc:
            raise ConfigurationError(
                f"invalid Redis URL {safe!r} ({brief(exc)}): use redis://host:port/db, "
                "rediss://... for TLS or unix:///path/to/socket"
            ) from exc
        try:
            self._client.ping()
        except redis.RedisError as exc:
            self._client.close()
            raise ConfigurationError(
                f"cannot reach Redis at {safe!r} ({brief(exc)}): start the server (for tests: "
                'eval "$(scripts/start-redis.sh)"), check the URL and password, or leave the '
                "state URL unset to keep state in memory"
            ) from exc
        self._incr = self._client.register_script(_INCR)
        self._take = self._client.register_script(_TAKE)
        self._push = self._client.register_script(_PUSH)

    def __repr__(self) -> str:
        return f"RedisState({_redact(self.url)!r}, prefix={self.prefix!r})"

    def _k(self, key: str) -> str:
        return self.prefix + key

    @_guarded
    def incr(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        _check_ttl(ttl)
        return int(self._incr(keys=[self._k(key)], args=[int(amount), _ms(ttl)]))

    @_guarded
    def get_int(self, key: str) -> int:
        value = self._client.get(self._k(key))
        return 0 if value is None else int(value)

    @_guarded
    def take_tokens(
        self, key: str, *, rate: float, burst: int, cost: int = 1
    ) -> tuple[bool, float]:
        _check_bucket(rate, burst, cost)
        allowed, wait = self._take(
            keys=[self._k(key)], args=[repr(float(rate)), int(burst), int(cost)]
        )
        return bool(int(allowed)), float(wait)

    @_guarded
    def push_vector(
        self, key: str, vector: np.ndarray, *, max_len: int, ttl: float | None = None
    ) -> None:
        _check_max_len(max_len)
        _check_ttl(ttl)
        row = _as_row(vector)
        self._push(keys=[self._k(key)], args=[int(max_len), _ms(ttl), row.tobytes()])

    @_guarded
    def push_rows(
        self, pushes: Sequence[tuple[str, np.ndarray, int]], *, ttl: float | None = None
    ) -> None:
        """Batch form of :meth:`push_vector`: one MULTI/EXEC transaction, one round trip."""
        _check_ttl(ttl)
        pipe = self._client.pipeline(transaction=True)
        for key, rows, max_len in pushes:
            _check_max_len(max_len)
            block = _as_rows(rows)
            if block.shape[0] == 0:
                continue
            name = self._k(key)
            pipe.rpush(name, *(r.tobytes() for r in block[-max_len:]))
            pipe.ltrim(name, -int(max_len), -1)
            if ttl is not None:
                pipe.pexpire(name, _ms(ttl))
        pipe.execute()

    @_guarded
    def vectors(self, key: str) -> np.ndarray:
        return self._decode(key, self._client.lrange(self._k(key), 0, -1))

    @_guarded
    def vectors_many(self, keys: Sequence[str]) -> list[np.ndarray]:
        """Batch form of :meth:`vectors`, in one round trip."""
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.lrange(self._k(key), 0, -1)
        return [self._decode(key, items) for key, items in zip(keys, pipe.execute(), strict=True)]

    @staticmethod
    def _decode(key: str, items: list[bytes]) -> np.ndarray:
        if not items:
            return np.zeros((0, 0), np.float32)
        if len({len(item) for item in items}) != 1:
            raise ConfigurationError(f"{key!r} holds vectors of different lengths; delete the key")
        return np.frombuffer(b"".join(items), dtype=np.float32).reshape(len(items), -1).copy()

    @_guarded
    def set_once(self, key: str, ttl: float) -> bool:
        _check_ttl(ttl)
        return bool(self._client.set(self._k(key), b"1", nx=True, px=_ms(ttl)))

    @_guarded
    def ping(self) -> None:
        """Raise :class:`StateUnavailable` when Redis does not answer."""
        self._client.ping()

    def close(self) -> None:
        self._client.close()


def _redact(url: str) -> str:
    """The URL without its password."""
    try:
        parsed = urlparse(url)
        if parsed.password is None:
            return url
        netloc = parsed.netloc.rsplit("@", 1)[1]
        user = parsed.username or ""
        return urlunparse(parsed._replace(netloc=f"{user}:***@{netloc}"))
    except ValueError:
        return "<unparseable URL>"


def open_state(url: str | None) -> StateBackend:
    """The backend for ``url``: in memory for None, ``""`` or ``memory://``, Redis otherwise.

    >>> open_state(None)
    InMemoryState()
    >>> open_state("ftp://example.org")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    bastion.errors.ConfigurationError: unsupported state URL 'ftp://example.org': use memory:// ...
    """
    if url is None or url == "" or url.startswith("memory://"):
        return InMemoryState()
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in {"redis", "rediss", "unix"}:
        return RedisState(url)
    raise ConfigurationError(
        f"unsupported state URL {_redact(url)!r}: use memory:// (one process) or "
        "redis://host:port/db (shared by replicas)"
    )
