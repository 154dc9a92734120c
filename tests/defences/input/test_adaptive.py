"""BPDA, EOT, the detector-aware surrogate, and the verdict of evaluate_input_defence."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from torch import nn

from bastion.data import load_digits
from bastion.defences.input import (
    BPDA,
    EOT,
    BitDepth,
    GaussianNoise,
    InputDetector,
    JPEGCompression,
    PreprocessedClassifier,
    Preprocessor,
    bpda,
    bpda_classifier,
    detector_aware_classifier,
    eot_classifier,
    evaluate_input_defence,
)
from bastion.errors import CapabilityError, ConfigurationError, InputError
from bastion.models import TorchClassifier
from bastion.models.base import BaseClassifier, Capability
from bastion.models.zoo import small_mlp, train_classifier


class RandomScale(Preprocessor):
    """x * s with s ~ U(0, 1) drawn per value: E[t(x)] = x / 2."""

    name = "random_scale"
    randomised = True

    def _transform(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return x * torch.rand(x.shape, generator=generator, dtype=x.dtype)


class MeanScore(InputDetector):
    name = "mean"
    needs_fit = False

    def _score(self, x: torch.Tensor, *, differentiable: bool = False) -> torch.Tensor:
        return x.flatten(1).mean(1)


def test_bpda_forward_is_exact_and_backward_is_the_approximation() -> None:
    x = torch.tensor([0.2, 0.7, 0.4], requires_grad=True)
    out = BPDA(torch.round)(x)
    assert out.tolist() == [0.0, 1.0, 0.0]
    (g,) = torch.autograd.grad(out.sum(), x)
    assert g.tolist() == [1.0, 1.0, 1.0]
    out2 = bpda(torch.round, x, approx=lambda v: 3 * v)
    assert out2.tolist() == [0.0, 1.0, 0.0]
    (g2,) = torch.autograd.grad(out2.sum(), x)
    assert g2.tolist() == [3.0, 3.0, 3.0]
    with pytest.raises(ConfigurationError, match="callable"):
        BPDA(3)  # type: ignore[arg-type]


def test_bpda_classifier_gives_gradients_where_the_defence_gives_none() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(4, 3)
    clf = TorchClassifier(lin, input_shape=(4,), num_classes=3)
    x = torch.rand(5, 4, requires_grad=True)
    defended = PreprocessedClassifier(clf, BitDepth(bits=2))
    (naive,) = torch.autograd.grad(defended.logits(x)[:, 0].sum(), x)
    assert float(naive.abs().sum()) == 0.0
    surrogate = bpda_classifier(clf, BitDepth(bits=2))
    logits = surrogate.logits(x)
    assert torch.allclose(logits, defended.logits(x))  # same forward pass
    (g,) = torch.autograd.grad(logits[:, 0].sum(), x)
    assert torch.allclose(g, lin.weight[0].expand(5, 4))  # identity backward


def test_eot_gradient_converges_to_the_expected_gradient() -> None:
    """Linear head, t(x) = s * x with s ~ U(0, 1): the expected gradient is W^T c / 2."""
    torch.manual_seed(0)
    head = nn.Linear(6, 2)
    c = torch.tensor([1.0, -2.0])
    expected = (head.weight.T @ c).detach() / 2
    x = torch.rand(1, 6) + 0.5

    def grad(samples: int) -> torch.Tensor:
        # d/dx of c . W (s * x) is (W^T c) * s: the EOT gradient is (W^T c) * mean(s)
        layer = EOT(RandomScale(), head, samples=samples, reduce="logits", seed=3)
        xg = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad((layer(xg) * c).sum(), xg)
        return g[0]

    many = grad(4000)
    assert torch.allclose(many, expected, rtol=0.05, atol=1e-3)
    one = grad(1)
    assert float((one - expected).abs().max()) > 0.1 * float(expected.abs().max())


def test_eot_averages_the_per_draw_gradients() -> None:
    torch.manual_seed(0)
    head = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    transform = GaussianNoise(sigma=0.2, bounds=(-10.0, 10.0))
    x = torch.rand(2, 4)
    y = torch.tensor([0, 2])
    layer = EOT(transform, head, samples=5, seed=7)
    xg = x.clone().requires_grad_(True)
    loss = nn.functional.nll_loss(layer(xg), y, reduction="sum")
    (g_eot,) = torch.autograd.grad(loss, xg)
    # the same five draws, one at a time
    gen = torch.Generator().manual_seed(7)
    xr = x.repeat_interleave(5, 0).requires_grad_(True)
    draws = transform.transform(xr, generator=gen)
    per = -torch.log_softmax(head(draws), 1).gather(1, y.repeat_interleave(5)[:, None]).sum()
    (g_rep,) = torch.autograd.grad(per, xr)
    assert torch.allclose(g_eot, g_rep.reshape(2, 5, 4).mean(1), atol=1e-6)


def test_eot_validation() -> None:
    with pytest.raises(ConfigurationError, match="samples"):
        EOT(RandomScale(), nn.Identity(), samples=0)
    with pytest.raises(ConfigurationError, match="reduce"):
        EOT(RandomScale(), nn.Identity(), reduce="mean")


def test_eot_beats_single_draw_gradients_on_a_noise_defence(digits_cnn: Any) -> None:
    clf, x, y = digits_cnn.clf, digits_cnn.x_test, digits_cnn.y_test
    report = evaluate_input_defence(clf, GaussianNoise(sigma=0.1), x, y, eps=0.1, eot_samples=8)
    assert report.adaptive_attack == "pgd+eot"
    assert report.naive_robust_accuracy is not None
    # measured: single-draw PGD leaves 0.71, EOT 0.42 (undefended 0.40)
    assert report.adaptive <= report.naive_robust_accuracy - 0.15
    assert report.verdict == "weak"
    surrogate = eot_classifier(clf, GaussianNoise(sigma=0.1), samples=4)
    assert surrogate.logits(x[:3]).shape == (3, 10)


def test_a_defence_that_truly_removes_the_perturbation_is_not_reported_weak() -> None:
    """Binary images, eps < 0.5: one-bit squeezing maps every perturbed input back onto the
    clean one, so the defended model's robust accuracy equals its clean accuracy."""
    data = load_digits()
    x = (data.x > 0.5).float().flatten(1)[:1000]
    y = data.y[:1000]
    torch.manual_seed(0)
    net = train_classifier(small_mlp(64, 10), x[:800], y[:800], epochs=15, lr=5e-3, seed=0)
    clf = TorchClassifier(net, input_shape=(64,), num_classes=10)
    report = evaluate_input_defence(clf, BitDepth(bits=1), x[800:], y[800:], eps=0.3, steps=20)
    assert report.undefended_robust_accuracy < 0.2
    assert report.adaptive == pytest.approx(report.clean_accuracy)
    assert report.clean_accuracy > 0.8
    assert report.verdict == "holds" and not report.gradient_masking
    json.dumps(report.to_dict())


def test_detector_aware_surrogate_flags_exactly_above_the_threshold() -> None:
    clf = TorchClassifier(nn.Flatten(), input_shape=(3,), num_classes=3)
    det = MeanScore()
    det.threshold_, det.score_scale_ = 0.5, 1.0
    surrogate = detector_aware_classifier(clf, det, weight=2.0)
    x = torch.tensor([[0.2, 0.9, 0.1], [0.9, 0.8, 0.7]])  # means 0.4 and 0.8
    z = surrogate.logits(x)
    assert z.shape == (2, 4)
    assert z[:, 3].tolist() == pytest.approx([0.9 + 2 * (0.4 - 0.5), 0.9 + 2 * (0.8 - 0.5)])
    assert surrogate.predict(x).tolist() == [1, 3]  # the second is "detected"
    with pytest.raises(ConfigurationError, match="weight"):
        detector_aware_classifier(clf, det, weight=0)
    with pytest.raises(ConfigurationError, match="calibrate"):
        detector_aware_classifier(clf, MeanScore())


class _LabelOnly(BaseClassifier):
    def __init__(self) -> None:
        super().__init__(input_shape=(4,), num_classes=3, capabilities=Capability.LABELS)

    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], dtype=torch.long)


def test_evaluate_validation() -> None:
    torch.manual_seed(0)
    clf = TorchClassifier(nn.Linear(4, 3), input_shape=(4,), num_classes=3)
    x, y = torch.rand(8, 4), torch.zeros(8, dtype=torch.long)
    with pytest.raises(ConfigurationError, match="Preprocessor or an InputDetector"):
        evaluate_input_defence(clf, torch.round, x, y, eps=0.1)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="margin"):
        evaluate_input_defence(clf, BitDepth(), x, y, eps=0.1, margin=2.0)
    with pytest.raises(ConfigurationError, match="targets"):
        evaluate_input_defence(clf, BitDepth(), x, y, eps=0.1, targets=0)
    with pytest.raises(ConfigurationError, match="calibrate"):
        evaluate_input_defence(clf, MeanScore(), x, y, eps=0.1)
    with pytest.raises(ConfigurationError, match="eps"):
        evaluate_input_defence(clf, BitDepth(), x, y, eps=-1.0)
    with pytest.raises(InputError, match="shape"):
        evaluate_input_defence(clf, BitDepth(), torch.rand(8, 5), y, eps=0.1)
    with pytest.raises(InputError, match="labels"):
        evaluate_input_defence(clf, BitDepth(), x, y[:3], eps=0.1)
    with pytest.raises(InputError, match="bounds"):
        evaluate_input_defence(clf, BitDepth(), x + 2, y, eps=0.1)
    with pytest.raises(CapabilityError, match="gradients"):
        evaluate_input_defence(_LabelOnly(), JPEGCompression(), x, y, eps=0.1)


def test_evaluate_runs_in_l2_and_is_deterministic() -> None:
    torch.manual_seed(0)
    clf = TorchClassifier(nn.Linear(4, 3), input_shape=(4,), num_classes=3)
    x = torch.rand(24, 4, generator=torch.Generator().manual_seed(1))
    y = clf.predict(x)
    runs = [
        evaluate_input_defence(clf, GaussianNoise(sigma=0.05), x, y, eps=0.3, norm="l2", steps=5)
        for _ in range(2)
    ]
    a, b = (dict(r.to_dict(), seconds=0) for r in runs)
    assert a == b and a["norm"] == "l2" and a["adaptive_attack"] == "pgd+eot"
    assert runs[0].adaptive <= runs[0].clean_accuracy
