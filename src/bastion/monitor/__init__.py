"""Live monitoring of a served model.

- :mod:`~bastion.monitor.drift`: input and prediction drift (KS, chi-square, PSI, MMD) over
  windows of traffic; :mod:`~bastion.monitor.performance`: accuracy once delayed labels arrive.
  Both keep their state in-process (per replica).
- :mod:`~bastion.monitor.state`: shared state, in memory or in Redis;
  :mod:`~bastion.monitor.limits`: rate limits and query budgets per key;
  :mod:`~bastion.monitor.extraction`: model-extraction detection per client;
  :mod:`~bastion.monitor.alerts`: de-duplicated alerts to the log and webhooks.
"""

from bastion.monitor.alerts import (
    SEVERITIES,
    Alert,
    AlertManager,
    AlertSink,
    LogSink,
    QueuedSink,
    WebhookSink,
)
from bastion.monitor.drift import (
    ChiSquareDrift,
    DriftDetector,
    DriftMonitor,
    DriftResult,
    KSDrift,
    MMDDrift,
    PSIDrift,
    make_detector,
)
from bastion.monitor.extraction import (
    ExtractionCalibration,
    ExtractionDetector,
    ExtractionVerdict,
    calibrate_extraction,
)
from bastion.monitor.limits import QueryBudget, RateLimiter
from bastion.monitor.performance import PerformanceMonitor, PerformanceResult
from bastion.monitor.state import InMemoryState, RedisState, StateBackend, open_state

__all__ = [
    "SEVERITIES",
    "Alert",
    "AlertManager",
    "AlertSink",
    "ChiSquareDrift",
    "DriftDetector",
    "DriftMonitor",
    "DriftResult",
    "ExtractionCalibration",
    "ExtractionDetector",
    "ExtractionVerdict",
    "InMemoryState",
    "KSDrift",
    "LogSink",
    "MMDDrift",
    "PSIDrift",
    "PerformanceMonitor",
    "PerformanceResult",
    "QueryBudget",
    "QueuedSink",
    "RateLimiter",
    "RedisState",
    "StateBackend",
    "WebhookSink",
    "calibrate_extraction",
    "make_detector",
    "open_state",
]
