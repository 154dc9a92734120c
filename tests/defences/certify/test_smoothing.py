"""Randomized smoothing: closed-form radii on a linear model, abstention, the statistics,
determinism, validation, and Gaussian augmentation on digits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from bastion.defences.certify import (
    ABSTAIN,
    CertifyResult,
    SmoothedClassifier,
    certified_accuracy,
    train_gaussian_augmentation,
)
from bastion.defences.certify._stats import binomial_p_value, clopper_pearson_lower
from bastion.errors import ConfigurationError, InputError, ModelError
from bastion.models import TorchClassifier

SIGMA = 0.5
DIM = 5


def _linear(w: torch.Tensor, b: float) -> nn.Module:
    """f(x) = 1 if w.x + b > 0 else 0, as logits (0, w.x + b)."""
    net = nn.Linear(w.numel(), 2)
    with torch.no_grad():
        net.weight.zero_()
        net.weight[1] = w
        net.bias.copy_(torch.tensor([0.0, b]))
    return net


@pytest.fixture(scope="module")
def hyperplane() -> tuple[torch.Tensor, float, nn.Module]:
    w = torch.tensor([0.8, -1.6, 0.4, 1.2, -0.4])
    return w, 0.3, _linear(w, 0.3)


def _points(w: torch.Tensor, b: float, signed_distances: list[float]) -> torch.Tensor:
    """Points at the given signed L2 distances from the hyperplane w.x + b = 0."""
    unit = w / w.norm()
    base = torch.full((DIM,), 0.25)
    base = base - (float(w @ base) + b) / float(w.norm()) * unit  # onto the hyperplane
    return torch.stack([base + d * unit for d in signed_distances])


def test_linear_model_certified_radius_matches_closed_form(
    hyperplane: tuple[torch.Tensor, float, nn.Module],
) -> None:
    # For f(x) = [w.x + b > 0], P(f(x + δ) = 1) = Φ((w.x + b) / (σ‖w‖)) = Φ(s/σ) with s the signed
    # distance to the hyperplane, so the smoothed classifier equals f and the exact certified
    # radius is σ Φ⁻¹(Φ(|s|/σ)) = |s|. CERTIFY uses the Clopper-Pearson bound pA_lower instead:
    # with probability >= 1 - α it is below pA (radius <= |s|), and with probability >= 1 - δ
    # (Hoeffding on the count, and CP is tighter than the Hoeffding bound at level α)
    # pA_lower >= pA - sqrt(ln(1/δ) / 2n) - sqrt(ln(1/α) / 2n).
    w, b, net = hyperplane
    distances = [0.6, -0.45, 1.0, 0.3, -0.15]
    x = _points(w, b, distances)
    n, alpha, delta = 100_000, 0.001, 1e-6
    smoothed = SmoothedClassifier(net, sigma=SIGMA, num_classes=2, batch_size=50_000, seed=3)
    res = smoothed.certify(x, n0=100, n=n, alpha=alpha)
    slack = math.sqrt(math.log(1 / delta) / (2 * n)) + math.sqrt(math.log(1 / alpha) / (2 * n))
    for i, s in enumerate(distances):
        p_a = stats.norm.cdf(abs(s) / SIGMA)
        assert int(res.prediction[i]) == (1 if s > 0 else 0)
        radius = float(res.radius[i])
        assert radius <= abs(s)
        assert radius >= SIGMA * stats.norm.ppf(p_a - slack)
        # the radius is exactly σ Φ⁻¹ of the Clopper-Pearson bound of the vote count
        k = int(res.count[i])
        assert abs(k / n - p_a) <= 5 * math.sqrt(p_a * (1 - p_a) / n)
        expected = SIGMA * stats.norm.ppf(stats.beta.ppf(alpha, k, n - k + 1))
        assert radius == pytest.approx(expected, rel=1e-9)
        assert float(res.p_lower[i]) == pytest.approx(stats.beta.ppf(alpha, k, n - k + 1))


def test_more_samples_tighten_the_radius(
    hyperplane: tuple[torch.Tensor, float, nn.Module],
) -> None:
    w, b, net = hyperplane
    x = _points(w, b, [0.8])
    smoothed = SmoothedClassifier(net, sigma=SIGMA, num_classes=2, batch_size=20_000)
    small = float(smoothed.certify(x, n=1_000).radius[0])
    large = float(smoothed.certify(x, n=100_000).radius[0])
    assert small < large <= 0.8
    assert 0.8 - large < 0.5 * (0.8 - small)


def test_abstains_on_the_decision_boundary(
    hyperplane: tuple[torch.Tensor, float, nn.Module],
) -> None:
    w, b, net = hyperplane
    x = _points(w, b, [0.0, 0.0, 2.0])
    x[1] += 1e-3 * w / w.norm()  # pA = Φ(0.002): far too close to 1/2 to decide
    smoothed = SmoothedClassifier(net, sigma=SIGMA, num_classes=2)
    pred = smoothed.predict(x, n=1_000)
    assert pred.tolist() == [ABSTAIN, ABSTAIN, 1]
    res = smoothed.certify(x, n0=100, n=5_000)
    assert res.prediction.tolist() == [ABSTAIN, ABSTAIN, 1]
    assert res.abstained.tolist() == [True, True, False]
    assert res.radius[:2].tolist() == [0.0, 0.0]
    assert (res.p_lower[:2] <= 0.5).all()
    assert float(res.radius[2]) > 1.0


def test_predict_abstains_less_with_more_samples(
    hyperplane: tuple[torch.Tensor, float, nn.Module],
) -> None:
    # pA = Φ(0.1 / 0.5) ≈ 0.579: 20 votes cannot separate the classes, 20,000 can
    w, b, net = hyperplane
    x = _points(w, b, [0.1, -0.1])
    smoothed = SmoothedClassifier(net, sigma=SIGMA, num_classes=2)
    assert smoothed.predict(x, n=20).tolist() == [ABSTAIN, ABSTAIN]
    assert smoothed.predict(x, n=20_000).tolist() == [1, 0]


def test_statistics_match_scipy() -> None:
    n, alpha = 500, 0.01
    ks = np.array([0, 1, 250, 400, 499, 500])
    lower = clopper_pearson_lower(ks, n, alpha)
    for k, lo in zip(ks, lower, strict=True):
        ci = stats.binomtest(int(k), n, alternative="greater").proportion_ci(
            confidence_level=1 - alpha, method="exact"
        )
        assert lo == pytest.approx(ci.low, abs=1e-12)
    tops, runners = np.array([30, 12, 10, 57, 7]), np.array([10, 12, 0, 43, 3])
    p = binomial_p_value(tops, runners)
    for a, r, pv in zip(tops, runners, p, strict=True):
        assert pv == pytest.approx(stats.binomtest(int(a), int(a + r), 0.5).pvalue, rel=1e-9)


def test_classifier_base_counts_queries_and_agrees_with_module() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 3))
    clf = TorchClassifier(net, input_shape=(6,), num_classes=3)
    x = torch.rand(4, 6)
    via_clf = SmoothedClassifier(clf, sigma=0.3, batch_size=128).certify(x, n0=50, n=400)
    assert clf.queries == 4 * (50 + 400)
    via_net = SmoothedClassifier(net, sigma=0.3, num_classes=3, batch_size=128).certify(
        x, n0=50, n=400
    )
    assert torch.equal(via_clf.count, via_net.count)
    assert torch.equal(via_clf.prediction, via_net.prediction)


def test_deterministic_under_seed_and_restores_mode() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))
    net.train()
    x = torch.rand(5, 6)
    a = SmoothedClassifier(net, sigma=0.4, num_classes=3, seed=7).certify(x, n0=20, n=300)
    b = SmoothedClassifier(net, sigma=0.4, num_classes=3, seed=7).certify(x, n0=20, n=300)
    c = SmoothedClassifier(net, sigma=0.4, num_classes=3, seed=8).certify(x, n0=20, n=300)
    assert torch.equal(a.count, b.count) and torch.equal(a.radius, b.radius)
    assert not torch.equal(a.count, c.count)
    assert all(m.training for m in net.modules())  # eval while sampling, train mode restored
    p1 = SmoothedClassifier(net, sigma=0.4, num_classes=3, seed=7).predict(x, n=200)
    p2 = SmoothedClassifier(net, sigma=0.4, num_classes=3, seed=7).predict(x, n=200)
    assert torch.equal(p1, p2)


def test_certified_accuracy_closed_form() -> None:
    res = CertifyResult(
        prediction=torch.tensor([0, 1, ABSTAIN, 2, 1]),
        radius=torch.tensor([0.5, 0.1, 0.0, 1.2, 0.8], dtype=torch.float64),
        p_lower=torch.full((5,), 0.9, dtype=torch.float64),
        count=torch.full((5,), 90),
        sigma=0.5,
        n0=10,
        n=100,
        alpha=0.001,
    )
    y = torch.tensor([0, 1, 2, 2, 0])  # the last prediction is wrong
    curve = certified_accuracy(res, y, [0.0, 0.1, 0.5, 1.0, 2.0])
    assert curve == [(0.0, 0.6), (0.1, 0.6), (0.5, 0.4), (1.0, 0.2), (2.0, 0.0)]
    doc = res.to_dict()
    assert doc["abstention_rate"] == pytest.approx(0.2)
    assert doc["prediction"][2] == ABSTAIN
    with pytest.raises(InputError, match="one label per"):
        certified_accuracy(res, y[:3], [0.0])
    with pytest.raises(ConfigurationError, match="radii"):
        certified_accuracy(res, y, [-1.0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sigma": 0.0, "num_classes": 2}, "sigma"),
        ({"sigma": float("nan"), "num_classes": 2}, "sigma"),
        ({"sigma": 0.5}, "num_classes is required"),
        ({"sigma": 0.5, "num_classes": 1}, "num_classes"),
        ({"sigma": 0.5, "num_classes": 2, "batch_size": 0}, "batch_size"),
        ({"sigma": 0.5, "num_classes": 2, "seed": 1.5}, "seed"),
    ],
)
def test_constructor_rejects_bad_parameters(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        SmoothedClassifier(nn.Linear(3, 2), **kwargs)  # type: ignore[arg-type]


def test_calls_reject_bad_input() -> None:
    smoothed = SmoothedClassifier(nn.Linear(3, 2), sigma=0.5, num_classes=2)
    x = torch.rand(2, 3)
    with pytest.raises(ConfigurationError, match="n must"):
        smoothed.predict(x, n=0)
    with pytest.raises(ConfigurationError, match="alpha"):
        smoothed.certify(x, alpha=1.0)
    with pytest.raises(ConfigurationError, match="n0"):
        smoothed.certify(x, n0=0)
    with pytest.raises(InputError, match="floating-point"):
        smoothed.predict(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(InputError, match="batch"):
        smoothed.predict(torch.rand(3))
    with pytest.raises(ConfigurationError, match="base must"):
        SmoothedClassifier("model", sigma=0.5, num_classes=2)  # type: ignore[arg-type]
    with pytest.raises(ModelError, match="failed on a batch"):
        smoothed.predict(torch.rand(2, 5), n=10)
    with pytest.raises(ModelError, match="expected logits"):
        SmoothedClassifier(nn.Linear(3, 4), sigma=0.5, num_classes=2).predict(x, n=10)
    clf = TorchClassifier(nn.Linear(3, 2), input_shape=(3,), num_classes=2)
    with pytest.raises(ConfigurationError, match="disagrees"):
        SmoothedClassifier(clf, sigma=0.5, num_classes=3)
    with pytest.raises(InputError, match="bounds"):
        SmoothedClassifier(clf, sigma=0.5).predict(x + 2.0, n=10)
    assert "sigma=0.5" in repr(smoothed)
    assert smoothed.certify(torch.zeros(0, 3)).prediction.shape == (0,)


def test_gaussian_augmentation_is_deterministic_and_validates() -> None:
    x = torch.rand(64, 4, generator=torch.Generator().manual_seed(1))
    y = (x[:, 1] > 0.5).long()
    nets = []
    for _ in range(2):
        torch.manual_seed(0)
        net = nn.Linear(4, 2)
        report = train_gaussian_augmentation(net, x, y, sigma=0.3, epochs=2, batch_size=16, seed=5)
        nets.append(net)
    assert torch.equal(nets[0].weight, nets[1].weight)
    assert report.steps == 8 and len(report.losses) == 2
    assert report.to_dict()["sigma"] == 0.3
    with pytest.raises(ConfigurationError, match="sigma"):
        train_gaussian_augmentation(nn.Linear(4, 2), x, y, sigma=-1.0)
    with pytest.raises(ConfigurationError, match="epochs"):
        train_gaussian_augmentation(nn.Linear(4, 2), x, y, sigma=0.1, epochs=0)
    with pytest.raises(InputError, match="equal length"):
        train_gaussian_augmentation(nn.Linear(4, 2), x, y[:3], sigma=0.1)


def test_gaussian_augmentation_raises_certified_accuracy_on_digits() -> None:
    # A standard MLP smoothed at σ = 0.5 sees inputs far from its training data; the same MLP
    # trained on noisy copies certifies many more test digits at radius 0.25.
    from bastion.data import load_digits
    from bastion.models.zoo import small_mlp, train_classifier

    data = load_digits()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    x, y = data.x[perm], data.y[perm]
    x_train, y_train, x_test, y_test = x[:1400], y[:1400], x[1400:1600], y[1400:1600]
    sigma = 0.5
    torch.manual_seed(0)
    standard = small_mlp(64, 10)
    train_classifier(standard, x_train, y_train, epochs=15, lr=3e-3, seed=0)
    torch.manual_seed(0)
    augmented = small_mlp(64, 10)
    train_gaussian_augmentation(augmented, x_train, y_train, sigma=sigma, epochs=15, lr=3e-3)
    acc = {}
    for name, net in (("standard", standard), ("augmented", augmented)):
        res = SmoothedClassifier(net, sigma=sigma, num_classes=10).certify(x_test, n0=50, n=1000)
        acc[name] = dict(certified_accuracy(res, y_test, [0.0, 0.25]))
    assert acc["augmented"][0.25] >= acc["standard"][0.25] + 0.1
    assert acc["augmented"][0.25] > 0.4
    assert acc["augmented"][0.0] > acc["augmented"][0.25]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_noise_is_drawn_on_the_model_device(
    hyperplane: tuple[torch.Tensor, float, nn.Module],
) -> None:
    w, b, _ = hyperplane
    net = _linear(w, b).cuda()
    x = _points(w, b, [0.6, -0.3])
    smoothed = SmoothedClassifier(net, sigma=SIGMA, num_classes=2, batch_size=50_000)
    assert smoothed.device.type == "cuda"
    res = smoothed.certify(x, n=100_000)
    assert res.prediction.tolist() == [1, 0]
    assert float(res.radius[0]) <= 0.6 and float(res.radius[0]) > 0.55
    assert torch.equal(res.count, smoothed.certify(x, n=100_000).count)
