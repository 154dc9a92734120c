"""Alerts: a real loopback webhook receiver, retries, failures logged, de-duplication."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from bastion.errors import ConfigurationError
from bastion.monitor.alerts import Alert, AlertManager, LogSink, QueuedSink, WebhookSink
from bastion.monitor.state import InMemoryState, RedisState, StateBackend


class Receiver:
    """A loopback HTTP server that records JSON bodies and answers with scripted statuses."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.statuses: list[int] = []  # answers to the next requests; 200 once exhausted
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                receiver.bodies.append(json.loads(self.rfile.read(length)))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


def _alert(key: str = "extraction:mallory", severity: str = "critical") -> Alert:
    return Alert(
        kind="extraction",
        key=key,
        severity=severity,
        message="PRADA flagged mallory",
        details={"client": "mallory", "w": 0.81, "threshold": 0.92},
    )


def test_webhook_posts_the_alert_as_json(receiver: Receiver) -> None:
    sink = WebhookSink(receiver.url, timeout=2.0, retries=0)
    alert = _alert()
    assert sink.deliver(alert) is True
    sink.close()
    assert len(receiver.bodies) == 1
    body = receiver.bodies[0]
    assert body["kind"] == "extraction" and body["key"] == "extraction:mallory"
    assert body["severity"] == "critical" and body["details"] == {
        "client": "mallory",
        "w": 0.81,
        "threshold": 0.92,
    }
    assert body["at"] == alert.at.isoformat()


def test_webhook_retries_server_errors_then_succeeds(receiver: Receiver) -> None:
    receiver.statuses = [503, 500]
    sink = WebhookSink(receiver.url, retries=2, backoff=0.01)
    assert sink.deliver(_alert()) is True
    sink.close()
    assert len(receiver.bodies) == 3


def test_webhook_gives_up_after_bounded_retries_and_logs(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.statuses = [500] * 10
    sink = WebhookSink(receiver.url, retries=2, backoff=0.01)
    with caplog.at_level(logging.WARNING, logger="bastion.monitor.alerts"):
        sink.send(_alert())  # does not raise
    sink.close()
    assert len(receiver.bodies) == 3
    assert "not delivered" in caplog.text and "HTTP 500" in caplog.text


def test_webhook_does_not_retry_client_errors(receiver: Receiver) -> None:
    receiver.statuses = [404, 404]
    sink = WebhookSink(receiver.url, retries=3, backoff=0.01)
    assert sink.deliver(_alert()) is False
    sink.close()
    assert len(receiver.bodies) == 1


def test_unreachable_webhook_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    sink = WebhookSink("http://127.0.0.1:1/hook", timeout=0.5, retries=1, backoff=0.01)
    with caplog.at_level(logging.WARNING, logger="bastion.monitor.alerts"):
        assert sink.deliver(_alert()) is False
    sink.close()
    assert "after 2 attempt(s)" in caplog.text and "ConnectError" in caplog.text


def test_manager_deduplicates_by_key(receiver: Receiver, state: StateBackend) -> None:
    sink = WebhookSink(receiver.url, retries=0)
    manager = AlertManager([sink, LogSink()], state, dedup_seconds=60)
    assert manager.raise_alert(_alert()) is True
    assert manager.raise_alert(_alert()) is False
    assert manager.raise_alert(_alert(key="extraction:eve")) is True
    manager.close()
    assert [b["key"] for b in receiver.bodies] == ["extraction:mallory", "extraction:eve"]
    assert (manager.sent, manager.suppressed) == (2, 1)


def test_dedup_expires(receiver: Receiver) -> None:
    now = [0.0]
    manager = AlertManager(
        [WebhookSink(receiver.url, retries=0)],
        InMemoryState(clock=lambda: now[0]),
        dedup_seconds=300,
    )
    assert manager.raise_alert(_alert())
    now[0] += 299
    assert not manager.raise_alert(_alert())
    now[0] += 2
    assert manager.raise_alert(_alert())
    manager.close()
    assert len(receiver.bodies) == 2


def test_two_replicas_send_one_alert(
    receiver: Receiver, redis_state_factory: Callable[[], RedisState]
) -> None:
    managers = [
        AlertManager([WebhookSink(receiver.url, retries=0)], redis_state_factory())
        for _ in range(2)
    ]
    results = [m.raise_alert(_alert()) for m in managers]
    for m in managers:
        m.close()
    assert results == [True, False]
    assert len(receiver.bodies) == 1


def test_failing_sink_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def send(self, alert: Alert) -> None:
            raise RuntimeError("sink down")

    class Recording:
        def __init__(self) -> None:
            self.got: list[Alert] = []

        def send(self, alert: Alert) -> None:
            self.got.append(alert)

    recording = Recording()
    manager = AlertManager([Broken(), recording], InMemoryState())
    with caplog.at_level(logging.ERROR, logger="bastion.monitor.alerts"):
        assert manager.raise_alert(_alert())
    assert len(recording.got) == 1
    assert "sink down" in caplog.text


def test_log_sink_logs_at_the_severity(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="bastion.monitor.alerts"):
        LogSink().send(_alert(severity="warning"))
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "extraction:mallory" in record.getMessage() and '"w": 0.81' in record.getMessage()


def test_parameters_are_validated() -> None:
    with pytest.raises(ConfigurationError, match="severity"):
        _alert(severity="urgent")
    with pytest.raises(ConfigurationError, match="http"):
        WebhookSink("ftp://example.org")
    with pytest.raises(ConfigurationError, match="retries"):
        WebhookSink("http://127.0.0.1:1", retries=-1)
    with pytest.raises(ConfigurationError, match="dedup_seconds"):
        AlertManager([], InMemoryState(), dedup_seconds=0)
    with pytest.raises(ConfigurationError, match="sink"):
        AlertManager([object()], InMemoryState())  # type: ignore[list-item]


class Gated:
    """A sink that blocks until released, recording what it got."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.got: list[str] = []

    def send(self, alert: Alert) -> None:
        self.release.wait(timeout=10)
        self.got.append(alert.key)


def test_queued_sink_never_blocks_and_drops_on_overflow(caplog: pytest.LogCaptureFixture) -> None:
    gated = Gated()
    sink = QueuedSink(gated, max_queue=2)
    with caplog.at_level(logging.WARNING, logger="bastion.monitor.alerts"):
        for i in range(6):  # the worker holds one, two wait, the rest are dropped
            sink.send(_alert(key=f"k{i}"))
    assert gated.got == []  # send returned while the sink was blocked
    assert 3 <= sink.dropped <= 4 and "dropped" in caplog.text
    gated.release.set()
    sink.flush()
    assert gated.got[0] == "k0" and len(gated.got) == 6 - sink.dropped
    sink.close()


def test_queued_webhook_delivers_on_close(receiver: Receiver) -> None:
    sink = QueuedSink(WebhookSink(receiver.url, retries=0))
    manager = AlertManager([sink], InMemoryState())
    for key in ("a", "b", "a", "c"):
        manager.raise_alert(_alert(key=key))
    manager.close()
    assert sorted(b["key"] for b in receiver.bodies) == ["a", "b", "c"]
