"""Replicas: two gateways on one Redis share limits; the access DB on PostgreSQL.

``BASTION_TEST_REDIS_URL`` / ``BASTION_TEST_POSTGRES_URL`` point at real servers (start them
with ``eval "$(scripts/start-redis.sh)"`` and ``eval "$(scripts/start-postgres.sh)"``).
Locally an unset variable skips the test with that reason; in CI (``CI`` set) it fails.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator

import pytest

from bastion.monitor.state import RedisState


@pytest.fixture
def redis_pair(server_url) -> Iterator[tuple[RedisState, RedisState]]:
    url = server_url("BASTION_TEST_REDIS_URL", "scripts/start-redis.sh")
    prefix = f"bastion:serve-test-{uuid.uuid4().hex[:12]}:"
    a, b = RedisState(url, prefix=prefix), RedisState(url, prefix=prefix)
    yield a, b
    import redis

    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()
    a.close()
    b.close()


def test_two_replicas_on_one_redis_share_rate_limit_and_budget(make_gateway, redis_pair,
                                                               digits_np):
    state_a, state_b = redis_pair
    changes = {"limits": {"rate": 0.01, "burst": 4, "budget": 100}}
    one = make_gateway(changes, state=state_a)
    two = make_gateway(changes, store=one.store, tokens=one.tokens, state=state_b)
    x = digits_np[0][:1]
    codes = [gw.predict(x).status_code for gw in (one, two, one, two, one, two)]
    assert codes == [200, 200, 200, 200, 429, 429]  # one bucket of 4 for both replicas
    assert "retry-after" in two.predict(x).headers


def test_two_replicas_on_one_redis_share_the_query_budget(make_gateway, redis_pair, digits_np):
    state_a, state_b = redis_pair
    changes = {"limits": {"budget": 10}}
    one = make_gateway(changes, state=state_a)
    two = make_gateway(changes, store=one.store, tokens=one.tokens, state=state_b)
    x = digits_np[0]
    assert one.predict(x[:6]).status_code == 200
    assert two.predict(x[:4]).status_code == 200
    r = one.predict(x[:1])
    assert r.status_code == 429 and r.json()["error"] == "budget_exhausted"


@pytest.fixture
def postgres_url(fresh_postgres_database) -> Iterator[str]:
    with fresh_postgres_database("bastion_serve") as url:
        yield url


def test_access_database_on_postgresql(make_gateway, postgres_url, digits_np):
    from bastion.access import AccessStore

    store = AccessStore(postgres_url, cache_ttl=5.0, audit_decisions="none")
    try:
        store.add_identity("alice", kind="service", actor="admin")
        store.grant("alice", "consumer", "model:digits", actor="admin")
        token = store.create_key("alice", actor="admin").token
        h = make_gateway(store=store, tokens={"alice": token})
        assert h.client.get("/readyz").json() == {"ready": True}
        assert h.predict(digits_np[0][:2]).status_code == 200
        r = h.client.post("/v1/models/digits/predict", json={"inputs": [[0.0]]})
        assert r.status_code == 401
        h.gateway.drain()
        store.flush_audit()
        served = [e for e in store.audit.entries() if "status" in e.details]
        assert sorted(e.details["status"] for e in served) == [200, 401]
        assert store.audit.verify().ok
        h.gateway.close()  # before the store it writes to
    finally:
        store.close()


def test_redis_down_makes_the_gateway_not_ready_and_predictions_503(make_gateway, redis_pair,
                                                                    digits_np):
    state, _ = redis_pair
    h = make_gateway(state=state)
    assert h.predict(digits_np[0][:1]).status_code == 200
    assert h.client.get("/readyz").status_code == 200
    with socket.socket() as s:  # a port where nothing listens: Redis is "down"
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    pool = state._client.connection_pool
    pool.connection_kwargs["port"] = dead
    pool.disconnect()
    pool.reset()  # new connections go to the dead port
    ready = h.client.get("/readyz", headers=h.headers("ops"))
    assert ready.status_code == 503 and ready.json()["state"].startswith("unreachable")
    assert h.client.get("/readyz").json() == {"ready": False}
    r = h.predict(digits_np[0][:1])
    assert r.status_code == 503 and r.json()["error"] == "backend_unavailable"
    assert "retry-after" in r.headers
