"""Randomized smoothing: prediction with abstention and certified L2 robustness.

Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via Randomized Smoothing",
ICML 2019. https://arxiv.org/abs/1902.02918

The smoothed classifier ``g(x) = argmax_c P(f(x + δ) = c)``, ``δ ~ N(0, σ² I)``, is robust in
L2: if the top class has probability ``pA ≥ pA_lower > 1/2``, then ``g`` keeps its prediction
within the radius ``σ Φ⁻¹(pA_lower)`` around ``x``. Both procedures of the paper are here:

- :meth:`SmoothedClassifier.predict` (PREDICT): count the base classifier's votes over ``n``
  noisy copies and return the top class only when a two-sided binomial test says it beats the
  runner-up at level ``alpha``; otherwise abstain (label ``-1``). It returns a wrong (non
  abstaining) answer with probability at most ``alpha``.
- :meth:`SmoothedClassifier.certify` (CERTIFY): pick the top class with ``n0`` noisy copies,
  estimate its probability with ``n`` fresh ones, take the one-sided Clopper-Pearson lower bound
  ``pA_lower`` at level ``alpha`` and certify the radius ``σ Φ⁻¹(pA_lower)``; abstain when
  ``pA_lower <= 1/2``. The certificate is wrong with probability at most ``alpha``.

Norm: L2. Defaults: ``n=100`` for prediction; ``n0=100``, ``n=10_000`` for certification;
``alpha=0.001``. Noise is not clipped to the input bounds (the paper's setting).
Shapes: ``x`` is ``(n, *input_shape)``; predictions are ``(n,)`` int64 with ``-1`` for an
abstention. Noise is drawn in batches of ``batch_size`` noisy inputs on the base model's device,
under ``torch.inference_mode``, from a generator seeded with ``seed`` at every call, so the same
call gives the same answer.

Example
-------
>>> import torch
>>> from torch import nn
>>> from bastion.defences.certify import SmoothedClassifier, certified_accuracy
>>> net = nn.Linear(2, 2)
>>> with torch.no_grad():
...     _ = net.weight.copy_(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
...     _ = net.bias.zero_()
>>> smoothed = SmoothedClassifier(net, sigma=0.5, num_classes=2, batch_size=2000)
>>> x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0]])
>>> smoothed.predict(x, n=1000).tolist()
[1, 0, -1]
>>> result = smoothed.certify(x, n0=100, n=10_000)
>>> result.prediction.tolist()
[1, 0, -1]
>>> bool((result.radius[:2] > 0.8).all() and (result.radius[:2] < 1.0).all())
True
>>> certified_accuracy(result, torch.tensor([1, 0, 1]), [0.0, 0.5, 1.0])
[(0.0, 0.6666666666666666), (0.5, 0.6666666666666666), (1.0, 0.0)]
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import nn

from bastion.defences.certify._stats import binomial_p_value, clopper_pearson_lower
from bastion.errors import ConfigurationError, InputError, ModelError
from bastion.models.base import Classifier, check_bounds

__all__ = ["ABSTAIN", "CertifyResult", "SmoothedClassifier", "certified_accuracy"]

#: the label :meth:`SmoothedClassifier.predict` and ``certify`` return when they abstain
ABSTAIN = -1


@dataclass(frozen=True)
class CertifyResult:
    """Per-sample output of CERTIFY.

    ``prediction`` is ``(n,)`` int64 with ``-1`` where the smoothed classifier abstains;
    ``radius`` the certified L2 radius (0 where it abstains); ``p_lower`` the Clopper-Pearson
    lower bound on the top class's probability; ``count`` the votes for the selected class out
    of ``n`` noise draws (the selection used ``n0`` others).
    """

    prediction: torch.Tensor
    radius: torch.Tensor
    p_lower: torch.Tensor
    count: torch.Tensor
    sigma: float
    n0: int
    n: int
    alpha: float

    @property
    def abstained(self) -> torch.Tensor:
        """``(n,)`` bool: where the smoothed classifier abstained."""
        return self.prediction == ABSTAIN

    def __len__(self) -> int:
        return int(self.prediction.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the parameters and per-sample lists."""
        return {
            "sigma": self.sigma,
            "n0": self.n0,
            "n": self.n,
            "alpha": self.alpha,
            "prediction": self.prediction.tolist(),
            "radius": self.radius.tolist(),
            "p_lower": self.p_lower.tolist(),
            "count": self.count.tolist(),
            "abstention_rate": float(self.abstained.double().mean()) if len(self) else 0.0,
        }


def certified_accuracy(
    result: CertifyResult, y: torch.Tensor, radii: Sequence[float]
) -> list[tuple[float, float]]:
    """Certified accuracy at each radius: the fraction of samples predicted correctly with a
    certified radius of at least that radius (an abstention counts as wrong).

    Returns ``[(radius, accuracy), ...]`` in the order of ``radii``.
    """
    y = torch.as_tensor(y)
    if y.dim() != 1 or y.shape[0] != len(result):
        raise InputError(
            f"y must hold one label per certified sample ({len(result)}), got {tuple(y.shape)}"
        )
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise InputError(f"y must hold integer labels, got {y.dtype}")
    if len(result) == 0:
        raise InputError("the result is empty: certify at least one sample")
    curve = []
    correct = result.prediction.cpu() == y.cpu().long()
    for r in radii:
        r = float(r)
        if not (math.isfinite(r) and r >= 0):
            raise ConfigurationError(f"radii must be finite and non-negative, got {r!r}")
        ok = correct & (result.radius.cpu() >= r)
        curve.append((r, float(ok.double().mean())))
    return curve


class SmoothedClassifier:
    """A base classifier smoothed with isotropic Gaussian noise (see the module docstring).

    Parameters
    ----------
    base:
        A :class:`~bastion.models.base.Classifier` (only its labels are used, so label-only
        adapters work; each noisy input counts as one query) or an ``nn.Module`` returning
        logits, used in place on its device in eval mode (its modes are restored after).
    sigma:
        Standard deviation of the noise, in input units (> 0).
    num_classes:
        Number of classes; taken from a Classifier when omitted, required for a module.
    batch_size:
        Noisy inputs per forward pass.
    seed:
        Seed of the noise generator; every call restarts from it.
    """

    def __init__(
        self,
        base: Classifier | nn.Module,
        *,
        sigma: float,
        num_classes: int | None = None,
        batch_size: int = 1000,
        seed: int = 0,
    ) -> None:
        if isinstance(base, nn.Module):
            if num_classes is None:
                raise ConfigurationError("num_classes is required when base is an nn.Module")
        elif isinstance(base, Classifier):
            if num_classes is None:
                num_classes = base.num_classes
            elif int(num_classes) != base.num_classes:
                raise ConfigurationError(
                    f"num_classes={num_classes} disagrees with the classifier's {base.num_classes}"
                )
        else:
            raise ConfigurationError(
                f"base must be a bastion Classifier or a torch nn.Module, got {type(base).__name__}"
            )
        if isinstance(sigma, bool) or not isinstance(sigma, int | float):
            raise ConfigurationError(f"sigma must be a positive number, got {sigma!r}")
        if not (math.isfinite(sigma) and sigma > 0):
            raise ConfigurationError(f"sigma must be a positive finite number, got {sigma!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ConfigurationError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigurationError(f"batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigurationError(f"seed must be an integer, got {seed!r}")
        self.base = base
        self.sigma = float(sigma)
        self.num_classes = int(num_classes)
        self.batch_size = batch_size
        self.seed = seed

    def __repr__(self) -> str:
        base = type(self.base).__name__
        return (
            f"SmoothedClassifier({base}, sigma={self.sigma}, num_classes={self.num_classes}, "
            f"batch_size={self.batch_size}, seed={self.seed})"
        )

    @property
    def device(self) -> torch.device:
        """Where the noise is drawn: the base model's device."""
        if isinstance(self.base, nn.Module):
            for p in self.base.parameters():
                return p.device
            for b in self.base.buffers():
                return b.device
            return torch.device("cpu")
        return self.base.device

    # -- the two procedures of the paper --------------------------------------------------
    def predict(self, x: torch.Tensor, *, n: int = 100, alpha: float = 0.001) -> torch.Tensor:
        """PREDICT: the smoothed prediction per input, ``-1`` where the vote is not significant.

        The top two vote counts ``nA >= nB`` of ``n`` noisy copies are compared with a
        two-sided binomial test at p = 1/2; the top class is returned when its p-value is at
        most ``alpha``. Returns ``(len(x),)`` int64 on the CPU.
        """
        _check_count(n, "n")
        _check_alpha(alpha)
        x = self._check_input(x)
        if x.shape[0] == 0:
            return torch.zeros(0, dtype=torch.long)
        counts = self._vote_counts(x, n, self._generator())
        top2 = counts.topk(2, dim=1)
        n_a, n_b = top2.values[:, 0].numpy(), top2.values[:, 1].numpy()
        p_value = torch.from_numpy(binomial_p_value(n_a, n_b))
        pred = top2.indices[:, 0].clone()
        pred[p_value > alpha] = ABSTAIN
        return pred

    def certify(
        self, x: torch.Tensor, *, n0: int = 100, n: int = 10_000, alpha: float = 0.001
    ) -> CertifyResult:
        """CERTIFY: the smoothed prediction and its certified L2 radius per input.

        ``n0`` noisy copies select the top class, ``n`` fresh copies estimate its probability;
        the radius is ``sigma * Φ⁻¹(pA_lower)`` with the one-sided ``(1 - alpha)``
        Clopper-Pearson bound ``pA_lower``, and the input is abstained on (``-1``, radius 0)
        when ``pA_lower <= 1/2``.
        """
        _check_count(n0, "n0")
        _check_count(n, "n")
        _check_alpha(alpha)
        x = self._check_input(x)
        gen = self._generator()
        if x.shape[0] == 0:
            empty = torch.zeros(0)
            return CertifyResult(
                torch.zeros(0, dtype=torch.long), empty, empty.double(),
                torch.zeros(0, dtype=torch.long), self.sigma, n0, n, float(alpha),
            )  # fmt: skip
        selection = self._vote_counts(x, n0, gen).argmax(dim=1)
        counts = self._vote_counts(x, n, gen)
        n_a = counts.gather(1, selection.unsqueeze(1)).squeeze(1)
        p_lower = clopper_pearson_lower(n_a.numpy(), n, alpha)
        certified = p_lower > 0.5
        radius = np.where(
            certified, self.sigma * stats.norm.ppf(np.where(certified, p_lower, 1)), 0
        )
        prediction = torch.where(
            torch.from_numpy(certified), selection, torch.full_like(selection, ABSTAIN)
        )
        return CertifyResult(
            prediction=prediction,
            radius=torch.from_numpy(radius.astype(np.float64)),
            p_lower=torch.from_numpy(p_lower),
            count=n_a,
            sigma=self.sigma,
            n0=int(n0),
            n=int(n),
            alpha=float(alpha),
        )

    # -- sampling ---------------------------------------------------------------------------
    def _generator(self) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(self.seed)

    def _vote_counts(self, x: torch.Tensor, num: int, gen: torch.Generator) -> torch.Tensor:
        """``(len(x), num_classes)`` int64 CPU counts of the base labels over ``num`` noisy copies
        of each input. Noisy copies of several inputs share a forward pass when they fit."""
        dev = self.device
        x = x.to(dev)
        rows, c = x.shape[0], self.num_classes
        counts = torch.zeros(rows * c, dtype=torch.long, device=dev)
        total = rows * num
        with torch.inference_mode(), self._evaluation():
            for start in range(0, total, self.batch_size):
                stop = min(total, start + self.batch_size)
                owner = torch.arange(start, stop, device=dev) // num
                noise = torch.randn(
                    (stop - start, *x.shape[1:]), generator=gen, device=dev, dtype=x.dtype
                )
                labels = self._labels(x[owner] + self.sigma * noise)
                counts += torch.bincount(owner * c + labels, minlength=rows * c)
        return counts.reshape(rows, c).cpu()

    def _labels(self, batch: torch.Tensor) -> torch.Tensor:
        if isinstance(self.base, nn.Module):
            try:
                out = self.base(batch)
            except RuntimeError as exc:
                raise ModelError(
                    f"the base module failed on a batch of shape {tuple(batch.shape)}: {exc}; "
                    "check that x has the shape the module expects"
                ) from exc
            if out.dim() != 2 or out.shape[1] != self.num_classes:
                raise ModelError(
                    f"the base module returned shape {tuple(out.shape)}; expected logits "
                    f"(batch, {self.num_classes})"
                )
            labels = out.argmax(dim=1)
        else:
            labels = self.base.predict(batch)
        labels = labels.to(batch.device).long()
        if labels.shape != (batch.shape[0],) or (
            labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes)
        ):
            raise ModelError(
                f"the base classifier returned labels outside [0, {self.num_classes - 1}]"
            )
        return labels

    @contextlib.contextmanager
    def _evaluation(self) -> Iterator[None]:
        if isinstance(self.base, nn.Module):
            modes = [(m, m.training) for m in self.base.modules()]
            self.base.eval()
            try:
                yield
            finally:
                for m, training in modes:
                    m.training = training
        else:
            with self.base.evaluation():
                yield

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise InputError(f"x must be a torch.Tensor batch, got {type(x).__name__}")
        if x.dim() < 2:
            raise InputError(f"x must be a batch of shape (n, ...), got {tuple(x.shape)}")
        if not torch.is_floating_point(x):
            raise InputError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        if torch.isnan(x).any():
            raise InputError("x contains NaN values")
        if not isinstance(self.base, nn.Module):
            if tuple(x.shape[1:]) != tuple(self.base.input_shape):
                raise InputError(
                    f"x has shape {tuple(x.shape)}; the model expects (n, "
                    f"{', '.join(map(str, self.base.input_shape))})"
                )
            check_bounds(x, self.base.bounds)
        return x.detach()


def _check_count(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")


def _check_alpha(alpha: float) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0.0 < alpha < 1.0:
        raise ConfigurationError(f"alpha must lie in (0, 1), got {alpha!r}")
