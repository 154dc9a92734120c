"""Replicas: two gateways on one Redis share limits; the access DB on PostgreSQL.

``BASTION_TEST_REDIS_URL`` / ``BASTION_TEST_POSTGRES_URL`` point at real servers (start them
with ``eval "$(scripts/start-redis.sh)"`` and ``eval "$(scripts/start-postgres.sh)"``).
Locally an unset variable skips the test with that reason; in CI (``CI`` set) it fails.
"""

from __future__ import annotations

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
