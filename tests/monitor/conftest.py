"""Fixtures of the monitor tests.

``state`` runs a test against every state backend: in memory, and a real Redis server read
from ``BASTION_TEST_REDIS_URL`` (set it with ``eval "$(scripts/start-redis.sh)"``). Locally a
missing server skips the Redis cases with the reason; in CI (``CI`` set) it fails them.
Each Redis case gets its own key prefix, deleted afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from bastion.monitor.state import InMemoryState, RedisState, StateBackend


@pytest.fixture
def redis_state_factory(
    server_url: Callable[[str, str], str],
) -> Iterator[Callable[[], RedisState]]:
    """``make()``: a new connection to the test server, all sharing one fresh key prefix."""
    url = server_url("BASTION_TEST_REDIS_URL", "scripts/start-redis.sh")
    prefix = f"bastion:test-{uuid.uuid4().hex[:12]}:"
    made: list[RedisState] = []

    def make() -> RedisState:
        state = RedisState(url, prefix=prefix)
        made.append(state)
        return state

    yield make
    if made:
        client = made[0]._client
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    for state in made:
        state.close()


@pytest.fixture(params=["memory", "redis"])
def state(request: pytest.FixtureRequest) -> StateBackend:
    """Each state backend in turn."""
    if request.param == "memory":
        return InMemoryState()
    factory: Callable[[], RedisState] = request.getfixturevalue("redis_state_factory")
    return factory()
