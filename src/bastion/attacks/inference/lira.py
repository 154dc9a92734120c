"""Likelihood-ratio attack, LiRA (Carlini et al. 2022), online and offline.

Paper: N. Carlini, S. Chien, M. Nasr, S. Song, A. Terzis, F. Tramèr, "Membership Inference
Attacks From First Principles", IEEE S&P 2022. https://arxiv.org/abs/2112.03570

The attacker trains reference models on random halves of data from the target's distribution
and models, per example, the scaled logit ``φ = log p_y - log(1 - p_y)`` of models that did
(IN) and did not (OUT) train on it as Gaussians. A target example's score is

- **online**: ``log N(φ; μ_in, σ_in) - log N(φ; μ_out, σ_out)``. Reference models are trained
  at :meth:`~MembershipAttack.infer` time on half the population plus, for each target
  example, exactly half the models get it as a member (balanced, so ``n_reference`` even);
- **offline**: the one-sided z-score ``(φ - μ_out) / σ_out``; reference models are trained once
  in :meth:`~MembershipAttack.fit` on halves of the population (which must not hold the
  target examples), so they are reused across calls.

``fixed_variance=True`` (the paper's choice with few reference models) uses one σ per side
shared across examples. Judge the result by TPR at 0.1% and 1% FPR, not AUC.

Queries: one per target sample (the reference models are the attacker's own). Needs scores.

Example
-------
>>> import torch
>>> from bastion.attacks.inference import LiRA
>>> LiRA(n_reference=4, online=False)
LiRA(batch_size=512, fixed_variance=True, n_reference=4, online=False, seed=0, train_fn=None)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from bastion.attacks.inference._common import (
    DefaultTrainer,
    TrainFn,
    module_logits,
    query_logits,
    scaled_logit,
    train_references,
)
from bastion.attacks.inference.base import MembershipAttack, check_positive
from bastion.errors import ConfigurationError
from bastion.models.base import Capability, Classifier

__all__ = ["LiRA"]

log = logging.getLogger(__name__)
_MIN_STD = 1e-3


class LiRA(MembershipAttack):
    """Carlini et al.'s likelihood-ratio membership attack (see the module docstring).

    Parameters
    ----------
    n_reference:
        Reference models to train (even when ``online``; 4–64; more is stronger and slower).
    online:
        Online (IN and OUT models, trained per call on the targets) or offline (OUT only).
    train_fn:
        ``train_fn(x, y, seed) -> nn.Module`` that trains a fresh model like the target;
        default: :class:`~bastion.attacks.inference._common.DefaultTrainer` (a small MLP/CNN).
    fixed_variance:
        Share one standard deviation per side across all examples.
    batch_size, seed:
        Query batch size; seed for the data splits and the reference models.
    reference_seeds:
        One seed per reference model (``n_reference`` of them). Offline, reference model ``k``
        then draws its half of the population and its initial weights from
        ``reference_seeds[k]`` alone, so each model is one independent unit of work (the same
        models whichever order, process or machine trains them). Default: derived from
        ``seed`` (``seed * 1000 + k``, the halves from one shared generator).
    executor:
        Where the reference models train: an :class:`~bastion.audit.executor.Executor`
        (default in-process). Blocks of models are its units of work; the scores are the
        same on any executor.
    """

    name: ClassVar[str] = "lira"
    requires: ClassVar[Capability] = Capability.SCORES
    needs_fit: ClassVar[bool] = True

    def __init__(
        self,
        *,
        n_reference: int = 8,
        online: bool = True,
        train_fn: TrainFn | None = None,
        fixed_variance: bool = True,
        batch_size: int = 512,
        seed: int | None = 0,
        reference_seeds: Sequence[int] | None = None,
        executor: Any = None,
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed)
        check_positive(n_reference, "n_reference", integer=True)
        if reference_seeds is not None and (
            len(reference_seeds) != n_reference
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in reference_seeds)
        ):
            raise ConfigurationError(
                f"reference_seeds must be {n_reference} integers (one per reference model)"
            )
        if n_reference < 2 or (online and n_reference % 2):
            raise ConfigurationError(
                f"n_reference must be at least 2 (and even when online), got {n_reference}"
            )
        if train_fn is not None and not callable(train_fn):
            raise ConfigurationError(
                "train_fn must be a callable train_fn(x, y, seed) -> nn.Module"
            )
        self.n_reference = int(n_reference)
        self.online = bool(online)
        self.train_fn = train_fn
        self.fixed_variance = bool(fixed_variance)
        self._reference_seeds = None if reference_seeds is None else list(reference_seeds)
        self._executor = executor
        self.reference_models_: list[nn.Module] = []

    def get_params(self) -> dict[str, Any]:
        out = super().get_params()
        out["train_fn"] = (
            None
            if self.train_fn is None
            else getattr(self.train_fn, "__name__", type(self.train_fn).__name__)
        )
        return out

    def planned_queries(self, classifier: Classifier, n: int) -> int:
        return n

    def _trainer(self, classifier: Classifier) -> TrainFn:
        if self.train_fn is not None:
            return self.train_fn
        return DefaultTrainer(tuple(classifier.input_shape), classifier.num_classes)

    def _seed(self, k: int) -> int:
        if self._reference_seeds is not None:
            return self._reference_seeds[k]
        return (0 if self.seed is None else self.seed) * 1000 + k

    def _half(self, n: int, k: int, generator: torch.Generator) -> torch.Tensor:
        """Reference model ``k``'s half of ``n`` population samples."""
        if self._reference_seeds is not None:
            generator = torch.Generator().manual_seed(self._reference_seeds[k])
        return torch.randperm(n, generator=generator)[: n // 2]

    def _fit(
        self,
        classifier: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator,
    ) -> None:
        self.reference_models_ = []
        if self.online:
            return
        n = x.shape[0]
        subsets = [self._half(n, k, generator) for k in range(self.n_reference)]
        seeds = [self._seed(k) for k in range(self.n_reference)]
        self.reference_models_ = train_references(
            self._trainer(classifier), x, y, subsets, seeds, executor=self._executor
        )
        log.info("LiRA offline: trained %d reference models", self.n_reference)

    def _score(
        self,
        classifier: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator,
    ) -> torch.Tensor:
        target_phi = scaled_logit(query_logits(classifier, x, self.batch_size), y)
        if self.online:
            phis, inside = self._online_references(classifier, x, y, generator)
        else:
            phis = torch.stack(
                [scaled_logit(module_logits(m, x), y) for m in self.reference_models_]
            )
            inside = torch.zeros_like(phis, dtype=torch.bool)
        mu_out, sd_out = self._gaussian(phis, ~inside)
        if not self.online:
            return (target_phi - mu_out) / sd_out
        mu_in, sd_in = self._gaussian(phis, inside)
        return _log_normal(target_phi, mu_in, sd_in) - _log_normal(target_phi, mu_out, sd_out)

    def _online_references(
        self,
        classifier: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.population_ is None:  # pragma: no cover - checked by infer
            raise ConfigurationError("call fit() first")
        xp, yp = self.population_
        n, k = x.shape[0], self.n_reference
        # each target example is IN for exactly half of the reference models
        inside = torch.argsort(torch.rand(n, k, generator=generator), dim=1) < k // 2
        inside = inside.T.contiguous()
        # model j: half the population, then the targets it holds IN (indices into one pool)
        pool_x, pool_y = torch.cat([xp, x]), torch.cat([yp, y])
        subsets = []
        for j in range(k):
            pop_idx = torch.randperm(xp.shape[0], generator=generator)[: xp.shape[0] // 2]
            subsets.append(torch.cat([pop_idx, xp.shape[0] + torch.nonzero(inside[j]).flatten()]))
        models = train_references(
            self._trainer(classifier),
            pool_x,
            pool_y,
            subsets,
            [self._seed(j) for j in range(k)],
            executor=self._executor,
        )
        phis = [scaled_logit(module_logits(model, x), y) for model in models]
        log.info("LiRA online: trained %d reference models", k)
        return torch.stack(phis), inside

    def _gaussian(
        self, phis: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example mean and (shared or per-example) std of ``phis`` where ``mask``."""
        w = mask.double()
        count = w.sum(0).clamp_min(1.0)
        mu = (phis * w).sum(0) / count
        sq = ((phis - mu) ** 2 * w).sum(0)
        if self.fixed_variance:
            sd = torch.full_like(mu, math.sqrt(float(sq.sum()) / max(1.0, float(w.sum()) - 1.0)))
        else:
            sd = (sq / (count - 1).clamp_min(1.0)).sqrt()
        return mu, sd.clamp_min(_MIN_STD)


def _log_normal(v: torch.Tensor, mu: torch.Tensor, sd: torch.Tensor) -> torch.Tensor:
    return -0.5 * ((v - mu) / sd) ** 2 - torch.log(sd)
