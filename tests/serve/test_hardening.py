"""The gateway under attack (issue 15): bad bodies, Host tricks, keyless floods, proxies,
slow and vanishing clients, durable audit, lifetime budgets. Each test failed before the fix."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import threading

import numpy as np
import pytest

JSON = {"Content-Type": "application/json"}


def _post(h, body: bytes, who: str = "alice", **headers: str):
    return h.client.post("/v1/models/digits/predict", content=body,
                         headers=h.headers(who, **JSON, **headers))


# --- input and protocol ----------------------------------------------------------------------

def test_a_huge_integer_literal_is_422_not_500(make_gateway):
    h = make_gateway()
    r = _post(h, b'{"inputs": [[' + b"9" * 5000 + b"]]}")
    assert r.status_code == 422, r.text
    assert "number" in r.json()["detail"]


def test_duplicate_json_keys_are_refused(make_gateway, digits_np):
    h = make_gateway()
    one = json.dumps(digits_np[0][:1].tolist())
    r = _post(h, f'{{"inputs": {one}, "inputs": {one}}}'.encode())
    assert r.status_code == 422
    assert "duplicate key" in r.json()["detail"] and "inputs" in r.json()["detail"]


def test_a_compressed_body_is_415_naming_content_encoding(make_gateway, digits_np):
    h = make_gateway()
    body = gzip.compress(json.dumps({"inputs": digits_np[0][:1].tolist()}).encode())
    r = _post(h, body, **{"Content-Encoding": "gzip"})
    assert r.status_code == 415
    assert "Content-Encoding" in r.json()["detail"] and "gzip" in r.json()["detail"]


def test_a_long_model_name_is_not_echoed_whole(make_gateway, digits_np):
    h = make_gateway()
    name = "m" * 5000
    r = h.client.post(f"/v1/models/{name}/predict", json={"inputs": [[0.0]]},
                      headers=h.headers())
    assert 400 <= r.status_code < 500
    assert len(r.text) < 1000 and "m" * 600 not in r.text


@pytest.mark.parametrize("host", ["[::1]evil.com", "[localhost]:1", "[::1]:80x", "evil.com",
                                  "localhost:80:80", "[::1", "local host"])
def test_malformed_or_foreign_host_headers_are_400(make_gateway, host):
    h = make_gateway({"server": {"allowed_hosts": ["localhost", "127.0.0.1", "::1"]}})
    r = h.client.get("/healthz", headers={"Host": host})
    assert r.status_code == 400, host
    assert r.json()["error"] == "bad_host"


@pytest.mark.parametrize("host", ["[::1]", "[::1]:8000", "localhost:8000", "127.0.0.1"])
def test_well_formed_allowed_hosts_pass(make_gateway, host):
    h = make_gateway({"server": {"allowed_hosts": ["localhost", "127.0.0.1", "::1"]}})
    assert h.client.get("/healthz", headers={"Host": host}).status_code == 200


# --- availability ---------------------------------------------------------------------------

def test_the_default_body_cap_follows_the_batch_limit(make_gateway, digits_np):
    h = make_gateway({"server": {"max_body_bytes": None, "max_batch": 256}})
    cap = h.gateway.body_caps["digits"]
    assert cap == 256 * (64 * 24 + 16) + 1024  # 256 samples of 64 numbers as JSON text
    big = json.dumps({"inputs": np.tile(digits_np[0][:1], (7000, 1, 1, 1)).tolist()}).encode()
    assert len(big) > cap
    r = _post(h, big)
    assert r.status_code == 413  # refused on Content-Length: never parsed
    # a full batch of 256 random (long) numbers still fits
    full = json.dumps({"inputs": np.random.default_rng(0).random((256, 1, 8, 8)).tolist()})
    assert len(full) < cap


def test_an_oversized_batch_is_refused_before_arrays_are_built_and_is_charged(
        make_gateway, digits_np):
    from bastion.errors import InputError
    from bastion.serve.inputs import parse_inputs

    samples = [[[[0.0] * 8] * 8]] * 300 + [[[[0.0]]]]  # ragged too: np.array would complain
    with pytest.raises(InputError, match="301 samples in one request; at most 256"):
        parse_inputs(json.dumps({"inputs": samples}).encode(), max_batch=256, sample_ndim=3)
    h = make_gateway({"server": {"max_body_bytes": None}, "limits": {"budget": 1000}})
    body = json.dumps({"inputs": np.tile(digits_np[0][:1], (300, 1, 1, 1)).tolist()})
    r = _post(h, body.encode())
    assert r.status_code == 422 and "300 samples" in r.json()["detail"]
    key_id = h.store.list_keys("alice")[0].key_id
    assert h.gateway.budget.remaining(key_id) == 1000 - 256  # the refused work was charged


def test_large_bodies_are_parsed_off_the_event_loop(make_gateway, digits_np, monkeypatch):
    import bastion.serve.pipeline as pipeline

    threads: list[str] = []
    real = pipeline.parse_inputs

    def spy(body, **kw):  # type: ignore[no-untyped-def]
        threads.append(threading.current_thread().name)
        return real(body, **kw)

    monkeypatch.setattr(pipeline, "parse_inputs", spy)
    h = make_gateway({"server": {"max_body_bytes": None}})
    loop_thread = h.client.portal.call(_thread_name)
    assert h.predict(digits_np[0][:2]).status_code == 200  # small: parsed inline
    assert h.predict(digits_np[0][:200]).status_code == 200  # ~60 KB: in a worker thread
    assert threads[0] == loop_thread and threads[1] != loop_thread


async def _thread_name() -> str:
    return threading.current_thread().name


def test_a_valid_key_behind_a_busy_proxy_is_never_throttled(make_gateway, digits_np):
    h = make_gateway({"limits": {"auth_failures": 2}})
    bad = {"Authorization": "Bearer bst_0123456789abcdef_" + "A" * 43}
    x = digits_np[0][:1].tolist()
    for _ in range(6):
        h.client.post("/v1/models/digits/predict", json={"inputs": x}, headers=bad)
    assert h.predict(digits_np[0][:1]).status_code == 200


def test_forwarded_addresses_count_only_from_trusted_proxies(make_gateway, digits_np):
    bad = {"Authorization": "Bearer bst_0123456789abcdef_" + "A" * 43}
    x = digits_np[0][:1].tolist()

    def codes(h):  # five failures, each claiming another client address
        return [h.client.post("/v1/models/digits/predict", json={"inputs": x},
                              headers={**bad, "X-Forwarded-For": f"203.0.113.{i}"}).status_code
                for i in range(5)]

    # the test client's peer is 127.0.0.1: untrusted, X-Forwarded-For is ignored
    first = make_gateway({"limits": {"auth_failures": 2}})
    assert codes(first) == [401, 401, 429, 429, 429]
    h = make_gateway({"limits": {"auth_failures": 2},
                      "server": {"trusted_proxies": ["127.0.0.0/8"]}},
                     store=first.store, tokens=first.tokens)
    assert codes(h) == [401] * 5  # behind a trusted proxy: five different clients
    h.gateway.drain()
    addresses = {e.details.get("address") for e in h.store.audit.entries()
                 if e.action == "predict"}
    assert "203.0.113.0" in addresses


def test_keyless_refusals_are_aggregated_per_address(make_gateway, digits_np):
    h = make_gateway()
    x = digits_np[0][:1].tolist()
    codes = [h.client.post("/v1/models/digits/predict", json={"inputs": x}).status_code
             for _ in range(40)]
    assert codes == [401] * 30 + [429] * 10  # limits.auth_failures: 30
    assert h.predict(digits_np[0][:1]).status_code == 200
    h.gateway.drain()  # closes the open windows
    entries = [e for e in h.store.audit.entries() if e.actor == "anonymous"]
    assert len(entries) == 2  # the first refusal alone, then one entry counting the rest
    assert entries[0].details["status"] == 401
    agg = entries[1]
    assert agg.action == "refused_unauthenticated" and agg.details["count"] == 39
    assert agg.details["errors"] == {"unauthenticated": 29, "rate_limited": 10}
    assert h.store.audit.verify().ok


def test_a_client_that_disconnects_mid_body_is_a_client_event(make_gateway, caplog):
    h = make_gateway()
    sent: list[dict] = []
    messages = [{"type": "http.request", "body": b'{"inputs": [[', "more_body": True},
                {"type": "http.disconnect"}]

    async def receive():  # type: ignore[no-untyped-def]
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):  # type: ignore[no-untyped-def]
        sent.append(message)

    scope = _scope(h, "POST", "/v1/models/digits/predict", body_length=None)
    with caplog.at_level(logging.INFO):
        h.client.portal.call(h.app, scope, receive, send)
    assert sent[0]["status"] == 499
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    h.gateway.drain()
    entry = [e for e in h.store.audit.entries() if e.action == "predict"][-1]
    assert entry.details["status"] == 499 and entry.details["error"] == "client_closed_request"
    assert 'status="499"' in h.metrics() and 'status="500"' not in h.metrics()


def test_a_body_that_never_arrives_times_out_with_408(make_gateway):
    h = make_gateway({"server": {"body_timeout": 0.3}})
    sent: list[dict] = []

    async def receive():  # type: ignore[no-untyped-def]
        await asyncio.sleep(30)  # a client that stalls mid-body (cut off by the timeout)
        return {"type": "http.disconnect"}

    async def send(message):  # type: ignore[no-untyped-def]
        sent.append(message)

    h.client.portal.call(h.app, _scope(h, "POST", "/v1/models/digits/predict"), receive, send)
    assert sent[0]["status"] == 408
    assert json.loads(sent[1]["body"])["error"] == "request_timeout"


def _scope(h, method: str, path: str, body_length: int | None = 100) -> dict:
    headers = [(b"host", b"localhost"), (b"content-type", b"application/json"),
               (b"authorization", f"Bearer {h.tokens['alice']}".encode())]
    if body_length is not None:
        headers.append((b"content-length", str(body_length).encode()))
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
            "query_string": b"", "root_path": "", "headers": headers,
            "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}


# --- durable audit ------------------------------------------------------------------------

def test_an_answer_is_sent_only_after_its_audit_entry_is_committed(make_gateway, digits_np):
    h = make_gateway()
    assert h.gateway.audit.durable  # the default mode
    for i in range(15):
        r = h.predict(digits_np[0][i:i + 1]) if i % 3 else h.predict(digits_np[0][:1], "carol")
        rid = r.headers["x-request-id"]
        # no flush, no drain: the entry is already in the database when the answer arrives
        assert [e for e in h.store.audit.entries(limit=3) if e.details.get("request_id") == rid]


def test_batched_mode_is_an_explicit_option(make_gateway, digits_np):
    h = make_gateway({"access": {"audit_mode": "batched"}})
    assert not h.gateway.audit.durable
    assert h.predict(digits_np[0][:1]).status_code == 200
    h.gateway.drain()
    assert len([e for e in h.store.audit.entries() if e.action == "predict"]) == 1


def test_an_unwritable_audit_log_answers_503_and_the_entry_is_kept(make_gateway, digits_np):
    from bastion.errors import BastionError

    h = make_gateway({"access": {"audit_wait": 0.5}})
    log = h.store.audit
    real = log.append_many
    broken = threading.Event()
    broken.set()

    def flaky(records, **kw):  # type: ignore[no-untyped-def]
        if broken.is_set():
            raise BastionError("access database error: disk full")
        return real(records, **kw)

    log.append_many = flaky  # type: ignore[method-assign]
    r = h.predict(digits_np[0][:1])
    assert r.status_code == 503 and r.json()["error"] == "audit_unavailable"
    broken.clear()
    h.gateway.drain()
    rid = r.headers["x-request-id"]
    assert len([e for e in log.entries() if e.details.get("request_id") == rid]) == 1


# --- budgets --------------------------------------------------------------------------------

def test_a_lifetime_budget_survives_a_restart_with_memory_state(make_gateway, digits_np):
    changes = {"limits": {"budget": 10, "budget_window": None}}
    one = make_gateway(changes)
    assert one.predict(digits_np[0][:6]).status_code == 200
    one.gateway.close()
    two = make_gateway(changes, store=one.store, tokens=one.tokens)  # a new process' state
    r = two.predict(digits_np[0][:5])
    assert r.status_code == 429 and r.json()["error"] == "budget_exhausted"
    assert two.predict(digits_np[0][:3]).status_code == 200  # 6 + 1 (the refused) + 3


def test_a_lifetime_budget_in_memory_without_audit_is_refused(make_gateway):
    from bastion.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="lifetime query budget"):
        make_gateway({"access": {"audit": False}})
