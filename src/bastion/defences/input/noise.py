"""Randomised input transformation: additive Gaussian noise.

A randomised preprocessor in the family of Xie et al., "Mitigating Adversarial Effects Through
Randomization", ICLR 2018 (https://arxiv.org/abs/1711.01991), in its simplest form: each call
adds fresh ``N(0, sigma^2)`` noise and clips to the bounds. A single-draw gradient is a noisy
estimate; evaluate it with EOT (:func:`bastion.defences.input.eot_classifier`).

Example
-------
>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> out = GaussianNoise(sigma=0.1).transform(torch.full((2, 3), 0.5), generator=g)
>>> out.shape, bool((out != 0.5).all())
(torch.Size([2, 3]), True)
"""

from __future__ import annotations

import math

import torch

from bastion.defences.input.base import Preprocessor
from bastion.errors import ConfigurationError

__all__ = ["GaussianNoise"]


class GaussianNoise(Preprocessor):
    """Add ``N(0, sigma^2)`` noise to every value, then clip to ``bounds`` (randomised)."""

    name = "gaussian_noise"
    differentiable = True
    randomised = True

    def __init__(self, *, sigma: float = 0.1, bounds: tuple[float, float] = (0.0, 1.0)) -> None:
        if (
            isinstance(sigma, bool)
            or not isinstance(sigma, int | float)
            or not (math.isfinite(sigma) and sigma > 0)
        ):
            raise ConfigurationError(f"sigma must be a positive number, got {sigma!r}")
        lo, hi = (float(b) for b in bounds)
        if not lo < hi:
            raise ConfigurationError(f"bounds must have low < high, got {bounds!r}")
        self.sigma = float(sigma)
        self.bounds = (lo, hi)

    def _transform(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (x + self.sigma * noise).clamp(self.bounds[0], self.bounds[1])
