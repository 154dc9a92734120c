"""Out-of-distribution detectors: Mahalanobis distance on features, and the energy score.

- Lee, Lee, Lee & Shin, "A Simple Unified Framework for Detecting Out-of-Distribution Samples
  and Adversarial Attacks", NeurIPS 2018. https://arxiv.org/abs/1807.03888
  Class-conditional Gaussians with one shared (tied) covariance are fitted to a layer's
  features of clean training data; the score is the smallest Mahalanobis distance to a class
  mean. With ``eps > 0`` the input is first nudged by ``eps`` (sign of the gradient) towards
  its closest class, which moves in-distribution inputs further than outliers (the paper's
  input pre-processing).
- Liu, Wang, Owens & Li, "Energy-based Out-of-distribution Detection", NeurIPS 2020.
  https://arxiv.org/abs/2010.03759 The score is the free energy ``-T * logsumexp(logits / T)``,
  lower on the data the model was trained on.

Both flag inputs whose score exceeds a threshold calibrated on clean held-out inputs.
:func:`auroc` measures how well a score separates two sets.

Example
-------
>>> import torch
>>> auroc(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.25, 0.9]))  # 5 of 6 pairs ordered
0.8333333333333334
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import nn

from bastion.defences.data._activations import as_module, default_layer, extract_activations
from bastion.defences.input.base import InputDetector
from bastion.errors import ConfigurationError, InputError
from bastion.models.base import Capability, Classifier, unmetered

__all__ = ["EnergyDetector", "MahalanobisDetector", "auroc"]


def auroc(negatives: torch.Tensor, positives: torch.Tensor) -> float:
    """Area under the ROC curve of ``positives`` scoring above ``negatives`` (ties count half):
    the Mann-Whitney U statistic over all pairs, computed from ranks."""
    neg = negatives.detach().double().flatten().cpu()
    pos = positives.detach().double().flatten().cpu()
    if neg.numel() == 0 or pos.numel() == 0:
        raise InputError("auroc needs at least one negative and one positive score")
    s = torch.cat([neg, pos])
    _, inverse, counts = torch.unique(s, return_inverse=True, return_counts=True)
    cum = counts.cumsum(0).double()
    mid_rank = cum - (counts.double() - 1) / 2  # 1-based average rank of each distinct value
    ranks = mid_rank[inverse]
    n_pos, n_neg = pos.numel(), neg.numel()
    u = float(ranks[n_neg:].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


class _Stop(Exception):
    """Raised by the capture hook to skip the layers after the chosen one."""


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


class MahalanobisDetector(InputDetector):
    """Minimum Mahalanobis distance to the class means of a layer's features (Lee et al.).

    Parameters
    ----------
    model:
        A :class:`~bastion.models.TorchClassifier` or an ``nn.Module``.
    layer:
        Name of the module whose *output* is the feature; default (``None``): the penultimate
        activations, i.e. the input of the last linear layer before its activation function,
        chosen as the poisoned-sample detectors choose it
        (:func:`bastion.defences.data._activations.default_layer`).
    eps:
        Size of the input pre-processing step (0 = none), in input units.
    ridge:
        Added to the covariance's diagonal, relative to its mean variance.

    :meth:`fit` needs clean training inputs *and* their labels.
    """

    name = "mahalanobis"
    needs_labels: ClassVar[bool] = True

    def __init__(
        self,
        model: Classifier | nn.Module,
        *,
        layer: str | None = None,
        eps: float = 0.0,
        ridge: float = 1e-6,
        batch_size: int = 256,
    ) -> None:
        super().__init__(batch_size=batch_size)
        module, forward = as_module(model)
        names = dict(module.named_modules())
        if layer is not None and layer not in names:
            raise ConfigurationError(
                f"the model has no layer named {layer!r}; its layers are: "
                f"{', '.join(n for n in names if n)}"
            )
        for value, what in ((eps, "eps"), (ridge, "ridge")):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ConfigurationError(f"{what} must be a number >= 0, got {value!r}")
        self.model = model
        self.layer = layer
        self.eps = float(eps)
        self.ridge = float(ridge)
        self._module = module
        self._forward = forward
        self._hook_name = default_layer(module) if layer is None else layer
        self._bounds: tuple[float, float] = getattr(model, "bounds", (0.0, 1.0))

    # -- fitting --------------------------------------------------------------------------
    def _fit(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        if y is None:  # pragma: no cover - fit() enforces needs_labels
            raise InputError("labels are needed")
        feats = extract_activations(self.model, x, layer=self.layer, batch_size=self.batch_size)
        f = feats.double()
        y = y.cpu()
        classes = torch.unique(y)
        if classes.numel() < 2:
            raise InputError("MahalanobisDetector.fit needs clean data from at least two classes")
        means = torch.stack([f[y == c].mean(0) for c in classes])
        centred = f - means[torch.searchsorted(classes, y)]
        d = f.shape[1]
        cov = centred.T @ centred / f.shape[0]
        jitter = max(self.ridge, 1e-10) * float(cov.diagonal().mean().clamp_min(1e-12))
        cov = cov + jitter * torch.eye(d, dtype=f.dtype)
        try:
            chol = torch.linalg.cholesky(cov)
        except RuntimeError as exc:  # torch.linalg.LinAlgError subclasses RuntimeError
            raise InputError(
                "the feature covariance is singular; raise ridge= or give more clean data"
            ) from exc
        eye = torch.eye(d, dtype=f.dtype)
        whiten = torch.linalg.solve_triangular(chol, eye, upper=False)  # L^-1
        self.classes_ = classes
        self.means_ = means.float()
        self.whiten_ = whiten.float()
        self._white_means = (means @ whiten.T).float()

    # -- scoring --------------------------------------------------------------------------
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The chosen layer's features ``(n, d)`` for a batch, with their graph kept."""
        captured: list[torch.Tensor] = []
        take_input = self.layer is None

        def keep(value: Any) -> None:
            captured.append(value.flatten(1))
            raise _Stop

        target = dict(self._module.named_modules())[self._hook_name]
        handle = (
            target.register_forward_pre_hook(lambda _m, inputs: keep(inputs[0]))
            if take_input
            else target.register_forward_hook(lambda _m, _i, out: keep(out))
        )
        try:
            with _eval_mode(self._module):
                self._forward(x)
        except _Stop:
            pass
        finally:
            handle.remove()
        if not captured:
            raise ConfigurationError(
                f"layer {self._hook_name!r} was not called on the forward pass"
            )
        return captured[0]

    def _distance(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        w = self.whiten_.to(device=f.device, dtype=f.dtype)
        m = self._white_means.to(device=f.device, dtype=f.dtype)
        z = f @ w.T
        d2 = (z[:, None, :] - m[None, :, :]).pow(2).sum(-1)
        return d2.amin(dim=1)

    def _score(self, x: torch.Tensor, *, differentiable: bool = False) -> torch.Tensor:
        device = next(self._module.parameters()).device
        x = x.to(device)
        if self.eps > 0:
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                (grad,) = torch.autograd.grad(self._distance(xg).sum(), xg)
            lo, hi = self._bounds
            x = (x - self.eps * grad.sign()).clamp(lo, hi)
        return self._distance(x)


class EnergyDetector(InputDetector):
    """Free-energy score ``-T * logsumexp(logits / T)`` (Liu et al.); nothing to fit.

    ``temperature`` ``T`` > 0 (default 1). Needs a classifier that returns scores.

    The score only sees the logits' magnitude: inputs far from the data that drive the logits
    up (uniform noise or inverted digits on a small MNIST CNN) get a *lower* energy than the
    training distribution and are missed. It is suited to near-distribution outliers (unseen
    classes); use :class:`MahalanobisDetector` for far ones.
    """

    name = "energy"
    needs_fit: ClassVar[bool] = False

    def __init__(
        self, classifier: Classifier, *, temperature: float = 1.0, batch_size: int = 256
    ) -> None:
        super().__init__(batch_size=batch_size)
        if not isinstance(classifier, Classifier):
            raise ConfigurationError(
                f"classifier must be a bastion Classifier, got {type(classifier).__name__}"
            )
        if Capability.SCORES not in classifier.capabilities:
            raise ConfigurationError("the energy score needs a classifier that returns scores")
        t = temperature
        if isinstance(t, bool) or not isinstance(t, int | float) or not t > 0:
            raise ConfigurationError(f"temperature must be a positive number, got {t!r}")
        self.classifier = classifier
        self.temperature = float(temperature)

    def _score(self, x: torch.Tensor, *, differentiable: bool = False) -> torch.Tensor:
        clf = self.classifier
        with clf.evaluation(), unmetered(clf):
            z = clf.logits(x.to(clf.device))
        t = self.temperature
        return -t * torch.logsumexp(z / t, dim=1)
