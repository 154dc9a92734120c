"""Monitoring through the gateway: extraction alerts to a webhook, drift within one window."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
import torch

from bastion.models.zoo import small_mlp


class _Receiver(BaseHTTPRequestHandler):
    alerts: list[dict[str, Any]]

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.server.alerts.append(json.loads(self.rfile.read(length)))  # type: ignore[attr-defined]
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.alerts = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/alerts", server.alerts  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()
    thread.join()


class ListSink:
    def __init__(self) -> None:
        self.alerts: list[Any] = []

    def send(self, alert: Any) -> None:
        self.alerts.append(alert)


def _add_keys(h: Any, n: int) -> list[str]:
    names = []
    for i in range(n):
        name = f"client{i:02d}"
        h.store.add_identity(name, kind="service", actor="admin")
        h.store.grant(name, "consumer", "model:digits", actor="admin")
        h.tokens[name] = h.store.create_key(name, actor="admin").token
        names.append(name)
    return names


def _extraction_gateway(make_gateway: Any, url: str) -> Any:
    return make_gateway({"monitoring": {
        "drift": {"enabled": False},
        "extraction": {"enabled": True, "min_queries": 50},
        "webhook": {"url": url, "timeout": 2.0, "retries": 0}}})


def _send_until_alert(h: Any, who: str, stream: np.ndarray, alerts: list[Any],
                      batch: int = 10) -> int | None:
    """Queries sent when the first alert arrived, or None."""
    for start in range(0, len(stream), batch):
        r = h.predict(stream[start:start + batch], who=who)
        assert r.status_code == 200, r.text
        h.gateway.drain()
        if alerts:
            return start + batch
    return None


def test_natural_traffic_from_20_keys_raises_no_extraction_alert(make_gateway, webhook,
                                                                 digits_np):
    url, alerts = webhook
    h = _extraction_gateway(make_gateway, url)
    names = _add_keys(h, 20)
    x = digits_np[0]
    share = len(x) // 20  # 89 natural queries each: judged from the 50th on
    for i, name in enumerate(names):
        part = x[i * share:(i + 1) * share]
        for start in range(0, share, 10):
            assert h.predict(part[start:start + 10], who=name).status_code == 200
            h.gateway.drain()  # judged after every request, as at low traffic
    assert h.gateway.monitors["digits"].judged >= 20 * 3  # every key was judged 4 times
    assert alerts == []
    assert 'bastion_alerts_total{kind="extraction"}' not in h.metrics()


def test_random_query_stream_is_flagged_within_500_queries(make_gateway, webhook):
    url, alerts = webhook
    h = _extraction_gateway(make_gateway, url)
    stream = np.random.default_rng(0).random((500, 1, 8, 8)).astype(np.float32)
    sent = _send_until_alert(h, "alice", stream, alerts)
    assert sent is not None and sent <= 500
    assert alerts[0]["kind"] == "extraction"
    assert alerts[0]["details"]["model"] == "digits"
    assert 'bastion_alerts_total{kind="extraction"} 1.0' in h.metrics()


def test_jacobian_augmented_stream_is_flagged_within_500_queries(make_gateway, webhook,
                                                                  digits_np):
    """Papernot et al.'s augmentation: seeds, then steps of 0.1 along the sign of a
    substitute model's input gradient for its own predicted class."""
    url, alerts = webhook
    h = _extraction_gateway(make_gateway, url)
    torch.manual_seed(0)
    substitute = small_mlp(64, 10)
    points = torch.from_numpy(digits_np[0][1700:1710].copy())
    stream = [points]
    while sum(len(s) for s in stream) < 500:
        p = points.clone().requires_grad_(True)
        logits = substitute(p)
        logits.gather(1, logits.argmax(1, keepdim=True)).sum().backward()
        points = (points + 0.1 * p.grad.sign()).clamp(0, 1).detach()
        stream.append(points)
    queries = torch.cat(stream)[:500].numpy()
    sent = _send_until_alert(h, "alice", queries, alerts)
    assert sent is not None and sent <= 500


def test_drift_is_detected_within_one_window_and_a_stable_stream_raises_none(make_gateway,
                                                                             digits_np):
    sink = ListSink()
    h = make_gateway({"monitoring": {"drift": {"enabled": True, "window": 200},
                                     "extraction": {"enabled": False}}}, alert_sinks=[sink])
    x = digits_np[0]
    stable = x[1400:1600]
    for start in range(0, 200, 20):
        assert h.predict(stable[start:start + 20]).status_code == 200
    h.gateway.drain()
    monitor = h.gateway.monitors["digits"]
    assert monitor.drift.windows_tested == 1
    assert sink.alerts == []
    drifted = np.clip(x[1597:1797] * 0.8 + 0.2, 0, 1).astype(np.float32)  # brighter images
    for start in range(0, 180, 20):
        assert h.predict(drifted[start:start + 20]).status_code == 200
    h.gateway.drain()
    assert sink.alerts == []  # the window is not complete yet
    h.predict(drifted[180:200])
    h.gateway.drain()
    assert [a.kind for a in sink.alerts] == ["drift"]
    assert monitor.drift.windows_tested == 2
    text = h.metrics()
    assert 'bastion_drift_windows_total{drift="true",model="digits"} 1.0' in text
    assert 'bastion_drift_p_value{method="contract",model="digits"}' in text


def test_feedback_reports_accuracy_and_only_to_the_key_that_asked(make_gateway, digits_np):
    h = make_gateway({"monitoring": {"performance": {"enabled": True, "window": 20,
                                                     "baseline_accuracy": 0.9,
                                                     "tolerance": 0.1}}})
    x, y = digits_np
    r = h.predict(x[1400:1420])
    rid = r.json()["request_id"]
    other = h.client.post("/v1/models/digits/feedback", headers=h.headers("carol"),
                          json={"request_id": rid, "labels": y[1400:1420].tolist()})
    assert other.status_code == 403  # carol's key is scoped to 'read'
    wrong = h.client.post("/v1/models/digits/feedback", headers=h.headers(),
                          json={"request_id": "nope", "labels": [1]})
    assert wrong.status_code == 404
    bad = h.client.post("/v1/models/digits/feedback", headers=h.headers(),
                        json={"request_id": rid, "labels": [1, 2]})
    assert bad.status_code == 422
    ok = h.client.post("/v1/models/digits/feedback", headers=h.headers(),
                       json={"request_id": rid, "labels": y[1400:1420].tolist()})
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert body["accepted"] == 20 and body["accuracy"] > 0.85 and body["degraded"] is False
    # the model labelled badly: the next window degrades
    r = h.predict(x[1420:1440])
    wrong_labels = ((y[1420:1440] + 1) % 10).tolist()
    degraded = h.client.post("/v1/models/digits/feedback", headers=h.headers(),
                             json={"request_id": r.json()["request_id"], "labels": wrong_labels})
    assert degraded.json()["degraded"] is True
    assert 'bastion_accuracy{model="digits"} 0.0' in h.metrics()


def test_natural_digits_sent_again_raise_no_extraction_alert(make_gateway, webhook, digits_np):
    """Retries and re-sent inputs (the same natural digits two or three times) are repeats,
    not probing: they must not look like an attack (default min_queries, 100)."""
    url, alerts = webhook
    h = make_gateway({"monitoring": {"drift": {"enabled": False},
                                     "extraction": {"enabled": True},
                                     "webhook": {"url": url, "timeout": 2.0, "retries": 0}}})
    names = _add_keys(h, 2)
    x = digits_np[0]
    for k, (name, times) in enumerate(zip(names, (2, 3), strict=True)):
        part = x[k * 120:(k + 1) * 120]
        for _ in range(times):
            for start in range(0, 120, 20):
                assert h.predict(part[start:start + 20], who=name).status_code == 200
                h.gateway.drain()
    assert h.gateway.monitors["digits"].judged >= 4  # the keys were judged
    assert alerts == []


def test_a_stream_split_over_two_keys_of_one_owner_is_flagged(make_gateway, webhook):
    """2 x 95 random queries, each key under min_queries (100): only the owner's view sees
    the 190 queries together."""
    url, alerts = webhook
    h = make_gateway({"monitoring": {"drift": {"enabled": False},
                                     "extraction": {"enabled": True, "min_queries": 100},
                                     "webhook": {"url": url, "timeout": 2.0, "retries": 0}}})
    h.store.add_identity("mallory", kind="service", actor="admin")
    h.store.grant("mallory", "consumer", "model:digits", actor="admin")
    for i in (1, 2):
        h.tokens[f"mallory{i}"] = h.store.create_key("mallory", actor="admin").token
    stream = np.random.default_rng(1).random((190, 1, 8, 8)).astype(np.float32)
    for i, who in enumerate(("mallory1", "mallory2")):
        part = stream[i * 95:(i + 1) * 95]
        for start in range(0, 95, 10):
            assert h.predict(part[start:start + 10], who=who).status_code == 200
            h.gateway.drain()
    assert alerts, "the split stream was not flagged"
    assert all("owner=mallory" in a["key"] for a in alerts)  # no single key was
    assert alerts[0]["details"]["owner"] == "mallory"
    assert len(alerts[0]["details"]["keys"]) == 2
