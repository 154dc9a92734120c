"""Per-client rate limits (token bucket) and query budgets, on a shared :class:`StateBackend`.

A :class:`RateLimiter` smooths bursts: each client has a bucket of ``burst`` requests that
refills at ``rate`` per second; an empty bucket raises :class:`~bastion.errors.RateLimited`
with ``retry_after``, the seconds until the next request would pass (HTTP 429 with a
``Retry-After`` header). A :class:`QueryBudget` caps the total number of queries a client
(usually an API key) may make, for good or per fixed window, which bounds what a model
extraction attack can learn; a spent budget raises :class:`~bastion.errors.QueryBudgetExceeded`.

Both keep their state in the backend, so replicas that share a Redis instance share limits.

>>> from bastion.monitor.state import InMemoryState
>>> budget = QueryBudget(InMemoryState(), limit=3)
>>> budget.spend("key-1", 2)
1
>>> budget.spend("key-1", 2)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
bastion.errors.QueryBudgetExceeded: query budget of 'key-1' exhausted: 2 queries asked, 1 of 3 ...
"""

from __future__ import annotations

import math

from bastion.errors import ConfigurationError, QueryBudgetExceeded, RateLimited
from bastion.monitor.state import StateBackend

__all__ = ["QueryBudget", "RateLimiter"]


def _check_client(client: str) -> None:
    if not isinstance(client, str) or not client:
        raise ConfigurationError(f"client must be a non-empty string, got {client!r}")


class RateLimiter:
    """A token bucket per client: at most ``burst`` requests at once, ``rate`` per second after.

    Args:
        state: where buckets live (:class:`~bastion.monitor.state.InMemoryState` or
            :class:`~bastion.monitor.state.RedisState`).
        rate: requests per second each client may sustain.
        burst: requests a client may make at once after being idle (the bucket size).
        namespace: key prefix, so that several limiters can share one backend.
    """

    def __init__(
        self, state: StateBackend, *, rate: float, burst: int, namespace: str = "rl"
    ) -> None:
        if not (isinstance(rate, int | float) and math.isfinite(rate) and rate > 0):
            raise ConfigurationError(
                f"rate must be a positive number of requests per second, got {rate!r}"
            )
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ConfigurationError(f"burst must be a positive integer, got {burst!r}")
        self.state = state
        self.rate = float(rate)
        self.burst = burst
        self.namespace = namespace

    def __repr__(self) -> str:
        return f"RateLimiter(rate={self.rate}, burst={self.burst})"

    def check(self, client: str, cost: int = 1) -> None:
        """Take ``cost`` requests from ``client``'s bucket, or raise RateLimited taking none."""
        _check_client(client)
        if isinstance(cost, bool) or not isinstance(cost, int) or not 1 <= cost <= self.burst:
            raise ConfigurationError(
                f"cost must be an integer from 1 to burst={self.burst}, got {cost!r}"
            )
        allowed, wait = self.state.take_tokens(
            f"{self.namespace}:{client}", rate=self.rate, burst=self.burst, cost=cost
        )
        if not allowed:
            raise RateLimited(
                f"rate limit of {self.rate:g} requests/s (burst {self.burst}) exceeded for "
                f"{client!r}: retry after {wait:.2f} s",
                retry_after=wait,
            )


class QueryBudget:
    """A cap on the queries (rows predicted) each client may make, in total or per window.

    Args:
        state: where counters live.
        limit: queries allowed per client.
        window: seconds; the count resets ``window`` seconds after a client's first query of a
            window (a fixed window). None: the budget never resets.
        namespace: key prefix.

    :meth:`spend` never grants past the limit, even under concurrent calls from several
    replicas: it adds atomically, and a request that would overshoot is refused and taken back.
    Two requests racing for the last few queries may both be refused when either alone would fit.
    """

    def __init__(
        self,
        state: StateBackend,
        *,
        limit: int,
        window: float | None = None,
        namespace: str = "budget",
    ) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigurationError(
                f"limit must be a positive integer number of queries, got {limit!r}"
            )
        if window is not None and not (
            isinstance(window, int | float) and math.isfinite(window) and window > 0
        ):
            raise ConfigurationError(
                f"window must be a positive number of seconds or None, got {window!r}"
            )
        self.state = state
        self.limit = limit
        self.window = None if window is None else float(window)
        self.namespace = namespace

    def __repr__(self) -> str:
        return f"QueryBudget(limit={self.limit}, window={self.window})"

    def _key(self, client: str) -> str:
        return f"{self.namespace}:{client}"

    def spend(self, client: str, n: int = 1) -> int:
        """Spend ``n`` queries of ``client``'s budget and return how many remain.

        Raises:
            QueryBudgetExceeded: the budget would be exceeded; nothing is spent.
        """
        _check_client(client)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigurationError(f"n must be a positive integer number of queries, got {n!r}")
        key = self._key(client)
        used = self.state.incr(key, n, ttl=self.window)
        if used > self.limit:
            # the same ttl: should the window have just expired, the credit expires with it
            self.state.incr(key, -n, ttl=self.window)
            left = max(0, self.limit - (used - n))
            period = "" if self.window is None else f" per {self.window:g} s"
            raise QueryBudgetExceeded(
                f"query budget of {client!r} exhausted: {n} queries asked, {left} of "
                f"{self.limit}{period} left; "
                + ("wait for the window to reset or ask" if self.window else "ask")
                + " an administrator for a larger budget"
            )
        return self.limit - used

    def charge(self, client: str, n: int) -> int:
        """Spend up to ``n`` queries of ``client``'s budget without refusing (the cost of
        refused work: a huge or malformed request); returns how many were charged."""
        _check_client(client)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ConfigurationError(f"n must be a non-negative integer, got {n!r}")
        if n == 0:
            return 0
        key = self._key(client)
        used = self.state.incr(key, n, ttl=self.window)
        over = min(n, max(0, used - self.limit))
        if over:
            self.state.incr(key, -over, ttl=self.window)
        return n - over

    def remaining(self, client: str) -> int:
        """Queries ``client`` may still make (in the current window)."""
        _check_client(client)
        return max(0, self.limit - self.state.get_int(self._key(client)))
