"""Adaptive attacks on input defences: BPDA, EOT, and detector-aware objectives.

Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of Security: Circumventing
Defenses to Adversarial Examples", ICML 2018. https://arxiv.org/abs/1802.00420

A defence that rounds, quantises or randomises its input can make a gradient attack fail
without making the model any more robust ("obfuscated gradients"). Two tools remove the
obfuscation and let bastion's ordinary PGD attack the defended model:

- **BPDA** (Backward Pass Differentiable Approximation): on the forward pass apply the real,
  non-differentiable transform; on the backward pass use a differentiable approximation of it,
  by default the identity (straight-through), since a purifier returns something close to its
  input. :func:`bpda` and the :class:`BPDA` layer.
- **EOT** (Expectation over Transformation, Athalye et al., ICML 2018,
  https://arxiv.org/abs/1707.07397): for a randomised transform, attack the *average* output
  over ``samples`` random draws, whose gradient is the average of the per-draw gradients.
  The :class:`EOT` layer.

Each builder returns a :class:`~bastion.models.TorchClassifier` whose module contains the layer,
so :class:`~bastion.attacks.evasion.PGD` runs on it unchanged. For detectors,
:func:`detector_aware_classifier` adds one "detected" logit that rises above every class once the
detector's score passes its threshold, so that a targeted attack must both reach its target
class and stay under the threshold (the combined-model construction of Carlini & Wagner,
"Adversarial Examples Are Not Easily Detected", AISec 2017, https://arxiv.org/abs/1705.07263).

Example
-------
>>> import torch
>>> x = torch.tensor([0.2, 0.7], requires_grad=True)
>>> out = bpda(torch.round, x)
>>> out.tolist()
[0.0, 1.0]
>>> out.sum().backward()
>>> x.grad.tolist()  # straight through
[1.0, 1.0]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from bastion.errors import CapabilityError, ConfigurationError
from bastion.models.base import Capability, Classifier, unmetered
from bastion.models.torch_model import TorchClassifier

if TYPE_CHECKING:
    from bastion.defences.input.base import InputDetector, Preprocessor

__all__ = [
    "BPDA",
    "EOT",
    "adaptive_classifier",
    "bpda",
    "bpda_classifier",
    "detector_aware_classifier",
    "eot_classifier",
]

Transform = Callable[[torch.Tensor], torch.Tensor]


def bpda(transform: Transform, x: torch.Tensor, approx: Transform | None = None) -> torch.Tensor:
    """``transform(x)`` on the forward pass, the gradient of ``approx`` (default: identity)
    on the backward pass."""
    with torch.no_grad():
        fx = transform(x)
    g = x if approx is None else approx(x)
    return g + (fx - g).detach()


class BPDA(nn.Module):
    """A layer applying a (non-differentiable) ``transform`` with a straight-through gradient.

    ``approx``, when given, is a differentiable function whose gradient is used instead of the
    identity's.
    """

    def __init__(self, transform: Transform, approx: Transform | None = None) -> None:
        super().__init__()
        if not callable(transform):
            raise ConfigurationError("BPDA needs a callable transform")
        self.transform = transform
        self.approx = approx

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bpda(self.transform, x, self.approx)


class _ClassifierLogits(nn.Module):
    """A bastion classifier as an ``nn.Module`` (unmetered logits); its torch module, when it
    has one, is registered as a child so that device and train/eval mode follow it."""

    def __init__(self, classifier: Classifier) -> None:
        super().__init__()
        self.classifier = classifier
        inner = getattr(classifier, "module", None)
        self.inner = inner if isinstance(inner, nn.Module) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with unmetered(self.classifier):
            return self.classifier.logits(x)


class _Transformed(nn.Module):
    """``head(transform(x))``, through BPDA when the transform is not differentiable."""

    def __init__(self, transform: Preprocessor, head: nn.Module, *, straight_through: bool):
        super().__init__()
        self.transform = transform
        self.head = head
        self.straight_through = straight_through

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.straight_through:
            xt = bpda(self.transform.transform, x)
        else:
            xt = self.transform.transform(x)
        out: torch.Tensor = self.head(xt)
        return out


class EOT(nn.Module):
    """Expectation over a randomised ``transform``: the mean of ``head(transform(x))`` over
    ``samples`` independent draws (batched: the batch is repeated ``samples`` times).

    ``reduce="log_probs"`` (default) averages log-softmax outputs, so that the cross-entropy of
    the result has the averaged per-draw gradient of the true class's log-probability;
    ``reduce="logits"`` averages raw outputs (exactly the expectation for a linear head).
    A non-differentiable transform is crossed with BPDA. Draws come from a generator seeded
    with ``seed``, so an attack through this layer is deterministic.
    """

    def __init__(
        self,
        transform: Preprocessor,
        head: nn.Module,
        *,
        samples: int = 8,
        reduce: str = "log_probs",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
            raise ConfigurationError(f"samples must be a positive integer, got {samples!r}")
        if reduce not in ("log_probs", "logits"):
            raise ConfigurationError(f"reduce must be 'log_probs' or 'logits', got {reduce!r}")
        self.transform = transform
        self.head = head
        self.samples = samples
        self.reduce = reduce
        self.seed = int(seed)
        self._generator: torch.Generator | None = None

    def _gen(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self.seed)
        return self._generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        xr = x.repeat_interleave(self.samples, dim=0)
        gen = self._gen(x.device)

        def draw(v: torch.Tensor) -> torch.Tensor:
            return self.transform.transform(v, generator=gen)

        xt = draw(xr) if self.transform.differentiable else bpda(draw, xr)
        out: torch.Tensor = self.head(xt)
        if self.reduce == "log_probs":
            out = torch.log_softmax(out, dim=1)
        return out.reshape(n, self.samples, *out.shape[1:]).mean(dim=1)


def _check_white_box(classifier: Classifier) -> None:
    if not isinstance(classifier, Classifier):
        raise ConfigurationError(
            f"classifier must be a bastion Classifier, got {type(classifier).__name__}"
        )
    if Capability.GRADIENTS not in classifier.capabilities:
        raise CapabilityError(
            f"adaptive evaluation needs gradients, which {type(classifier).__name__} does not "
            "offer; evaluate the defence on a white-box (torch) copy of the model"
        )


def _wrap(classifier: Classifier, module: nn.Module, num_classes: int) -> TorchClassifier:
    return TorchClassifier(
        module,
        input_shape=classifier.input_shape,
        num_classes=num_classes,
        bounds=classifier.bounds,
    )


def bpda_classifier(classifier: Classifier, transform: Preprocessor) -> TorchClassifier:
    """``classifier`` behind ``transform`` with a straight-through (BPDA) gradient."""
    _check_white_box(classifier)
    head = _ClassifierLogits(classifier)
    return _wrap(
        classifier,
        _Transformed(transform, head, straight_through=True),
        classifier.num_classes,
    )


def eot_classifier(
    classifier: Classifier,
    transform: Preprocessor,
    *,
    samples: int = 8,
    reduce: str = "log_probs",
    seed: int = 0,
) -> TorchClassifier:
    """``classifier`` behind a randomised ``transform``, averaged over ``samples`` draws."""
    _check_white_box(classifier)
    head = _ClassifierLogits(classifier)
    layer = EOT(transform, head, samples=samples, reduce=reduce, seed=seed)
    return _wrap(classifier, layer, classifier.num_classes)


def adaptive_classifier(
    classifier: Classifier, transform: Preprocessor, *, samples: int = 8, seed: int = 0
) -> tuple[TorchClassifier, str]:
    """The attackable surrogate of ``classifier`` behind ``transform`` and its name:
    EOT for a randomised transform (with BPDA inside when it is not differentiable), BPDA for
    a deterministic non-differentiable one, the plain composition otherwise."""
    if transform.randomised:
        name = "pgd+eot" if transform.differentiable else "pgd+bpda+eot"
        return eot_classifier(classifier, transform, samples=samples, seed=seed), name
    _check_white_box(classifier)
    head = _ClassifierLogits(classifier)
    st = not transform.differentiable
    module = _Transformed(transform, head, straight_through=st)
    return _wrap(classifier, module, classifier.num_classes), "pgd+bpda" if st else "pgd"


class _DetectorAware(nn.Module):
    """Class logits plus a "detected" logit ``max_j z_j + weight * (s(x) - t) / scale``."""

    def __init__(self, classifier: Classifier, detector: InputDetector, weight: float) -> None:
        super().__init__()
        self.head = _ClassifierLogits(classifier)
        self.detector = detector
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.head(x)
        s = self.detector.differentiable_score(x).to(z.device)
        d = self.detector
        extra = z.amax(dim=1) + self.weight * (s - d.threshold_) / d.score_scale_
        return torch.cat([z, extra[:, None]], dim=1)


def detector_aware_classifier(
    classifier: Classifier, detector: InputDetector, *, weight: float = 10.0
) -> TorchClassifier:
    """A ``num_classes + 1``-way surrogate whose last class means "flagged by ``detector``".

    The extra logit exceeds every class logit exactly when the detector's score exceeds its
    threshold, so the surrogate predicts a class ``t < num_classes`` only for inputs the
    classifier puts in ``t`` *and* the detector lets through: a targeted attack on it is an
    attack on both. ``weight`` scales the score, in units of the clean scores' spread.
    """
    _check_white_box(classifier)
    if not hasattr(detector, "threshold_"):
        raise ConfigurationError(
            f"{type(detector).__name__} has no threshold: call calibrate(x_clean, fpr=...) first"
        )
    if not (isinstance(weight, int | float) and not isinstance(weight, bool) and weight > 0):
        raise ConfigurationError(f"weight must be a positive number, got {weight!r}")
    module = _DetectorAware(classifier, detector, float(weight))
    return _wrap(classifier, module, classifier.num_classes + 1)
