"""Out-of-distribution detectors: Mahalanobis (Lee et al. 2018) and energy (Liu et al. 2020)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from bastion.defences.data._activations import extract_activations
from bastion.defences.input import EnergyDetector, MahalanobisDetector, auroc
from bastion.errors import ConfigurationError, InputError
from bastion.models import TorchClassifier


def test_auroc_closed_form_and_against_sklearn() -> None:
    assert auroc(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0])) == 1.0
    assert auroc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 0.0
    assert auroc(torch.tensor([1.0, 1.0]), torch.tensor([1.0])) == 0.5
    g = torch.Generator().manual_seed(0)
    neg = torch.randint(0, 20, (300,), generator=g).float()  # many ties
    pos = torch.randint(5, 25, (200,), generator=g).float()
    labels = np.r_[np.zeros(300), np.ones(200)]
    expected = roc_auc_score(labels, np.r_[neg.numpy(), pos.numpy()])
    assert auroc(neg, pos) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(InputError):
        auroc(torch.tensor([]), pos)


def test_mahalanobis_matches_a_direct_computation() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(200, 5, generator=g), torch.randint(0, 3, (200,), generator=g)
    det = MahalanobisDetector(net, ridge=1e-3).fit(x, y)
    f = extract_activations(net, x).double().numpy()  # input of the last linear layer's ReLU
    means = np.stack([f[y.numpy() == c].mean(0) for c in range(3)])
    centred = f - means[y.numpy()]
    cov = centred.T @ centred / len(f)
    cov += 1e-3 * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
    prec = np.linalg.inv(cov)
    x_new = torch.randn(7, 5, generator=g)
    f_new = extract_activations(net, x_new).double().numpy()
    d = np.stack([np.einsum("nd,de,ne->n", f_new - m, prec, f_new - m) for m in means], 1)
    np.testing.assert_allclose(det.score(x_new).numpy(), d.min(1), rtol=1e-4)
    assert det.classes_.tolist() == [0, 1, 2] and det.means_.shape == (3, 6)


def test_mahalanobis_validation() -> None:
    net = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3))
    with pytest.raises(ConfigurationError, match="no layer named 'fc'"):
        MahalanobisDetector(net, layer="fc")
    with pytest.raises(ConfigurationError, match="eps"):
        MahalanobisDetector(net, eps=-0.1)
    with pytest.raises(ConfigurationError, match="torch model"):
        MahalanobisDetector(object())  # type: ignore[arg-type]
    det = MahalanobisDetector(net)
    with pytest.raises(InputError, match="labels"):
        det.fit(torch.randn(10, 5))
    with pytest.raises(InputError, match="two classes"):
        det.fit(torch.randn(10, 5), torch.zeros(10, dtype=torch.long))
    with pytest.raises(ConfigurationError, match="not fitted"):
        det.score(torch.randn(3, 5))


def _ood_sets(mnist: Any) -> dict[str, torch.Tensor]:
    x, y = mnist.x_test, mnist.y_test
    g = torch.Generator().manual_seed(2)
    return {
        "noise": torch.rand((400, 1, 28, 28), generator=g),
        "inverted": 1 - x[y < 5][:400],
        "held-out digits 5-9": x[y >= 5],
    }


def test_mahalanobis_separates_mnist_from_ood_inputs(mnist_04: Any) -> None:
    det = MahalanobisDetector(mnist_04.clf).fit(mnist_04.x_train, mnist_04.y_train)
    inside = det.score(mnist_04.x_test[mnist_04.y_test < 5])
    bars = {"noise": 0.99, "inverted": 0.99, "held-out digits 5-9": 0.8}
    for name, x_ood in _ood_sets(mnist_04).items():
        assert auroc(inside, det.score(x_ood)) > bars[name], name
    # calibrated on held-out in-distribution digits, the FPR on the test digits is near 5%
    det.calibrate(mnist_04.x_cal, fpr=0.05)
    fpr = float(det.predict(mnist_04.x_test[mnist_04.y_test < 5]).float().mean())
    assert fpr <= 0.05 + 3 * (0.05 * 0.95 / int((mnist_04.y_test < 5).sum())) ** 0.5


def test_mahalanobis_on_a_named_layer_and_with_input_preprocessing(mnist_04: Any) -> None:
    x_in = mnist_04.x_test[mnist_04.y_test < 5][:200]
    det = MahalanobisDetector(mnist_04.clf, layer="6").fit(mnist_04.x_train, mnist_04.y_train)
    assert det.means_.shape == (5, 64)
    assert auroc(det.score(x_in), det.score(_ood_sets(mnist_04)["noise"][:200])) > 0.99
    plain = MahalanobisDetector(mnist_04.clf).fit(mnist_04.x_train, mnist_04.y_train)
    stepped = MahalanobisDetector(mnist_04.clf, eps=0.002).fit(mnist_04.x_train, mnist_04.y_train)
    # the step moves each input towards its closest class: its distance drops
    assert float(stepped.score(x_in).mean()) < float(plain.score(x_in).mean())


def test_energy_score_closed_form() -> None:
    net = nn.Linear(3, 4, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.eye(4, 3))
    clf = TorchClassifier(net, input_shape=(3,), num_classes=4)
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    # logits (0,0,0,0) and (1,0,0,0)
    assert EnergyDetector(clf).score(x).tolist() == pytest.approx([-np.log(4.0), -np.log(np.e + 3)])
    t2 = EnergyDetector(clf, temperature=2.0).score(x)
    assert t2.tolist() == pytest.approx([-2 * np.log(4.0), -2 * np.log(np.exp(0.5) + 3)])
    with pytest.raises(ConfigurationError, match="temperature"):
        EnergyDetector(clf, temperature=0)


def test_energy_separates_held_out_digits(mnist_04: Any) -> None:
    det = EnergyDetector(mnist_04.clf)
    s = det.score(mnist_04.x_test)
    assert auroc(s[mnist_04.y_test < 5], s[mnist_04.y_test >= 5]) > 0.7
