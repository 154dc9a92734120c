"""PerformanceMonitor: delayed labels joined by request id, windowed accuracy vs a baseline."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from bastion.errors import ConfigurationError, InputError
from bastion.monitor import PerformanceMonitor, PerformanceResult


def test_window_accuracy_closed_form_and_binomial_p_value() -> None:
    mon = PerformanceMonitor(window=10, baseline_accuracy=0.9, tolerance=0.1)
    for i in range(10):
        mon.record(f"r{i}", i % 3)
    results = [mon.label(f"r{i}", 0) for i in range(10)]  # right for i = 0, 3, 6, 9
    assert results[:9] == [None] * 9
    res = results[9]
    assert isinstance(res, PerformanceResult)
    assert (res.n, res.correct, res.accuracy, res.degraded) == (10, 4, 0.4, True)
    assert res.p_value == pytest.approx(stats.binom.cdf(4, 10, 0.9))
    assert mon.last == res and mon.pending == 0


def test_labels_arrive_out_of_order_and_batches_count_per_sample() -> None:
    mon = PerformanceMonitor(window=6, baseline_accuracy=0.8, tolerance=0.2)
    mon.record("a", [1, 2, 3])
    mon.record("b", np.array([4, 5]))
    mon.record("c", torch.tensor(6))
    assert mon.label("c", 6) is None
    assert mon.label("b", [4, 0]) is None
    res = mon.label("a", np.array([1, 2, 3]))
    assert res is not None and res.correct == 5 and res.accuracy == pytest.approx(5 / 6)
    assert not res.degraded  # 0.833 >= 0.8 - 0.2


def test_unknown_duplicate_and_mismatched_ids_rejected() -> None:
    mon = PerformanceMonitor(window=5, baseline_accuracy=0.9, tolerance=0.05)
    with pytest.raises(InputError, match="no prediction"):
        mon.label("never", 1)
    mon.record("x", 1)
    with pytest.raises(InputError, match="already recorded"):
        mon.record("x", 2)
    with pytest.raises(InputError, match="labels"):
        mon.label("x", [1, 1])
    mon.label("x", 1)
    with pytest.raises(InputError, match="already"):
        mon.label("x", 1)  # labelled twice


def test_pending_predictions_are_bounded() -> None:
    mon = PerformanceMonitor(window=5, baseline_accuracy=0.9, tolerance=0.05, max_pending=3)
    for i in range(5):
        mon.record(i, 0)
    assert mon.pending == 3 and mon.evicted == 2
    with pytest.raises(InputError, match="max_pending"):
        mon.label(0, 0)
    mon.label(4, 0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window": 0, "baseline_accuracy": 0.9, "tolerance": 0.1},
        {"window": 10, "baseline_accuracy": 0.0, "tolerance": 0.0},
        {"window": 10, "baseline_accuracy": 1.2, "tolerance": 0.1},
        {"window": 10, "baseline_accuracy": 0.9, "tolerance": -0.1},
        {"window": 10, "baseline_accuracy": 0.9, "tolerance": 0.95},
        {"window": 10, "baseline_accuracy": 0.9, "tolerance": 0.1, "max_pending": 0},
    ],
)
def test_bad_parameters_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        PerformanceMonitor(**kwargs)  # type: ignore[arg-type]


def test_real_model_decay_flagged_and_healthy_traffic_not(
    digits_mlp: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    net, x, y = digits_mlp
    net.eval()
    with torch.no_grad():
        baseline = float((net(x[:150]).argmax(1) == y[:150]).float().mean())
    mon = PerformanceMonitor(window=150, baseline_accuracy=baseline, tolerance=0.1)
    g = torch.Generator().manual_seed(0)
    noisy = (x[150:300] + 0.6 * torch.randn(x[150:300].shape, generator=g)).clamp(0, 1)
    results = []
    for name, batch, labels in (("healthy", x[150:300], y[150:300]), ("noisy", noisy, y[150:300])):
        with torch.no_grad():
            preds = net(batch).argmax(1)
        for i in range(len(batch)):
            mon.record(f"{name}-{i}", int(preds[i]))
        for i in range(len(batch)):
            res = mon.label(f"{name}-{i}", int(labels[i]))
            if res is not None:
                results.append(res)
    assert baseline > 0.85
    assert [r.degraded for r in results] == [False, True]
    assert results[1].p_value < 1e-3


def test_thread_safe_counting() -> None:
    mon = PerformanceMonitor(window=100, baseline_accuracy=0.5, tolerance=0.1)
    for i in range(1000):
        mon.record(i, i % 2)
    out: list[PerformanceResult] = []
    lock = threading.Lock()

    def work(ids: range) -> None:
        for i in ids:
            res = mon.label(i, 0)
            if res is not None:
                with lock:
                    out.append(res)

    threads = [threading.Thread(target=work, args=(range(k, 1000, 4),)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 10 and sum(r.correct for r in out) == 500
    assert sorted(r.window_index for r in out) == list(range(10))
