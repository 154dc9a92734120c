"""State backends: the same behaviour in memory and in a real Redis server."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from bastion.errors import ConfigurationError
from bastion.monitor.state import InMemoryState, RedisState, StateBackend, open_state


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_backends_satisfy_the_protocol(state: StateBackend) -> None:
    assert isinstance(state, StateBackend)


def test_counters(state: StateBackend) -> None:
    assert state.get_int("c") == 0
    assert state.incr("c") == 1
    assert state.incr("c", 5) == 6
    assert state.incr("c", -2) == 4
    assert state.get_int("c") == 4
    assert state.get_int("other") == 0


def test_counter_ttl_expires(state: StateBackend) -> None:
    assert state.incr("w", 3, ttl=0.1) == 3
    assert state.get_int("w") == 3
    time.sleep(0.3)
    assert state.get_int("w") == 0
    assert state.incr("w", ttl=0.1) == 1


def test_in_memory_ttl_is_a_fixed_window_from_the_first_increment() -> None:
    clock = FakeClock()
    state = InMemoryState(clock=clock)
    state.incr("w", ttl=10)
    clock.now += 6
    assert state.incr("w", ttl=10) == 2  # does not extend the window
    clock.now += 5
    assert state.get_int("w") == 0
    assert state.incr("w", ttl=10) == 1


def test_token_bucket_burst_then_retry_after(state: StateBackend) -> None:
    results = [state.take_tokens("b", rate=0.01, burst=3) for _ in range(4)]
    assert [ok for ok, _ in results] == [True, True, True, False]
    assert [wait for _, wait in results[:3]] == [0.0, 0.0, 0.0]
    wait = results[3][1]
    assert 90.0 < wait <= 100.0  # one token at 0.01/s


def test_token_bucket_refills(state: StateBackend) -> None:
    assert state.take_tokens("b", rate=20.0, burst=2, cost=2) == (True, 0.0)
    ok, wait = state.take_tokens("b", rate=20.0, burst=2)
    assert not ok and 0.0 < wait <= 0.05
    time.sleep(wait + 0.05)
    assert state.take_tokens("b", rate=20.0, burst=2)[0]


def test_token_bucket_exact_refill_and_cap_with_fake_clock() -> None:
    clock = FakeClock()
    state = InMemoryState(clock=clock)
    assert state.take_tokens("b", rate=2.0, burst=4, cost=4) == (True, 0.0)
    assert state.take_tokens("b", rate=2.0, burst=4, cost=3) == (False, 1.5)
    clock.now += 1.0  # two tokens back
    assert state.take_tokens("b", rate=2.0, burst=4, cost=3) == (False, 0.5)
    clock.now += 100.0  # capped at burst
    assert state.take_tokens("b", rate=2.0, burst=4, cost=4) == (True, 0.0)
    assert state.take_tokens("b", rate=2.0, burst=4)[0] is False


def test_bucket_parameters_are_validated(state: StateBackend) -> None:
    with pytest.raises(ConfigurationError, match="rate"):
        state.take_tokens("b", rate=0.0, burst=1)
    with pytest.raises(ConfigurationError, match="burst"):
        state.take_tokens("b", rate=1.0, burst=0)
    with pytest.raises(ConfigurationError, match="ttl"):
        state.incr("c", ttl=-1.0)


def test_vectors_are_float32_capped_and_ordered(state: StateBackend) -> None:
    assert state.vectors("v").shape == (0, 0)
    for i in range(5):
        state.push_vector("v", np.full((2, 2), i + 0.5, dtype=np.float64), max_len=3)
    got = state.vectors("v")
    assert got.dtype == np.float32
    assert got.shape == (3, 4)
    np.testing.assert_array_equal(got[:, 0], [2.5, 3.5, 4.5])


def test_vectors_of_another_length_are_refused(state: StateBackend) -> None:
    state.push_vector("v", np.zeros(3), max_len=10)
    with pytest.raises(ConfigurationError, match="length"):
        state.push_vector("v", np.zeros(4), max_len=10)
        state.vectors("v")


def test_vector_list_ttl(state: StateBackend) -> None:
    state.push_vector("v", np.ones(2), max_len=5, ttl=0.1)
    assert state.vectors("v").shape == (1, 2)
    time.sleep(0.3)
    assert state.vectors("v").shape == (0, 0)


def test_set_once(state: StateBackend) -> None:
    assert state.set_once("m", ttl=0.1) is True
    assert state.set_once("m", ttl=0.1) is False
    assert state.set_once("n", ttl=0.1) is True
    time.sleep(0.3)
    assert state.set_once("m", ttl=0.1) is True


def test_atomic_under_threads(state: StateBackend) -> None:
    allowed: list[bool] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(50):
            state.incr("n")
            ok, _ = state.take_tokens("b", rate=1e-6, burst=100)
            with lock:
                allowed.append(ok)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert state.get_int("n") == 300
    assert sum(allowed) == 100


def test_two_redis_connections_share_state(redis_state_factory: Callable[[], RedisState]) -> None:
    a, b = redis_state_factory(), redis_state_factory()
    a.incr("shared", 2)
    assert b.incr("shared", 3) == 5
    assert a.take_tokens("bucket", rate=1e-6, burst=1) == (True, 0.0)
    assert b.take_tokens("bucket", rate=1e-6, burst=1)[0] is False
    a.push_vector("v", np.arange(3), max_len=4)
    np.testing.assert_array_equal(b.vectors("v"), [[0, 1, 2]])
    assert a.set_once("alert", 60) and not b.set_once("alert", 60)


def test_redis_keys_are_namespaced(redis_state_factory: Callable[[], RedisState]) -> None:
    state = redis_state_factory()
    state.incr("k")
    assert state._client.get(state.prefix + "k") == b"1"
    assert state.prefix.startswith("bastion:")
    assert state._client.get("k") is None


def test_open_state_picks_the_backend() -> None:
    assert isinstance(open_state(None), InMemoryState)
    assert isinstance(open_state("memory://"), InMemoryState)
    with pytest.raises(ConfigurationError, match="unsupported state URL 'ftp://x'"):
        open_state("ftp://x")


def test_unreachable_redis_is_a_configuration_error_naming_the_url() -> None:
    with pytest.raises(ConfigurationError) as info:
        open_state("redis://:hunter2@127.0.0.1:1/0")
    message = str(info.value)
    assert "redis://:***@127.0.0.1:1/0" in message
    assert "hunter2" not in message
    assert "start-redis.sh" in message


def test_malformed_redis_url_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="Redis URL"):
        RedisState("redis://127.0.0.1:notaport/0")


def test_batch_push_and_read_match_the_single_forms(state: StateBackend) -> None:
    rows = np.arange(12, dtype=np.float32).reshape(6, 2)
    batch_state: Any = state  # push_rows / vectors_many are extras of both backends
    batch_state.push_rows([("a", rows, 4), ("b", rows[:1], 3), ("c", rows[:0], 3)], ttl=60.0)
    for row in rows:
        state.push_vector("a2", row, max_len=4)
    a, b, c, a2 = batch_state.vectors_many(["a", "b", "c", "a2"])
    np.testing.assert_array_equal(a, rows[-4:])
    np.testing.assert_array_equal(a, a2)
    np.testing.assert_array_equal(b, rows[:1])
    assert c.shape == (0, 0)
    batch_state.push_rows([("a", rows[:2], 4)])
    np.testing.assert_array_equal(state.vectors("a"), np.concatenate([rows[-2:], rows[:2]]))
    with pytest.raises(ConfigurationError, match="2-D"):
        batch_state.push_rows([("a", np.zeros(3), 4)])


def test_in_memory_state_forgets_expired_keys_and_full_buckets() -> None:
    clock = FakeClock()
    state = InMemoryState(clock=clock)
    state._SWEEP_EVERY = 1  # sweep on every write
    for i in range(50):
        state.take_tokens(f"bucket-{i}", rate=1.0, burst=2)
        state.incr(f"window-{i}", ttl=5.0)
        state.set_once(f"alert-{i}", ttl=5.0)
    clock.now += 10.0  # every bucket refilled, every TTL past
    state.incr("fresh")
    assert len(state._buckets) == 0 and len(state._markers) == 0
    assert set(state._ints) == {"fresh"}
