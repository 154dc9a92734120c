"""Live monitoring of a served model: input and prediction drift, performance with delayed labels.

Everything here keeps its state in-process unless stated otherwise.
"""

from bastion.monitor.drift import (
    ChiSquareDrift,
    DriftDetector,
    DriftMonitor,
    DriftResult,
    KSDrift,
    MMDDrift,
    PSIDrift,
)
from bastion.monitor.performance import PerformanceMonitor, PerformanceResult

__all__ = [
    "ChiSquareDrift",
    "DriftDetector",
    "DriftMonitor",
    "DriftResult",
    "KSDrift",
    "MMDDrift",
    "PSIDrift",
    "PerformanceMonitor",
    "PerformanceResult",
]
