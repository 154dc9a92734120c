"""Shadow-model membership attack (Shokri et al. 2017).

Paper: R. Shokri, M. Stronati, C. Song, V. Shmatikov, "Membership Inference Attacks Against
Machine Learning Models", IEEE S&P 2017. https://arxiv.org/abs/1610.05820

The attacker trains ``n_shadows`` shadow models like the target, each on a random half of its
population data, so it knows which samples each shadow saw. The shadows' outputs on their IN
and OUT halves train an *attack classifier* (gradient-boosted trees) that tells members from
non-members; the target's outputs on the samples to score go through that classifier. The
features are label-aware summaries of the output vector (true-class log-probability, scaled
logit, top-3 sorted log-probabilities, entropy, correctness), so one attack classifier serves
every class.

Queries: one per target sample. Needs scores. Call :meth:`~MembershipAttack.fit` first.

Example
-------
>>> from bastion.attacks.inference import ShadowModelAttack
>>> ShadowModelAttack(n_shadows=2)
ShadowModelAttack(batch_size=512, n_shadows=2, seed=0, train_fn=None)
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np
import torch

from bastion.attacks.inference._common import (
    DefaultTrainer,
    TrainFn,
    log_probs,
    module_logits,
    own_log_prob,
    query_logits,
    scaled_logit,
    train_references,
)
from bastion.attacks.inference.base import MembershipAttack, check_positive
from bastion.errors import ConfigurationError
from bastion.models.base import Capability, Classifier

__all__ = ["ShadowModelAttack", "shadow_features"]

log = logging.getLogger(__name__)


def shadow_features(logits: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Label-aware features of output vectors, shape ``(n, 7)``, for the attack classifier."""
    lp = log_probs(logits)
    own = own_log_prob(logits, y)
    k = min(3, lp.shape[1])
    top = lp.topk(k, dim=1).values
    if k < 3:
        top = torch.cat([top, top[:, -1:].expand(-1, 3 - k)], dim=1)
    entropy = -(lp.exp() * lp).sum(1)
    correct = (lp.argmax(1) == y).double()
    feats = torch.cat(
        [own[:, None], scaled_logit(logits, y)[:, None], top, entropy[:, None], correct[:, None]],
        dim=1,
    )
    return feats.clamp(-1e6, 1e6).numpy()


class ShadowModelAttack(MembershipAttack):
    """Shokri et al.'s shadow-model attack (see the module docstring).

    Parameters
    ----------
    n_shadows:
        Shadow models to train (each on half of the population data).
    train_fn:
        ``train_fn(x, y, seed) -> nn.Module`` training a fresh model like the target; default
        :class:`~bastion.attacks.inference._common.DefaultTrainer`.
    batch_size, seed:
        Query batch size; seed for the splits, the shadows and the attack classifier.
    executor:
        Where the shadow models train: an :class:`~bastion.audit.executor.Executor` (default
        in-process); the shadows and the scores are the same on any executor.
    """

    name: ClassVar[str] = "shadow"
    requires: ClassVar[Capability] = Capability.SCORES
    needs_fit: ClassVar[bool] = True

    def __init__(
        self,
        *,
        n_shadows: int = 4,
        train_fn: TrainFn | None = None,
        batch_size: int = 512,
        seed: int | None = 0,
        executor: Any = None,
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed)
        check_positive(n_shadows, "n_shadows", integer=True)
        if train_fn is not None and not callable(train_fn):
            raise ConfigurationError(
                "train_fn must be a callable train_fn(x, y, seed) -> nn.Module"
            )
        self.n_shadows = int(n_shadows)
        self.train_fn = train_fn
        self.attack_model_: Any = None
        self._executor = executor

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

    def _fit(
        self,
        classifier: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator,
    ) -> None:
        from sklearn.ensemble import HistGradientBoostingClassifier

        train = self.train_fn or DefaultTrainer(
            tuple(classifier.input_shape), classifier.num_classes
        )
        n = x.shape[0]
        feats, labels = [], []
        base = 0 if self.seed is None else self.seed
        perms = [torch.randperm(n, generator=generator) for _ in range(self.n_shadows)]
        seeds = [base * 1000 + 500 + k for k in range(self.n_shadows)]
        models = train_references(
            train, x, y, [p[: n // 2] for p in perms], seeds, executor=self._executor
        )
        for model, perm in zip(models, perms, strict=True):
            inside, outside = perm[: n // 2], perm[n // 2 :]
            for idx, member in ((inside, 1), (outside, 0)):
                feats.append(shadow_features(module_logits(model, x[idx]), y[idx]))
                labels.append(np.full(len(idx), member))
        self.attack_model_ = HistGradientBoostingClassifier(
            max_iter=100, learning_rate=0.1, random_state=base
        ).fit(np.concatenate(feats), np.concatenate(labels))
        log.info("shadow attack: %d shadow models, attack classifier fitted", self.n_shadows)

    def _score(
        self,
        classifier: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator,
    ) -> torch.Tensor:
        feats = shadow_features(query_logits(classifier, x, self.batch_size), y)
        proba = self.attack_model_.predict_proba(feats)[:, 1]
        return torch.from_numpy(np.asarray(proba, dtype=np.float64))
