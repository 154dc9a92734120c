"""Rate limits and query budgets on both state backends, including two replicas on Redis."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from bastion.errors import ConfigurationError, QueryBudgetExceeded, RateLimited
from bastion.monitor.limits import QueryBudget, RateLimiter
from bastion.monitor.state import InMemoryState, RedisState, StateBackend


def test_rate_limiter_allows_the_burst_then_refuses_with_retry_after(state: StateBackend) -> None:
    limiter = RateLimiter(state, rate=0.5, burst=3)
    for _ in range(3):
        limiter.check("alice")
    with pytest.raises(RateLimited, match="'alice'") as info:
        limiter.check("alice")
    assert 1.5 < info.value.retry_after <= 2.0
    limiter.check("bob")  # buckets are per client


def test_rate_limiter_recovers_after_retry_after(state: StateBackend) -> None:
    limiter = RateLimiter(state, rate=20.0, burst=1)
    limiter.check("c")
    with pytest.raises(RateLimited) as info:
        limiter.check("c")
    time.sleep(info.value.retry_after + 0.05)
    limiter.check("c")


def test_rate_limiter_sustained_rate_with_fake_clock() -> None:
    now = [0.0]
    limiter = RateLimiter(InMemoryState(clock=lambda: now[0]), rate=10.0, burst=5)
    passed = 0
    for _ in range(200):  # 200 attempts over 2 s at 100/s: 5 (burst) + 10/s * 2 s pass
        now[0] += 0.01
        try:
            limiter.check("c")
            passed += 1
        except RateLimited:
            pass
    assert passed in (24, 25)


def test_limiter_parameters_are_validated() -> None:
    state = InMemoryState()
    with pytest.raises(ConfigurationError, match="rate"):
        RateLimiter(state, rate=-1, burst=1)
    with pytest.raises(ConfigurationError, match="burst"):
        RateLimiter(state, rate=1, burst=0)
    with pytest.raises(ConfigurationError, match="cost"):
        RateLimiter(state, rate=1, burst=2).check("c", cost=3)
    with pytest.raises(ConfigurationError, match="client"):
        RateLimiter(state, rate=1, burst=2).check("")
    with pytest.raises(ConfigurationError, match="limit"):
        QueryBudget(state, limit=0)
    with pytest.raises(ConfigurationError, match="window"):
        QueryBudget(state, limit=1, window=0)
    with pytest.raises(ConfigurationError, match="n must"):
        QueryBudget(state, limit=1).spend("c", 0)


def test_budget_counts_down_and_refuses_without_spending(state: StateBackend) -> None:
    budget = QueryBudget(state, limit=10)
    assert budget.spend("k", 4) == 6
    assert budget.spend("k", 6) == 0
    with pytest.raises(
        QueryBudgetExceeded, match="query budget of 'k' exhausted: 1 queries asked, 0 of 10 left"
    ):
        budget.spend("k")
    assert budget.remaining("k") == 0
    assert budget.remaining("other") == 10


def test_refused_request_takes_nothing(state: StateBackend) -> None:
    budget = QueryBudget(state, limit=10)
    budget.spend("k", 7)
    with pytest.raises(QueryBudgetExceeded):
        budget.spend("k", 5)
    assert budget.remaining("k") == 3
    assert budget.spend("k", 3) == 0


def test_windowed_budget_resets(state: StateBackend) -> None:
    budget = QueryBudget(state, limit=2, window=0.2)
    budget.spend("k", 2)
    with pytest.raises(QueryBudgetExceeded, match=r"per 0\.2 s"):
        budget.spend("k")
    time.sleep(0.4)
    assert budget.spend("k") == 1


def test_budget_never_overgrants_under_threads(state: StateBackend) -> None:
    budget = QueryBudget(state, limit=100)
    granted: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(40):
            try:
                budget.spend("k")
            except QueryBudgetExceeded:
                continue
            with lock:
                granted.append(1)

    threads = [threading.Thread(target=work) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 100
    assert budget.remaining("k") == 0


def test_two_replicas_share_one_rate_limit_and_budget(
    redis_state_factory: Callable[[], RedisState],
) -> None:
    replica_a, replica_b = redis_state_factory(), redis_state_factory()
    limiter_a = RateLimiter(replica_a, rate=0.01, burst=4)
    limiter_b = RateLimiter(replica_b, rate=0.01, burst=4)
    for limiter in (limiter_a, limiter_b, limiter_a, limiter_b):
        limiter.check("key-1")
    for limiter in (limiter_a, limiter_b):
        with pytest.raises(RateLimited):
            limiter.check("key-1")

    budget_a = QueryBudget(replica_a, limit=5)
    budget_b = QueryBudget(replica_b, limit=5)
    assert budget_a.spend("key-1", 3) == 2
    assert budget_b.spend("key-1", 2) == 0
    with pytest.raises(QueryBudgetExceeded):
        budget_a.spend("key-1")
