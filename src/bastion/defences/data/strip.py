"""STRIP: run-time detection of triggered inputs by strong intentional perturbation.

Gao, Xu, Wang, Chen, Ranasinghe & Nepal, "STRIP: A Defence Against Trojan Attacks on Deep Neural
Networks", ACSAC 2019. https://arxiv.org/abs/1902.06531

Each input is superimposed on ``n_perturbations`` clean images drawn from a held-out pool
(``clip(x + overlay)`` as in the paper, or ``alpha * x + (1 - alpha) * overlay``) and the
entropy of the model's predictions on the blends is averaged (as in the paper; optionally the
entropy of the mean prediction instead). A clean input's
prediction follows the overlay, so the entropy is high; a trigger keeps dictating the target
class, so the entropy stays low. The score is the negative entropy (higher is more suspicious)
and the threshold is calibrated on clean inputs to a chosen false-rejection rate.

Calibration is out-of-sample and finite-sample conservative. :meth:`fit` splits the clean set
(seeded) into an overlay pool and a disjoint calibration set, so no calibration input is ever
blended with itself, and the threshold is the conformal order statistic: with ``n`` calibration
scores it lets ``floor(fpr * (n + 1)) - 1`` of them lie above it, which makes the expected
false-rejection rate on new clean inputs (exchangeable with the calibration set) at most
``fpr`` -- the plain empirical quantile lets one more through and overshoots by about
``1 / (n + 1)``. With ``confidence=c`` the threshold instead bounds the held-out false-rejection
rate by ``fpr`` with probability at least ``c`` over the calibration draw (the exact binomial /
Beta bound on an order statistic), at the price of a slightly lower detection rate. The
realised rate still varies with the calibration draw: its standard deviation is about
``sqrt(fpr * (1 - fpr) / n)``, so calibrate on a few hundred inputs where you can.

Defaults: ``n_perturbations=16``, ``mode="add"``, calibrated to ``fpr=0.05`` by :meth:`fit` on
half of the clean set (``calibration_fraction=0.5``).

Example
-------
>>> import torch
>>> from torch import nn
>>> from bastion.defences.data import STRIP
>>> _ = torch.manual_seed(0)
>>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
>>> strip = STRIP(net, n_perturbations=8).fit(torch.rand(80, 4))
>>> strip.pool_.shape, strip.clean_scores_.shape
(torch.Size([40, 4]), torch.Size([40]))
>>> strip.predict(torch.rand(10, 4)).shape
torch.Size([10])
>>> conformal_threshold(torch.arange(100.0), 0.05)  # 4 of 100 above: E[FRR] = 5/101
95.0
"""

from __future__ import annotations

import math
from typing import Any

import torch
from scipy.stats import binom
from torch import nn

from bastion.defences.data._activations import as_module
from bastion.defences.data.base import check_fpr, check_xy
from bastion.errors import ConfigurationError, InputError

__all__ = ["STRIP", "conformal_threshold"]


def _allowed_above(n: int, fpr: float, confidence: float | None) -> int:
    """How many of ``n`` calibration scores may lie strictly above the threshold."""
    if confidence is None:
        # rank of a new exchangeable score is uniform on 1..n+1: P(above the (k+1)-th
        # largest) = (k + 1) / (n + 1) <= fpr
        return math.floor(fpr * (n + 1) + 1e-9) - 1
    # conditional FRR of the (k+1)-th largest is Beta(k + 1, n - k); P(FRR <= fpr) equals
    # P(Binomial(n, fpr) >= k + 1); take the largest k with that at least `confidence`
    k = -1
    while k + 1 < n and float(binom.sf(k + 1, n, fpr)) >= confidence:
        k += 1
    return k


def conformal_threshold(
    scores: torch.Tensor, fpr: float, *, confidence: float | None = None
) -> float:
    """Threshold on clean calibration ``scores`` (higher is more suspicious) for ``fpr``.

    Without ``confidence``: the expected rate of new clean scores above the threshold is at
    most ``fpr``. With ``confidence=c``: that rate is at most ``fpr`` with probability ``>= c``
    over the calibration sample. Raises :class:`InputError` when there are too few scores to
    guarantee either (at least ``ceil(1 / fpr) - 1`` are needed for the first).
    """
    fpr = check_fpr(fpr)
    if confidence is not None and not 0.0 < float(confidence) < 1.0:
        raise ConfigurationError(f"confidence must be in (0, 1) or None, got {confidence!r}")
    s = scores.detach().double().flatten().sort(descending=True).values
    n = s.numel()
    k = _allowed_above(n, fpr, confidence)
    if k < 0:
        need = math.ceil(1 / fpr) - 1
        raise InputError(
            f"{n} clean calibration inputs are too few to guarantee a false-rejection rate of "
            f"{fpr}"
            + ("" if confidence is None else f" at confidence {confidence}")
            + f"; give more clean inputs (at least {need} without a confidence level)"
        )
    return float(s[k])


class STRIP:
    """Inference-time trojan detector (Gao et al. 2019); a scikit-learn-style detector.

    Parameters
    ----------
    model: the deployed torch model (``nn.Module`` or ``TorchClassifier``).
    n_perturbations: overlays per input.
    mode: "add" (the paper's superimposition: ``clip(x + overlay)``) or "mix"
        (``alpha * x + (1 - alpha) * overlay``).
    entropy: "per_blend" (default, the paper's mean of per-blend entropies) or "of_mean" (the
        entropy of the blends' mean prediction, which still separates when an over-confident
        model gives near-zero entropy to every single blend).
    alpha: weight of the input in a "mix" blend.
    bounds: the input range, for clipping "add" blends.
    batch_size: inputs per forward pass (times ``n_perturbations`` blends).
    seed: seeds the choice of overlays.

    Fitted: ``pool_`` (clean overlays), ``threshold_``, ``fpr_``, ``clean_scores_``.
    """

    name = "strip"

    def __init__(
        self,
        model: nn.Module | Any,
        *,
        n_perturbations: int = 16,
        mode: str = "add",
        entropy: str = "per_blend",
        alpha: float = 0.5,
        bounds: tuple[float, float] = (0.0, 1.0),
        batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        as_module(model)
        if not isinstance(n_perturbations, int) or n_perturbations < 2:
            raise ConfigurationError(
                f"n_perturbations must be an int >= 2, got {n_perturbations!r}"
            )
        if not 0.0 < float(alpha) < 1.0:
            raise ConfigurationError(f"alpha must be in (0, 1), got {alpha!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigurationError(f"batch_size must be a positive int, got {batch_size!r}")
        if mode not in ("add", "mix"):
            raise ConfigurationError(f"mode must be 'add' or 'mix', got {mode!r}")
        lo, hi = (float(b) for b in bounds)
        if not lo < hi:
            raise ConfigurationError(f"bounds must satisfy low < high, got {bounds!r}")
        self._model = model
        self.mode = mode
        if entropy not in ("of_mean", "per_blend"):
            raise ConfigurationError(f"entropy must be 'of_mean' or 'per_blend', got {entropy!r}")
        self.entropy = entropy
        self.bounds = (lo, hi)
        self.n_perturbations = n_perturbations
        self.alpha = float(alpha)
        self.batch_size = batch_size
        self.seed = int(seed)

    def fit(
        self,
        x_clean: torch.Tensor,
        *,
        fpr: float = 0.05,
        calibration_fraction: float = 0.5,
        confidence: float | None = None,
    ) -> STRIP:
        """Split ``x_clean`` (seeded) into the overlay pool and a disjoint calibration set.

        ``calibration_fraction`` of the inputs calibrate the threshold (see :meth:`calibrate`),
        the rest become ``pool_``. Calibrating on the overlay pool itself would blend inputs
        with themselves and bias the threshold, so the two never overlap.
        """
        check_xy(x_clean, None, need_y=False)
        if not 0.0 < float(calibration_fraction) < 1.0:
            raise ConfigurationError(
                f"calibration_fraction must be in (0, 1), got {calibration_fraction!r}"
            )
        n = x_clean.shape[0]
        n_cal = round(n * float(calibration_fraction))
        if n_cal < 1 or n - n_cal < 2:
            raise InputError(
                f"{n} clean inputs cannot be split into an overlay pool of at least two and a "
                "calibration set; give more clean inputs"
            )
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        x = x_clean.detach().float().cpu()
        self.pool_ = x[perm[n_cal:]]
        return self.calibrate(x[perm[:n_cal]], fpr=fpr, confidence=confidence)

    def calibrate(
        self, x_clean: torch.Tensor, *, fpr: float = 0.05, confidence: float | None = None
    ) -> STRIP:
        """Set ``threshold_`` from clean inputs that are NOT in the overlay pool.

        The threshold is :func:`conformal_threshold` of their scores: new clean inputs are
        rejected at a rate of at most ``fpr`` in expectation, or with probability at least
        ``confidence`` when it is given.
        """
        fpr = check_fpr(fpr)
        self.clean_scores_ = self.score(x_clean)
        self.threshold_ = conformal_threshold(self.clean_scores_, fpr, confidence=confidence)
        self.fpr_ = fpr
        return self

    @torch.no_grad()
    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Negative prediction entropy over the blends (higher is more suspicious)."""
        if not hasattr(self, "pool_"):
            raise ConfigurationError("STRIP is not fitted: call fit(x_clean) first")
        check_xy(x, None, need_y=False)
        if tuple(x.shape[1:]) != tuple(self.pool_.shape[1:]):
            raise InputError(
                f"x has input shape {tuple(x.shape[1:])}, the pool {tuple(self.pool_.shape[1:])}"
            )
        module, forward = as_module(self._model)
        was = module.training
        module.eval()
        device = next(module.parameters()).device
        gen = torch.Generator().manual_seed(self.seed)
        k = self.n_perturbations
        out = []
        try:
            for i in range(0, x.shape[0], self.batch_size):
                xb = x[i : i + self.batch_size].float().cpu()
                b = xb.shape[0]
                idx = torch.randint(0, self.pool_.shape[0], (b * k,), generator=gen)
                xr = xb.repeat_interleave(k, 0)
                if self.mode == "add":
                    blends = (xr + self.pool_[idx]).clamp(*self.bounds)
                else:
                    blends = self.alpha * xr + (1 - self.alpha) * self.pool_[idx]
                probs = torch.softmax(forward(blends.to(device)).float(), 1).cpu()
                if self.entropy == "per_blend":
                    plogp = probs * probs.clamp_min(1e-12).log()
                    entropy = -plogp.sum(1).reshape(b, k).mean(1)
                else:
                    mean = probs.reshape(b, k, -1).mean(1)
                    entropy = -(mean * mean.clamp_min(1e-12).log()).sum(1)
                out.append(-entropy)
        finally:
            module.train(was)
        return torch.cat(out)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """True for inputs judged triggered (rejected)."""
        if not hasattr(self, "threshold_"):
            raise ConfigurationError("STRIP is not calibrated: call fit(x_clean) first")
        return self.score(x) > self.threshold_

    def __repr__(self) -> str:
        return (
            f"STRIP(n_perturbations={self.n_perturbations}, mode={self.mode!r}, "
            f"entropy={self.entropy!r}, alpha={self.alpha}, batch_size={self.batch_size}, "
            f"seed={self.seed})"
        )
