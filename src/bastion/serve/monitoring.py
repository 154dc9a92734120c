"""Live monitoring of served traffic: input drift, extraction (PRADA), delayed-label accuracy.

The request path only *enqueues* an event (a few microseconds); a background thread feeds the
monitors and raises alerts, so a slow detector or a slow webhook never delays an answer. When
the queue is full (``max_queue`` events) new events are dropped and counted in
``bastion_monitor_dropped_total`` rather than blocking requests. :meth:`MonitorWorker.drain`
waits until every queued event is processed (tests and shutdown use it).

Per model:

- drift: a :class:`~bastion.monitor.drift.DriftMonitor` over windows of ``window`` inputs,
  with the contract's own distribution tests (``method: contract``, :class:`ContractDrift`) or
  a detector of :mod:`bastion.monitor.drift` calibrated on a reference file. A drifted window
  raises a ``drift`` alert; every window's p-value goes to ``bastion_drift_p_value``.
- extraction: :class:`~bastion.monitor.extraction.ExtractionDetector` per (model, key); a
  verdict raises an ``extraction`` alert naming the key. With ``per_owner`` (the default) the
  detector also judges each owner's (service account's) whole stream over all its keys, so
  that splitting queries over several keys does not hide them; that view alerts only for an
  owner seen with two or more keys (one key's stream is already judged as the key).
- performance: :class:`~bastion.monitor.performance.PerformanceMonitor`; labels arrive through
  ``POST /v1/models/{name}/feedback``; a degraded window raises a ``performance`` alert.

Alerts go through one :class:`~bastion.monitor.alerts.AlertManager` (log + optional webhook,
de-duplicated per key for ``dedup_seconds``).
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bastion.data.contracts import Contract, validate
from bastion.errors import BastionError, ConfigurationError
from bastion.monitor.alerts import Alert, AlertManager
from bastion.monitor.drift import DriftDetector, DriftMonitor, DriftResult
from bastion.serve.config import GatewayPolicy, ModelSettings
from bastion.serve.metrics import GatewayMetrics

__all__ = ["ContractDrift", "ModelMonitor", "MonitorWorker", "PredictEvent"]

log = logging.getLogger(__name__)


class ContractDrift(DriftDetector):
    """A drift detector from a data contract's reference sketches (no reference data needed).

    ``test(batch)`` runs the contract's distribution checks (KS tests of per-sample features
    against the reference, Benjamini–Hochberg at ``fdr``); the p-value reported is the
    smallest q-value, and ``drift`` is true when any feature's q-value is below ``fdr``.
    """

    method = "contract"

    def __init__(self, contract: Contract, *, fdr: float = 0.05) -> None:
        if not 0 < fdr < 1:
            raise ConfigurationError(f"fdr must be in (0, 1), got {fdr}")
        self.contract, self.fdr = contract, fdr

    @property
    def n_reference(self) -> int:
        return int(self.contract.reference.n)

    def _test(self, batch: Any) -> DriftResult:
        arr = np.asarray(batch)
        report = validate(arr.astype(getattr(self.contract, "dtype", arr.dtype), copy=False),
                          self.contract, distribution=True, fdr=self.fdr, min_drift_rows=2)
        tests = report.drift
        if not tests:
            return DriftResult(drift=False, p_value=1.0, statistic=0.0, threshold=self.fdr,
                               method=self.method, details={"n_batch": int(arr.shape[0])})
        worst = min(tests, key=lambda t: t.q_value)
        drifted = [t.column for t in tests if t.drifted]
        return DriftResult(drift=bool(drifted), p_value=float(worst.q_value),
                           statistic=float(worst.statistic), threshold=self.fdr,
                           method=self.method, details={"n_batch": int(arr.shape[0]),
                                                        "drifted_features": drifted[:20]})


@dataclass(frozen=True)
class PredictEvent:
    """What the monitors see of one answered request."""

    model: str
    client: str
    request_id: str
    x: np.ndarray
    predicted: np.ndarray
    owner: str = ""


def _drift_detector(policy: GatewayPolicy, model: ModelSettings, contract: Contract | None
                    ) -> Any:
    d = policy.monitoring.drift
    if d.method == "contract":
        if contract is None:
            return None
        return ContractDrift(contract, fdr=d.p_value)
    from bastion.data.contracts import load_data
    from bastion.monitor import drift as drift_mod

    reference = np.asarray(load_data(d.reference or ""), dtype=np.float32)
    cls = {"ks": drift_mod.KSDrift, "mmd": drift_mod.MMDDrift, "psi": drift_mod.PSIDrift}[d.method]
    kwargs: dict[str, Any] = {} if d.method == "psi" else {"alpha": d.p_value}
    try:
        return cls(reference, **kwargs)
    except BastionError as exc:
        raise ConfigurationError(f"monitoring.drift for {model.name!r}: {exc}") from exc


class ModelMonitor:
    """The monitors of one model (see the module docstring)."""

    def __init__(self, model: str, *, drift: DriftMonitor | None, extraction: Any | None,
                 performance: Any | None, alerts: AlertManager, metrics: GatewayMetrics) -> None:
        self.model = model
        self.drift, self.extraction, self.performance = drift, extraction, performance
        self.alerts, self.metrics = alerts, metrics
        self.drift_results: list[DriftResult] = []
        self.judged = 0  # extraction verdicts reached (clients past min_queries)
        self.per_owner = True
        self._owner_keys: dict[str, set[str]] = {}  # owner -> keys seen (this process)

    @classmethod
    def build(cls, policy: GatewayPolicy, settings: ModelSettings, contract: Contract | None, *,
              state: Any, alerts: AlertManager, metrics: GatewayMetrics) -> ModelMonitor:
        mon = policy.monitoring
        drift = None
        if mon.drift.enabled:
            detector = _drift_detector(policy, settings, contract)
            if detector is not None:
                drift = DriftMonitor(detector, window=mon.drift.window)
            else:
                log.warning("model %s: drift monitoring needs a contract (method 'contract'); off",
                            settings.name)
        extraction = None
        if mon.extraction.enabled:
            from bastion.monitor.extraction import ExtractionDetector

            kwargs: dict[str, Any] = {}
            if mon.extraction.threshold is not None:
                kwargs["threshold_w"] = mon.extraction.threshold
            if mon.extraction.min_queries is not None:
                kwargs["min_queries"] = mon.extraction.min_queries
            extraction = ExtractionDetector(state, **kwargs)
        performance = None
        if mon.performance.enabled:
            from bastion.monitor.performance import PerformanceMonitor

            p = mon.performance
            performance = PerformanceMonitor(window=p.window, baseline_accuracy=p.baseline_accuracy,
                                             tolerance=p.tolerance)
        monitor = cls(settings.name, drift=drift, extraction=extraction,
                      performance=performance, alerts=alerts, metrics=metrics)
        monitor.per_owner = mon.extraction.per_owner
        return monitor

    def _alert(self, kind: str, key: str, severity: str, message: str,
               details: dict[str, Any]) -> None:
        if self.alerts.raise_alert(Alert(kind=kind, key=key, severity=severity, message=message,
                                         details=details)):
            self.metrics.alerts.labels(kind).inc()

    def observe(self, events: list[PredictEvent]) -> None:
        """Feed a batch of this model's events, in arrival order, to the monitors.

        Events of one key are concatenated into one ``observe`` call of the extraction
        detector (its statistics are computed once per call, not once per request), and all
        inputs into one drift update.
        """
        if self.performance is not None:
            for event in events:
                self.performance.record(event.request_id, event.predicted)
        if self.extraction is not None:
            by_client: dict[str, list[PredictEvent]] = {}
            for event in events:
                by_client.setdefault(event.client, []).append(event)
            for client, mine in by_client.items():
                self._extraction(client, mine)
            if self.per_owner:
                by_owner: dict[str, list[PredictEvent]] = {}
                for event in events:
                    if event.owner:
                        by_owner.setdefault(event.owner, []).append(event)
                for owner, mine in by_owner.items():
                    self._owner_extraction(owner, mine)
        if self.drift is not None:
            x = events[0].x if len(events) == 1 else np.concatenate([e.x for e in events])
            for result in self.drift.update(x):
                self._on_drift(result)

    def _judge(self, who: str, events: list[PredictEvent]) -> Any:
        detector = self.extraction
        if detector is None:
            return None
        if len(events) == 1:
            x, predicted = events[0].x, events[0].predicted
        else:
            x = np.concatenate([e.x for e in events])
            predicted = np.concatenate([e.predicted for e in events])
        return detector.observe(f"{self.model}:{who}", x, predicted)

    @staticmethod
    def _details(verdict: Any) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(verdict).items()}

    def _extraction(self, client: str, events: list[PredictEvent]) -> None:
        verdict = self._judge(client, events)
        self.judged += verdict is not None
        if verdict is not None and verdict.flagged:
            self._alert("extraction", f"extraction:{self.model}:{client}", "critical",
                        f"key {client} on model {self.model} queries like a model-"
                        f"extraction attack ({', '.join(verdict.reasons)})",
                        {**self._details(verdict), "model": self.model, "client": client})

    def _owner_extraction(self, owner: str, events: list[PredictEvent]) -> None:
        keys = self._owner_keys.setdefault(owner, set())
        if len(keys) < 64:
            keys.update(e.client for e in events)
        if len(self._owner_keys) > 100_000:
            self._owner_keys.clear()
        verdict = self._judge(f"owner={owner}", events)
        if verdict is not None and verdict.flagged and len(keys) >= 2:
            self._alert("extraction", f"extraction:{self.model}:owner={owner}", "critical",
                        f"the keys of {owner} on model {self.model} together query like a "
                        f"model-extraction attack ({', '.join(verdict.reasons)}; "
                        f"{len(keys)} keys)",
                        {**self._details(verdict), "model": self.model, "owner": owner,
                         "keys": sorted(keys)[:20]})

    def _on_drift(self, result: DriftResult) -> None:
        self.drift_results.append(result)
        del self.drift_results[:-100]
        if result.p_value is not None:
            self.metrics.drift_p.labels(self.model, result.method).set(result.p_value)
        self.metrics.drift_windows.labels(self.model, str(result.drift).lower()).inc()
        if result.drift:
            self._alert("drift", f"drift:{self.model}", "warning",
                        f"inputs of model {self.model} drifted ({result.method}, p="
                        f"{result.p_value if result.p_value is not None else 'n/a'})",
                        {"model": self.model, **result.to_dict()})

    def label(self, request_id: str, labels: np.ndarray) -> Any:
        if self.performance is None:
            return None
        result = self.performance.label(request_id, labels)
        if result is not None:
            acc = getattr(result, "accuracy", None)
            if acc is not None:
                self.metrics.accuracy.labels(self.model).set(float(acc))
            if getattr(result, "degraded", False):
                self._alert("performance", f"performance:{self.model}", "critical",
                            f"accuracy of model {self.model} fell to {acc}",
                            {"model": self.model})
        return result


class MonitorWorker:
    """A background thread that feeds queued events to the monitors (see module doc).

    It wakes at most every ``interval`` seconds and handles everything queued by then (at
    most ``max_batch`` events) in one call of ``handler``: the detectors' per-call costs are
    paid once per batch instead of once per request, and the request path is not interrupted
    by a monitor thread waking for every request.
    """

    def __init__(self, handler: Callable[[list[PredictEvent]], None], metrics: GatewayMetrics,
                 *, max_queue: int = 10_000, interval: float = 0.05,
                 max_batch: int = 1000) -> None:
        if interval < 0 or max_batch < 1 or max_queue < 1:
            raise ConfigurationError("interval must be >= 0, max_batch and max_queue >= 1")
        self._handler, self._metrics = handler, metrics
        self._interval, self._max_batch = interval, max_batch
        self._queue: queue.Queue[PredictEvent | None] = queue.Queue(maxsize=max_queue)
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bastion-monitor", daemon=True)
        self._closed = False
        self._thread.start()

    def submit(self, event: PredictEvent) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self._metrics.dropped.inc()

    def _loop(self) -> None:
        while True:
            batch = [self._queue.get()]
            if batch[0] is not None and self._interval > 0:
                self._wake.wait(self._interval)  # let a batch gather (drain() cuts it short)
                self._wake.clear()
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            events = [e for e in batch if e is not None]
            cpu0 = time.thread_time()
            try:
                by_model: dict[str, list[PredictEvent]] = {}
                for event in events:
                    by_model.setdefault(event.model, []).append(event)
                for model_events in by_model.values():
                    try:
                        self._handler(model_events)
                    except Exception:  # a monitor bug must not stop monitoring
                        log.exception("monitoring failed on requests of model %s",
                                      model_events[0].model)
            finally:
                self._metrics.monitor_cpu.inc(time.thread_time() - cpu0)
                for _ in batch:
                    self._queue.task_done()
            if len(events) < len(batch):
                return

    def drain(self) -> None:
        """Block until every event queued so far has been processed."""
        self._wake.set()
        self._queue.join()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self._queue.put(None)
        self._thread.join(timeout=10)
