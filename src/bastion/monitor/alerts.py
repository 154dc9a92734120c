"""Alerts from the monitors to the log and to a webhook, de-duplicated across replicas.

An :class:`Alert` is a frozen value: ``kind`` (``"extraction"``, ``"drift"``...), a ``key``
that identifies the condition (``"extraction:client-7"``), a severity, a message and details.
An :class:`AlertManager` sends each alert to every sink unless an alert with the same key was
sent in the last ``dedup_seconds``; the marker lives in the :class:`StateBackend`, so replicas
sharing Redis send one alert between them. A sink that fails is logged and never raises into
the request path: an alert must not take the gateway down.

>>> from bastion.monitor.state import InMemoryState
>>> manager = AlertManager([LogSink()], InMemoryState(), dedup_seconds=300)
>>> alert = Alert(kind="drift", key="drift:model-a", severity="warning", message="input drift")
>>> manager.raise_alert(alert), manager.raise_alert(alert)
(True, False)
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import httpx

from bastion.errors import ConfigurationError
from bastion.monitor.state import StateBackend

__all__ = [
    "SEVERITIES",
    "Alert",
    "AlertManager",
    "AlertSink",
    "LogSink",
    "QueuedSink",
    "WebhookSink",
]

logger = logging.getLogger(__name__)

SEVERITIES = ("info", "warning", "critical")
_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "critical": logging.CRITICAL}


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True)
class Alert:
    """One alert.

    Attributes:
        kind: what raised it (``"extraction"``, ``"drift"``, ``"performance"``...).
        key: the de-duplication key: alerts with equal keys within the window are sent once.
        severity: ``"info"``, ``"warning"`` or ``"critical"``.
        message: one line for a human.
        details: JSON-serialisable facts (statistics, thresholds, client).
        at: when it was raised (UTC).
    """

    kind: str
    key: str
    severity: str
    message: str
    details: Mapping[str, Any] = field(default_factory=dict)
    at: datetime.datetime = field(default_factory=_now)

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ConfigurationError(
                f"severity must be one of {', '.join(SEVERITIES)}, got {self.severity!r}"
            )
        for name in ("kind", "key", "message"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigurationError(f"alert {name} must be a non-empty string")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``at`` in ISO 8601; non-JSON detail values as strings)."""
        return {
            "kind": self.kind,
            "key": self.key,
            "severity": self.severity,
            "message": self.message,
            "details": json.loads(json.dumps(dict(self.details), default=str)),
            "at": self.at.isoformat(),
        }


@runtime_checkable
class AlertSink(Protocol):
    """Somewhere alerts go. ``send`` may raise; the manager logs the failure."""

    def send(self, alert: Alert) -> None: ...


class LogSink:
    """Writes each alert to a logger (``bastion.monitor.alerts`` by default) at its severity."""

    def __init__(self, logger_name: str = __name__) -> None:
        self._logger = logging.getLogger(logger_name)

    def __repr__(self) -> str:
        return f"LogSink({self._logger.name!r})"

    def send(self, alert: Alert) -> None:
        self._logger.log(
            _LEVELS[alert.severity],
            "alert %s [%s]: %s %s",
            alert.kind,
            alert.key,
            alert.message,
            json.dumps(alert.to_dict()["details"], sort_keys=True),
        )


class WebhookSink:
    """POSTs each alert as JSON to ``url``, with a timeout and bounded retries.

    A 2xx answer is success; a transport error or a 5xx/429 answer is retried up to
    ``retries`` more times with exponential back-off starting at ``backoff`` seconds; a 4xx
    answer is not retried. Failures are logged (warning), never raised.

    Args:
        url: ``http://`` or ``https://`` endpoint.
        timeout: seconds for each attempt (connect and read).
        retries: extra attempts after the first.
        backoff: seconds before the first retry, doubling after each.
        headers: extra headers (e.g. an ``Authorization`` token for the receiver).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 2.0,
        retries: int = 2,
        backoff: float = 0.2,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
            raise ConfigurationError(
                f"webhook URL must start with http:// or https://, got {url!r}"
            )
        if not (math.isfinite(timeout) and timeout > 0):
            raise ConfigurationError(
                f"timeout must be a positive number of seconds, got {timeout!r}"
            )
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ConfigurationError(f"retries must be a non-negative integer, got {retries!r}")
        if not (math.isfinite(backoff) and backoff >= 0):
            raise ConfigurationError(
                f"backoff must be a non-negative number of seconds, got {backoff!r}"
            )
        self.url = url
        self.timeout = float(timeout)
        self.retries = retries
        self.backoff = float(backoff)
        self._client = httpx.Client(
            timeout=self.timeout,
            headers=dict(headers or {}),
            transport=transport,
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"WebhookSink({self.url!r}, timeout={self.timeout}, retries={self.retries})"

    def send(self, alert: Alert) -> None:
        """Deliver ``alert``; a failure is logged at warning level, never raised."""
        self.deliver(alert)

    def deliver(self, alert: Alert) -> bool:
        """Deliver ``alert`` and say whether the receiver accepted it."""
        payload = alert.to_dict()
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                response = self._client.post(self.url, json=payload)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
                continue
            if response.is_success:
                logger.debug("alert %s delivered to %s", alert.key, self.url)
                return True
            problem = f"HTTP {response.status_code}"
            if response.status_code < 500 and response.status_code != 429:
                break
        logger.warning(
            "alert %s not delivered to %s after %d attempt(s): %s",
            alert.key,
            self.url,
            attempt + 1,
            problem,
        )
        return False

    def close(self) -> None:
        self._client.close()


class QueuedSink:
    """Delivers to another sink from a background thread, so that ``send`` never blocks.

    Wrap a :class:`WebhookSink` in it on the request path: ``send`` only enqueues. When
    ``max_queue`` alerts are waiting, new ones are dropped and logged. :meth:`flush` waits
    until the queue is empty; :meth:`close` delivers what is queued, then stops the thread
    (and closes the wrapped sink).
    """

    def __init__(self, sink: AlertSink, *, max_queue: int = 1000) -> None:
        if not isinstance(sink, AlertSink):
            raise ConfigurationError(
                f"{sink!r} is not an alert sink (it needs a send(alert) method)"
            )
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
            raise ConfigurationError(f"max_queue must be a positive integer, got {max_queue!r}")
        self.sink = sink
        self.dropped = 0
        self._queue: queue.Queue[Alert | None] = queue.Queue(maxsize=max_queue)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="bastion-alerts", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"QueuedSink({self.sink!r})"

    def _run(self) -> None:
        while True:
            alert = self._queue.get()
            try:
                if alert is None:
                    return
                self.sink.send(alert)
            except Exception:
                logger.exception("alert sink %r failed on alert %s", self.sink, alert and alert.key)
            finally:
                self._queue.task_done()

    def send(self, alert: Alert) -> None:
        """Queue ``alert`` for delivery; drop it (logged) when the queue is full or closed."""
        if self._closed:
            logger.warning("alert %s dropped: the queued sink is closed", alert.key)
            return
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            self.dropped += 1
            logger.warning(
                "alert %s dropped: %d alerts already waiting", alert.key, self._queue.maxsize
            )

    def flush(self) -> None:
        """Wait until every queued alert has been handed to the wrapped sink."""
        self._queue.join()

    def close(self) -> None:
        """Deliver what is queued, stop the thread, close the wrapped sink."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        close = getattr(self.sink, "close", None)
        if callable(close):
            close()


class AlertManager:
    """Sends alerts to every sink, at most once per ``key`` per ``dedup_seconds``.

    Args:
        sinks: where alerts go; each failure is logged and the other sinks still get the alert.
        state: holds the de-duplication markers (shared by replicas on Redis).
        dedup_seconds: how long an alert key suppresses repeats.
    """

    def __init__(
        self, sinks: Sequence[AlertSink], state: StateBackend, *, dedup_seconds: float = 300.0
    ) -> None:
        if not (
            isinstance(dedup_seconds, int | float)
            and math.isfinite(dedup_seconds)
            and dedup_seconds > 0
        ):
            raise ConfigurationError(
                f"dedup_seconds must be a positive number, got {dedup_seconds!r}"
            )
        for sink in sinks:
            if not isinstance(sink, AlertSink):
                raise ConfigurationError(
                    f"{sink!r} is not an alert sink (it needs a send(alert) method)"
                )
        self.sinks = list(sinks)
        self.state = state
        self.dedup_seconds = float(dedup_seconds)
        self.sent = 0
        self.suppressed = 0

    def __repr__(self) -> str:
        return f"AlertManager({self.sinks!r}, dedup_seconds={self.dedup_seconds})"

    def raise_alert(self, alert: Alert) -> bool:
        """Send ``alert`` unless its key was sent recently; False when de-duplicated."""
        try:
            first = self.state.set_once(f"alert:{alert.key}", self.dedup_seconds)
        except Exception:  # state unreachable: better a duplicate alert than a lost one
            logger.exception("alert de-duplication unavailable; sending %s anyway", alert.key)
            first = True
        if not first:
            self.suppressed += 1
            return False
        for sink in self.sinks:
            try:
                sink.send(alert)
            except Exception:  # a broken sink must not break the caller (the request path)
                logger.exception("alert sink %r failed on alert %s", sink, alert.key)
        self.sent += 1
        return True

    def close(self) -> None:
        """Close sinks that hold connections."""
        for sink in self.sinks:
            close = getattr(sink, "close", None)
            if callable(close):
                close()
