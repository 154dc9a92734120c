"""Prometheus metrics of one gateway (each app has its own registry, so tests can run many).

=====================================  =======================================================
metric                                 meaning
=====================================  =======================================================
``bastion_requests_total``             requests by ``endpoint``, ``model`` and ``status``
``bastion_request_seconds``            latency histogram of the whole request by ``endpoint``
``bastion_stage_seconds``              time in each pipeline ``stage`` (auth, limits, ...): a
                                       summary (``_sum`` / ``_count``), kept as two plain
                                       numbers per stage so timing costs ~1 µs per stage
``bastion_inputs_total``               samples predicted, by ``model``
``bastion_screened_total``             samples flagged or rejected by screening, by ``model``
``bastion_alerts_total``               alerts raised (after de-duplication), by ``kind``
``bastion_drift_p_value``              p-value of the last completed drift window, by ``model``
``bastion_drift_windows_total``        drift windows tested, by ``model`` and ``drift``
``bastion_accuracy``                   accuracy over the last window of delayed labels
``bastion_monitor_dropped_total``      monitoring events dropped because the queue was full
``bastion_monitor_cpu_seconds_total``  CPU time of the monitoring thread (drift, PRADA, alerts)
``bastion_model_loaded``               1 when the model is loaded
=====================================  =======================================================
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import Metric, SummaryMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE_LATEST", "GatewayMetrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
STAGES = ("auth", "authorise", "limits", "read_body", "parse", "contract", "screening",
          "predict", "output", "monitor")


class _StageTimes(Collector):
    """Count and total seconds per stage, updated on the event-loop thread, read at scrape."""

    def __init__(self) -> None:
        self.count = dict.fromkeys(STAGES, 0)
        self.total = dict.fromkeys(STAGES, 0.0)

    def collect(self) -> Iterator[Metric]:
        family = SummaryMetricFamily("bastion_stage_seconds", "Time per pipeline stage",
                                     labels=["stage"])
        for stage in STAGES:
            family.add_metric([stage], count_value=self.count[stage],
                              sum_value=self.total[stage])
        yield family


class GatewayMetrics:
    """The gateway's collectors, in a private :class:`CollectorRegistry`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("bastion_requests", "Requests by endpoint, model and status",
                                ("endpoint", "model", "status"), registry=r)
        self.latency = Histogram("bastion_request_seconds", "Request latency",
                                 ("endpoint",), buckets=_LATENCY_BUCKETS, registry=r)
        self.stages = _StageTimes()
        r.register(self.stages)
        self.inputs = Counter("bastion_inputs", "Samples predicted", ("model",), registry=r)
        self.screened = Counter("bastion_screened", "Samples flagged or rejected by screening",
                                ("model", "action"), registry=r)
        self.alerts = Counter("bastion_alerts", "Alerts raised after de-duplication", ("kind",),
                              registry=r)
        self.drift_p = Gauge("bastion_drift_p_value", "p-value of the last drift window",
                             ("model", "method"), registry=r)
        self.drift_windows = Counter("bastion_drift_windows", "Drift windows tested",
                                     ("model", "drift"), registry=r)
        self.accuracy = Gauge("bastion_accuracy", "Accuracy over the last labelled window",
                              ("model",), registry=r)
        self.dropped = Counter("bastion_monitor_dropped", "Monitoring events dropped (queue full)",
                               registry=r)
        self.monitor_cpu = Counter("bastion_monitor_cpu_seconds",
                                   "CPU time of the monitoring thread", registry=r)
        self.loaded = Gauge("bastion_model_loaded", "1 when the model is loaded", ("model",),
                            registry=r)
    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stages.count[stage] += 1
        self.stages.total[stage] += seconds

    def render(self) -> bytes:
        return generate_latest(self.registry)
