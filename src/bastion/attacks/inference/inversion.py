"""MI-Face model inversion (Fredrikson et al. 2015): class representatives from a classifier.

Paper: M. Fredrikson, S. Jha, T. Ristenpart, "Model Inversion Attacks that Exploit Confidence
Information and Basic Countermeasures", CCS 2015. https://doi.org/10.1145/2810103.2813677

For each target class ``c`` the attack searches the input space for ``x`` minimising

    cost(x) = loss(f(x), c) + tv · TV(x) + l2 · ||x||² / d

with ``loss`` the cross-entropy ``-log p_c`` (``loss="ce"``, default) or Fredrikson's
``1 - p_c`` (``loss="prob"``), by normalised gradient descent inside the model's bounds,
keeping the lowest-cost iterate. The gradient of the loss term comes from the model
(``method="white-box"``, via :func:`~bastion.attacks.evasion._common.input_gradient`) or is
estimated from scores alone (``method="score"``): an antithetic Gaussian (NES-style) estimate
from ``2 · samples`` queries per step with smoothing ``sigma``. ``"auto"`` picks white-box when
the model offers gradients. The regularisers are the attacker's own and cost no query.

Inputs are ``(k, *input_shape)`` reconstructions, one per requested class; queries:
``k · steps`` (white-box) or ``k · steps · 2 · samples`` (score-based). Judge them with
:func:`reconstruction_metrics` (MSE and SSIM to the class's training mean; recognition by an
independently trained classifier).

Example
-------
>>> import torch
>>> from torch import nn
>>> from bastion.models import TorchClassifier
>>> from bastion.attacks.inference import MIFace
>>> torch.manual_seed(0) and None
>>> clf = TorchClassifier(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), input_shape=(1, 4, 4),
...                       num_classes=3)
>>> res = MIFace(steps=30, lr=0.2).infer(clf, [0, 2])
>>> res.x.shape, bool((res.x >= 0).all() and (res.x <= 1).all()), res.queries
(torch.Size([2, 1, 4, 4]), True, 60)
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from bastion.attacks.evasion._common import input_gradient
from bastion.attacks.inference.base import check_positive
from bastion.attacks.inference.metrics import ssim
from bastion.audit.findings import Finding, Severity
from bastion.errors import CapabilityError, ConfigurationError, InputError, QueryBudgetExceeded
from bastion.models.base import Capability, Classifier, check_labels, unmetered
from bastion.threat import ATLAS, OWASP

__all__ = ["InversionResult", "MIFace", "ReconstructionMetrics", "reconstruction_metrics"]


@dataclass(frozen=True)
class InversionResult:
    """Reconstructions ``x`` (one per class in ``classes``) and the model's confidence in them."""

    attack: str
    params: dict[str, Any]
    method: str
    classes: torch.Tensor
    x: torch.Tensor
    confidence: torch.Tensor
    queries: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "attack": self.attack,
            "method": self.method,
            "classes": self.classes.tolist(),
            "mean_confidence": float(self.confidence.mean()),
            "queries": self.queries,
            "seconds": self.seconds,
        }

    def to_dict(self, *, include_inputs: bool = True) -> dict[str, Any]:
        out = {
            **self.summary(),
            "params": self.params,
            "confidence": self.confidence.tolist(),
            "x_shape": list(self.x.shape),
            "extra": self.extra,
        }
        if include_inputs:
            out["x"] = self.x.flatten().tolist()
        return out


@dataclass(frozen=True)
class ReconstructionMetrics:
    """How close reconstructions are to their classes' training means, and whether an
    independent classifier recognises them (``recognised`` is ``None`` without one)."""

    classes: torch.Tensor
    mse: torch.Tensor
    ssim: torch.Tensor
    mse_other: torch.Tensor
    recognised: torch.Tensor | None = None

    @property
    def recognition_rate(self) -> float | None:
        return None if self.recognised is None else float(self.recognised.float().mean())

    @property
    def closer_to_own_mean(self) -> float:
        """Fraction of reconstructions nearer (MSE) their own class mean than any other's."""
        return float((self.mse < self.mse_other).float().mean())

    def to_dict(self) -> dict[str, Any]:
        return {
            "classes": self.classes.tolist(),
            "mse": self.mse.tolist(),
            "ssim": self.ssim.tolist(),
            "mse_other": self.mse_other.tolist(),
            "mean_mse": float(self.mse.mean()),
            "mean_ssim": float(self.ssim.mean()),
            "closer_to_own_mean": self.closer_to_own_mean,
            "recognised": None if self.recognised is None else self.recognised.tolist(),
            "recognition_rate": self.recognition_rate,
        }

    def finding(self, result: InversionResult) -> Finding:
        rate = self.recognition_rate
        leak = self.closer_to_own_mean if rate is None else rate
        sev = Severity.HIGH if leak >= 0.8 else Severity.MEDIUM if leak >= 0.5 else Severity.LOW
        if leak <= 0.2:
            sev = Severity.INFO
        return Finding(
            id=f"inversion.{result.attack}",
            title=f"Model inversion ({result.method}): {leak:.0%} of class representatives "
            "resemble their class",
            severity=sev,
            threat="model inversion",
            atlas=(ATLAS["model_inversion"],),
            owasp=(OWASP["model_inversion"],),
            evidence={**result.summary(), **self.to_dict()},
            remediation="Return labels or rounded, top-k scores instead of full confidence "
            "vectors; limit queries per client; train with DP-SGD.",
        )


def reconstruction_metrics(
    result: InversionResult,
    x_ref: torch.Tensor,
    y_ref: torch.Tensor,
    *,
    recognizer: Classifier | None = None,
    data_range: float | None = None,
) -> ReconstructionMetrics:
    """Compare reconstructions with the class means of reference data ``(x_ref, y_ref)``.

    ``mse_other`` is the smallest MSE to the mean of any *other* class present in ``y_ref``.
    ``recognizer`` (an independently trained classifier; queried unmetered) tells whether each
    reconstruction is classified as its class.
    """
    x = result.x.double()
    if tuple(x_ref.shape[1:]) != tuple(x.shape[1:]):
        raise InputError(
            f"reference data has shape {tuple(x_ref.shape[1:])} per sample, reconstructions "
            f"{tuple(x.shape[1:])}"
        )
    present = torch.unique(y_ref)
    means = {int(c): x_ref[y_ref == c].double().mean(0) for c in present}
    missing = [int(c) for c in result.classes if int(c) not in means]
    if missing:
        raise InputError(f"reference data has no samples of classes {missing}")
    own = torch.stack([means[int(c)] for c in result.classes])
    mse = ((x - own) ** 2).flatten(1).mean(1)
    others = []
    for i, c in enumerate(result.classes.tolist()):
        d = [float(((x[i] - m) ** 2).mean()) for k, m in means.items() if k != c]
        others.append(min(d) if d else math.inf)
    rng = data_range if data_range is not None else float(x_ref.max() - x_ref.min()) or 1.0
    recognised = None
    if recognizer is not None:
        with torch.no_grad(), unmetered(recognizer):
            pred = recognizer.predict(result.x.float().to(recognizer.device)).cpu()
        recognised = pred == result.classes
    return ReconstructionMetrics(
        classes=result.classes,
        mse=mse.float(),
        ssim=ssim(result.x, own.float(), data_range=rng),
        mse_other=torch.tensor(others, dtype=torch.float32),
        recognised=recognised,
    )


class MIFace:
    """Fredrikson et al.'s MI-Face inversion, white-box or score-based (see module docstring).

    Parameters
    ----------
    steps, lr:
        Descent steps and step length (L2 length of each normalised step, as a fraction of
        ``sqrt(d) · (high - low)``).
    method:
        ``"auto"``, ``"white-box"`` or ``"score"``.
    loss:
        ``"ce"`` (``-log p_c``) or ``"prob"`` (``1 - p_c``, Fredrikson's).
    tv, l2:
        Weights of total-variation (images) and squared-norm priors.
    samples, sigma:
        Score-based estimator: antithetic direction pairs per step and smoothing radius (as a
        fraction of the input range).
    init:
        Start point: ``"mid"`` (middle of the bounds, default), ``"low"`` or ``"random"``.
    seed:
        Seed of the random start and the score-based estimator.
    """

    name: ClassVar[str] = "miface"

    def __init__(
        self,
        *,
        steps: int = 200,
        lr: float = 0.05,
        method: str = "auto",
        loss: str = "ce",
        tv: float = 0.0,
        l2: float = 0.0,
        samples: int = 20,
        sigma: float = 0.01,
        init: str = "mid",
        seed: int | None = 0,
    ) -> None:
        check_positive(steps, "steps", integer=True)
        check_positive(lr, "lr")
        check_positive(samples, "samples", integer=True)
        check_positive(sigma, "sigma")
        if method not in ("auto", "white-box", "score"):
            raise ConfigurationError(f"method must be auto, white-box or score, got {method!r}")
        if loss not in ("ce", "prob"):
            raise ConfigurationError(f"loss must be 'ce' or 'prob', got {loss!r}")
        if init not in ("mid", "low", "random"):
            raise ConfigurationError(f"init must be mid, low or random, got {init!r}")
        for name, v in (("tv", tv), ("l2", l2)):
            if isinstance(v, bool) or not isinstance(v, int | float) or not v >= 0:
                raise ConfigurationError(f"{name} must be a number >= 0, got {v!r}")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ConfigurationError(f"seed must be an int or None, got {seed!r}")
        self.steps, self.lr, self.method, self.loss = int(steps), float(lr), method, loss
        self.tv, self.l2, self.samples, self.sigma = (
            float(tv),
            float(l2),
            int(samples),
            float(sigma),
        )
        self.init, self.seed = init, seed

    def get_params(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in sorted(self.get_params().items()))
        return f"{type(self).__name__}({params})"

    def resolve_method(self, classifier: Classifier) -> str:
        if self.method == "auto":
            return "white-box" if Capability.GRADIENTS in classifier.capabilities else "score"
        return self.method

    def planned_queries(self, classifier: Classifier, n_classes: int) -> int:
        per_step = 1 if self.resolve_method(classifier) == "white-box" else 2 * self.samples
        return n_classes * self.steps * per_step

    def infer(
        self, classifier: Classifier, classes: Sequence[int] | torch.Tensor
    ) -> InversionResult:
        """Reconstruct one representative input for each class in ``classes``."""
        method = self.resolve_method(classifier)
        need = Capability.GRADIENTS if method == "white-box" else Capability.SCORES
        if need not in classifier.capabilities:
            raise CapabilityError(
                f"MIFace(method={method!r}) needs {str(need.name).lower()}, which "
                f"{type(classifier).__name__} does not offer; use method='score' or a "
                "model that returns scores"
            )
        c = torch.as_tensor(list(classes) if not isinstance(classes, torch.Tensor) else classes)
        if c.dim() != 1 or c.numel() == 0:
            raise InputError("classes must be a non-empty list of class indices")
        check_labels(c, classifier.num_classes, c.numel(), name="classes")
        c = c.long()
        planned = self.planned_queries(classifier, c.numel())
        budget = getattr(classifier, "query_budget", None)
        if budget is not None and classifier.queries + planned > budget:
            raise QueryBudgetExceeded(
                f"MIFace needs {planned} queries for {c.numel()} classes but only "
                f"{budget - classifier.queries} of the budget of {budget} remain; lower steps "
                "or samples, or raise query_budget"
            )
        gen = torch.Generator()
        if self.seed is None:
            gen.seed()
        else:
            gen.manual_seed(self.seed)
        start, before = time.perf_counter(), classifier.queries
        with classifier.evaluation():
            x = self._run(classifier, c, method, gen)
            with torch.no_grad(), unmetered(classifier):
                conf = torch.softmax(classifier.logits(x.to(classifier.device)).double(), 1)
            conf = conf.cpu().gather(1, c[:, None]).squeeze(1).float()
        return InversionResult(
            attack=self.name,
            params=self.get_params(),
            method=method,
            classes=c,
            x=x.cpu(),
            confidence=conf,
            queries=classifier.queries - before,
            seconds=time.perf_counter() - start,
        )

    # -- the algorithm -----------------------------------------------------------------------
    def _task_loss(self, logits: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        lp = torch.log_softmax(logits.double(), 1).gather(1, c[:, None]).squeeze(1)
        return -lp if self.loss == "ce" else 1.0 - lp.exp()

    def _prior(self, x: torch.Tensor) -> torch.Tensor:
        out = self.l2 * (x.double() ** 2).flatten(1).mean(1)
        if self.tv and x.dim() == 4:
            dh = (x[:, :, 1:] - x[:, :, :-1]).abs().flatten(1).sum(1)
            dw = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().flatten(1).sum(1)
            out = out + self.tv * (dh + dw).double() / x[0].numel()
        return out

    def _run(
        self, classifier: Classifier, c: torch.Tensor, method: str, gen: torch.Generator
    ) -> torch.Tensor:
        lo, hi = classifier.bounds
        shape = (c.numel(), *classifier.input_shape)
        dev = classifier.device
        if self.init == "mid":
            x = torch.full(shape, (lo + hi) / 2)
        elif self.init == "low":
            x = torch.full(shape, lo)
        else:
            x = lo + (hi - lo) * torch.rand(shape, generator=gen)
        x, c = x.to(dev), c.to(dev)
        step = self.lr * math.sqrt(x[0].numel()) * (hi - lo)
        best, best_cost = (
            x.clone(),
            torch.full((c.numel(),), math.inf, dtype=torch.float64, device=dev),
        )
        for _ in range(self.steps):
            if method == "white-box":
                task, grad, _ = input_gradient(classifier, x, lambda z: self._task_loss(z, c))
            else:
                task, grad = self._estimate(classifier, x, c, gen)
            with torch.enable_grad():
                xr = x.detach().requires_grad_(True)
                prior = self._prior(xr) + 0.0 * xr.sum()
                (g_prior,) = torch.autograd.grad(prior.sum(), xr)
            cost = task.double() + prior.detach()
            improved = cost < best_cost
            best[improved], best_cost[improved] = x[improved], cost[improved]
            g = grad.double() + g_prior.double()
            norm = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
            x = (x - step * (g / norm)).clamp(lo, hi).to(x.dtype)
        return best

    @torch.no_grad()
    def _estimate(
        self, classifier: Classifier, x: torch.Tensor, c: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Antithetic Gaussian estimate of the task loss's gradient, from scores only."""
        lo, hi = classifier.bounds
        k, q = x.shape[0], self.samples
        u = torch.randn((q, *x.shape), generator=gen).to(x.device)
        s = self.sigma * (hi - lo)
        probes = torch.cat([x[None] + s * u, x[None] - s * u]).flatten(0, 1)
        logits = classifier.logits(probes.clamp(lo, hi))
        losses = self._task_loss(logits, c.repeat(2 * q)).view(2, q, k)
        diff = (losses[0] - losses[1]) / (2 * s)
        grad = (diff.view(q, k, *[1] * (x.dim() - 1)) * u).mean(0)
        return losses.mean((0, 1)), grad.float()
