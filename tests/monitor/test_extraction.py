"""Extraction detection: synthetic extraction streams are flagged, natural traffic is not.

The victim is a small MLP labelling MNIST (the 10,000 test images, the only split shipped);
natural traffic is those images split across 20 clients, as in the calibration documented in
``bastion.monitor.extraction``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from bastion.data import load_digits, load_mnist
from bastion.errors import ConfigurationError, InputError
from bastion.models.zoo import small_mlp, train_classifier
from bastion.monitor.alerts import Alert, AlertManager
from bastion.monitor.extraction import (
    ExtractionDetector,
    ExtractionVerdict,
    calibrate_extraction,
)
from bastion.monitor.state import InMemoryState, RedisState, StateBackend

Victim = tuple[nn.Module, np.ndarray, np.ndarray]  # model, x (n, features), its predictions


def _victim(x: torch.Tensor, y: torch.Tensor, n_train: int) -> Victim:
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[perm].reshape(len(x), -1), y[perm]
    net = train_classifier(
        small_mlp(x.shape[1], 10), x[:n_train], y[:n_train], epochs=5, lr=2e-3, seed=0
    )
    with torch.no_grad():
        predicted = net(x).argmax(1).numpy()
    return net, x.numpy(), predicted


@pytest.fixture(scope="module")
def mnist_victim() -> Victim:
    data = load_mnist()
    return _victim(data.x, data.y, 5000)


@pytest.fixture(scope="module")
def digits_victim() -> Victim:
    data = load_digits()
    return _victim(data.x, data.y, 1200)


def _oracle(net: nn.Module, x: np.ndarray | torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return net(torch.as_tensor(x)).argmax(1).numpy()


def jacobian_stream(
    net: nn.Module, seeds: np.ndarray, n_queries: int, *, step: float = 0.1, seed: int = 0
) -> list[np.ndarray]:
    """Papernot et al. 2017 Jacobian-based augmentation: the query batches, in order.

    Round 0 queries the seeds; each round trains a surrogate on everything queried so far
    (labelled by the victim) and queries ``x + step * sign(d surrogate[label] / dx)`` for every x.
    """
    s = torch.as_tensor(seeds)
    labels = torch.as_tensor(_oracle(net, s))
    batches = [s.numpy()]
    total = len(s)
    while total < n_queries:
        surrogate = train_classifier(
            small_mlp(s.shape[1], 10), s, labels, epochs=10, lr=1e-2, seed=seed
        )
        xg = s.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(surrogate(xg).gather(1, labels[:, None]).sum(), xg)
        new = (s + step * grad.sign()).clamp(0, 1)[: n_queries - total]
        new_labels = torch.as_tensor(_oracle(net, new))
        batches.append(new.numpy())
        total += len(new)
        s, labels = torch.cat([s, new]), torch.cat([labels, new_labels])
    return batches


def first_flag(
    detector: ExtractionDetector,
    client: str,
    net: nn.Module,
    batches: list[np.ndarray],
    chunk: int = 10,
) -> tuple[int, ExtractionVerdict] | None:
    """Feed the batches in chunks; the query count and verdict at the first flag."""
    sent = 0
    for batch in batches:
        for i in range(0, len(batch), chunk):
            part = batch[i : i + chunk]
            verdict = detector.observe(client, part, _oracle(net, part))
            sent += len(part)
            if verdict is not None and verdict.flagged:
                return sent, verdict
    return None


def _seeds(x: np.ndarray, predicted: np.ndarray, per_class: int) -> np.ndarray:
    tail = len(x) // 2  # seeds from the half the victim was not trained on
    idx = [
        tail + int(i) for c in range(10) for i in np.flatnonzero(predicted[tail:] == c)[:per_class]
    ]
    return x[idx]


class Recording:
    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def send(self, alert: Alert) -> None:
        self.alerts.append(alert)


def _alert_on(manager: AlertManager, verdict: ExtractionVerdict | None) -> None:
    if verdict is not None and verdict.flagged:
        manager.raise_alert(
            Alert(
                kind="extraction",
                key=f"extraction:{verdict.client}",
                severity="critical",
                message="extraction suspected",
                details={"reasons": list(verdict.reasons)},
            )
        )


def test_natural_mnist_traffic_from_20_clients_raises_no_alert(mnist_victim: Victim) -> None:
    _, x, predicted = mnist_victim
    state = InMemoryState()
    sink = Recording()
    manager = AlertManager([sink], state)
    detector = ExtractionDetector(state)
    verdicts = 0
    for c, (xs, ps) in enumerate(zip(np.split(x, 20), np.split(predicted, 20), strict=True)):
        for i in range(0, len(xs), 2):
            verdict = detector.observe(f"client-{c}", xs[i : i + 2], ps[i : i + 2])
            verdicts += verdict is not None
            _alert_on(manager, verdict)
    assert verdicts > 20 * 180  # every client was judged for hundreds of queries
    assert sink.alerts == []


def test_natural_digits_traffic_from_20_clients_raises_no_alert(digits_victim: Victim) -> None:
    _, x, predicted = digits_victim
    detector = ExtractionDetector(min_queries=50)
    verdicts = []
    for c in range(20):
        xs, ps = x[c * 89 : (c + 1) * 89], predicted[c * 89 : (c + 1) * 89]
        verdicts += [
            detector.observe(f"client-{c}", xs[i : i + 1], ps[i : i + 1]) for i in range(89)
        ]
    judged = [v for v in verdicts if v is not None]
    assert len(judged) >= 20 * 30
    assert not any(v.flagged for v in judged)


@pytest.mark.parametrize(("times", "order"), [(2, "again"), (3, "again"), (2, "each"),
                                              (3, "shuffled")])
def test_natural_digits_sent_two_or_three_times_raise_no_alert(
    digits_victim: Victim, times: int, order: str
) -> None:
    """Re-sent natural inputs (retries, the same item asked again) are repeats: counted,
    but they add no distance and no near-duplicate flag."""
    _, x, predicted = digits_victim
    detector = ExtractionDetector()  # the defaults: min_queries 100
    judged = 0
    for c in range(6):
        base = np.arange(c * 150, (c + 1) * 150)
        if order == "again":  # the whole set, then again
            idx = np.tile(base, times)
        elif order == "each":  # every input twice in a row
            idx = np.repeat(base, times)
        else:
            idx = np.random.default_rng(c).permutation(np.tile(base, times))
        for i in idx:
            verdict = detector.observe(f"client-{c}", x[i : i + 1], predicted[i : i + 1])
            judged += verdict is not None
            assert verdict is None or not verdict.flagged, (c, verdict)
    assert judged >= 6 * 40
    assert detector.observe("client-0", x[:1], predicted[:1]).n_queries == 150 * times + 1


def test_the_gateway_benchmark_traffic_raises_no_alert(digits_victim: Victim) -> None:
    """benchmarks/gateway.py: 397 held-out digits cycled one per request (httpx), and one
    fixed body sent again and again (hey)."""
    _, x, predicted = digits_victim
    held_out = np.arange(1400, 1797)
    detector = ExtractionDetector()
    cycled = [detector.observe("httpx", x[i : i + 1], predicted[i : i + 1])
              for i in np.tile(held_out, 3)]
    assert sum(v is not None for v in cycled) > 250
    assert not any(v is not None and v.flagged for v in cycled)
    fixed = [detector.observe("hey", x[1400:1401], predicted[1400:1401]) for _ in range(300)]
    assert not any(v is not None and v.flagged for v in fixed)


@pytest.mark.parametrize("victim_name", ["mnist_victim", "digits_victim"])
def test_uniform_random_stream_is_flagged_within_500_queries(
    victim_name: str, request: pytest.FixtureRequest
) -> None:
    net, x, _ = request.getfixturevalue(victim_name)
    rng = np.random.default_rng(1)
    stream = [rng.random((500, x.shape[1]), dtype=np.float32)]
    hit = first_flag(ExtractionDetector(), "mallory", net, stream)
    assert hit is not None
    sent, verdict = hit
    assert sent <= 500
    assert "noise_like" in verdict.reasons
    assert verdict.distance_cv < verdict.min_cv


@pytest.mark.parametrize("victim_name", ["mnist_victim", "digits_victim"])
def test_jacobian_augmentation_stream_is_flagged_within_500_queries(
    victim_name: str, request: pytest.FixtureRequest
) -> None:
    net, x, predicted = request.getfixturevalue(victim_name)
    stream = jacobian_stream(net, _seeds(x, predicted, 5), 500)
    assert sum(len(b) for b in stream) == 500
    hit = first_flag(ExtractionDetector(), "mallory", net, stream)
    assert hit is not None
    sent, verdict = hit
    assert sent <= 500
    assert "near_duplicates" in verdict.reasons


def test_prada_statistic_alone_flags_the_jacobian_stream(mnist_victim: Victim) -> None:
    net, x, predicted = mnist_victim
    stream = jacobian_stream(net, _seeds(x, predicted, 5), 500)
    only_prada = ExtractionDetector(min_cv=0.0, near_rms=0.0)  # the other signals off
    hit = first_flag(only_prada, "mallory", net, stream)
    assert hit is not None
    sent, verdict = hit
    assert sent <= 500
    assert verdict.reasons == ("prada",)
    assert verdict.w_statistic < verdict.threshold_w


def test_repeated_queries_are_flagged() -> None:
    rng = np.random.default_rng(0)
    base = rng.random((5, 64)).astype(np.float32)
    queries = base[rng.integers(0, 5, 200)] + 0.001 * rng.standard_normal((200, 64))
    verdict = ExtractionDetector().observe("bot", queries, np.zeros(200, dtype=np.int64))
    assert verdict is not None and verdict.flagged
    assert verdict.near_duplicate_fraction > 0.9
    assert verdict.n_queries == 200


def test_no_verdict_before_min_queries() -> None:
    rng = np.random.default_rng(0)
    detector = ExtractionDetector(min_queries=50)
    labels = np.zeros(50, dtype=np.int64)
    assert detector.observe("c", rng.random((50, 8)), labels) is None  # 49 distances
    verdict = detector.observe("c", rng.random((1, 8)), labels[:1])
    assert verdict is not None and verdict.n_distances == 50 and verdict.n_queries == 51


def test_clients_are_judged_separately(digits_victim: Victim) -> None:
    net, x, predicted = digits_victim
    detector = ExtractionDetector(min_queries=50)
    rng = np.random.default_rng(3)
    noise = rng.random((120, x.shape[1]), dtype=np.float32)
    detector.observe("mallory", noise, _oracle(net, noise))
    verdict = detector.observe("alice", x[:120], predicted[:120])
    assert verdict is not None and not verdict.flagged


def _replay(states: list[StateBackend], net: nn.Module, x: np.ndarray) -> list[ExtractionVerdict]:
    """Send x in chunks of 20, alternating between detectors on the given states."""
    detectors = [ExtractionDetector(s, min_queries=50) for s in states]
    out = []
    for k, i in enumerate(range(0, len(x), 20)):
        verdict = detectors[k % len(detectors)].observe(
            "shared", x[i : i + 20], _oracle(net, x[i : i + 20])
        )
        if verdict is not None:
            out.append(verdict)
    return out


def test_replicas_on_redis_judge_a_client_on_all_its_queries(
    digits_victim: Victim, redis_state_factory: Callable[[], RedisState]
) -> None:
    net, x, _ = digits_victim
    rng = np.random.default_rng(5)
    probes = x[60:67][rng.integers(0, 7, 140)] + 0.01 * rng.random((140, x.shape[1]))
    stream = np.concatenate([x[:60], probes.astype(np.float32)])  # natural, then probing
    single = _replay([InMemoryState()], net, stream)
    replicas = _replay([redis_state_factory(), redis_state_factory()], net, stream)
    assert [v.flagged for v in replicas] == [v.flagged for v in single]
    assert any(v.flagged for v in single) and not single[0].flagged
    for a, b in zip(single, replicas, strict=True):
        assert a.n_queries == b.n_queries and a.n_distances == b.n_distances
        assert a.w_statistic == pytest.approx(b.w_statistic, abs=1e-6)
        assert a.near_duplicate_fraction == b.near_duplicate_fraction


def test_calibration_on_natural_digits_suggests_thresholds_that_pass_it(
    digits_victim: Victim,
) -> None:
    net, x, predicted = digits_victim
    clients = [
        (f"c{c}", x[c * 89 : (c + 1) * 89], predicted[c * 89 : (c + 1) * 89]) for c in range(20)
    ]
    cal = calibrate_extraction(clients, batch_size=5, min_queries=50)
    assert cal.n_clients == 20 and cal.flagged_clients == ()
    assert 0.85 < cal.lowest_w < 1.0 and cal.threshold_w == pytest.approx(cal.lowest_w - 0.03)
    assert cal.lowest_cv > 0.15 and cal.highest_near_fraction < 0.2
    tuned = ExtractionDetector(
        threshold_w=cal.threshold_w,
        min_cv=cal.min_cv,
        near_fraction=cal.near_fraction,
        min_queries=50,
    )
    noise = np.random.default_rng(2).random((200, x.shape[1]), dtype=np.float32)
    assert first_flag(tuned, "mallory", net, [noise]) is not None


def test_bad_input_and_parameters_are_rejected() -> None:
    detector = ExtractionDetector()
    with pytest.raises(InputError, match="3 queries but 2"):
        detector.observe("c", np.zeros((3, 4)), np.zeros(2, dtype=np.int64))
    with pytest.raises(InputError, match="NaN"):
        detector.observe("c", np.full((1, 4), np.nan), np.zeros(1, dtype=np.int64))
    with pytest.raises(InputError, match="integers"):
        detector.observe("c", np.zeros((1, 4)), np.zeros(1))
    detector.observe("c", np.zeros((2, 4)), np.zeros(2, dtype=np.int64))
    with pytest.raises(InputError, match="features"):
        detector.observe("c", np.zeros((1, 5)), np.zeros(1, dtype=np.int64))
    with pytest.raises(ConfigurationError, match="client"):
        detector.observe("", np.zeros((1, 4)), np.zeros(1, dtype=np.int64))
    with pytest.raises(ConfigurationError, match="threshold_w"):
        ExtractionDetector(threshold_w=1.5)
    with pytest.raises(ConfigurationError, match="max_distances"):
        ExtractionDetector(max_distances=6000)
    with pytest.raises(ConfigurationError, match="must not exceed"):
        ExtractionDetector(min_queries=300, max_distances=200)
    with pytest.raises(ConfigurationError, match="near_fraction"):
        ExtractionDetector(near_fraction=0.0)
    with pytest.raises(InputError, match="no client"):
        calibrate_extraction([("c", np.zeros((5, 4)), np.zeros(5, dtype=np.int64))])


def test_client_names_cannot_reach_another_clients_state() -> None:
    rng = np.random.default_rng(0)
    detector = ExtractionDetector(min_queries=10)
    detector.observe("a", rng.random((20, 4)), np.zeros(20, dtype=np.int64))
    verdict = detector.observe("a:g:0", rng.random((12, 4)), np.zeros(12, dtype=np.int64))
    assert verdict is not None and verdict.n_queries == 12 and verdict.n_distances == 11


@pytest.mark.slow
def test_mnist_calibration_reproduces_the_documented_figures() -> None:
    """The calibration in the module docstring: 4 shuffles x 20 clients x 500 MNIST queries."""
    data = load_mnist()
    lowest = []
    for seed in range(4):
        perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
        x, y = data.x[perm].reshape(len(data), -1), data.y[perm]
        net = train_classifier(small_mlp(784, 10), x[:5000], y[:5000], epochs=5, lr=2e-3, seed=seed)
        predicted = _oracle(net, x)
        xn = x.numpy()
        clients = [
            (f"c{c}", xn[c * 500 : (c + 1) * 500], predicted[c * 500 : (c + 1) * 500])
            for c in range(20)
        ]
        cal = calibrate_extraction(clients)
        assert cal.n_verdicts == 20 * 391 and cal.flagged_clients == ()
        lowest.append((cal.lowest_w, cal.lowest_cv, cal.highest_near_fraction))
    assert min(w for w, _, _ in lowest) > 0.85
    assert min(cv for _, cv, _ in lowest) > 0.10
    assert max(nf for _, _, nf in lowest) < 0.5
