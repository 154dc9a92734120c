"""Train fresh tree ensembles like a given one: the reference models of membership inference
and the surrogates of extraction.

:class:`TreeTrainer` fits a model of the target's family (XGBoost, LightGBM, or the same
scikit-learn estimator) with its number of boosting rounds or trees and its depth, read from
the :class:`~bastion.models.trees.TreeEnsemble`; the library's defaults fill the rest (the
file does not record a learning rate). It is a ``train_fn(x, y, seed) -> nn.Module`` as
:class:`~bastion.attacks.inference.LiRA` and the shadow-model attack take it: the module is a
:class:`TreeModule`, the fitted ensemble as bastion evaluates it, returning the log of its
class probabilities.

>>> import numpy as np, torch
>>> from sklearn.datasets import load_wine
>>> from sklearn.ensemble import RandomForestClassifier
>>> from bastion.models.trees import to_ensemble
>>> X, y = load_wine(return_X_y=True)
>>> target = to_ensemble(RandomForestClassifier(n_estimators=7, max_depth=3,
...                                             random_state=0).fit(X, y))
>>> trainer = TreeTrainer.like(target)
>>> trainer.family, trainer.n_trees, trainer.max_depth
('random-forest', 7, 3)
>>> ref = trainer(torch.tensor(X[::2]), torch.tensor(y[::2]), 0)
>>> tuple(ref(torch.tensor(X[:5])).shape)
(5, 3)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from bastion.errors import ConfigurationError

__all__ = ["FAMILIES", "TreeModule", "TreeTrainer"]

#: families a :class:`TreeTrainer` fits, by the ensemble ``source`` they come from
FAMILIES = {
    "xgboost": "xgboost",
    "lightgbm": "lightgbm",
    "sklearn.RandomForestClassifier": "random-forest",
    "sklearn.ExtraTreesClassifier": "extra-trees",
    "sklearn.DecisionTreeClassifier": "decision-tree",
    "sklearn.ExtraTreeClassifier": "decision-tree",
    "sklearn.GradientBoostingClassifier": "gradient-boosting",
    "sklearn.HistGradientBoostingClassifier": "hist-gradient-boosting",
}


class TreeModule(nn.Module):
    """A fitted ensemble as a torch module: log class probabilities over ``num_classes``
    (classes its training data lacked score ``-1e9``; one class seen: that class)."""

    def __init__(self, ensemble: Any, classes: np.ndarray, num_classes: int) -> None:
        super().__init__()
        self.ensemble = ensemble
        self.classes = np.asarray(classes, dtype=np.int64)
        self.num_classes = int(num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.detach().reshape(x.shape[0], -1).cpu().double().numpy()
        out = np.full((rows.shape[0], self.num_classes), -1e9)
        if self.ensemble is None:
            out[:, self.classes[0]] = 0.0
        else:
            out[:, self.classes] = np.log(np.clip(self.ensemble.predict_proba(rows), 1e-12, 1))
        dtype = x.dtype if torch.is_floating_point(x) else torch.float32
        return torch.from_numpy(out).to(dtype)


@dataclass(frozen=True)
class TreeTrainer:
    """Fits ``family`` models with ``n_trees`` trees (boosting rounds) of at most
    ``max_depth`` levels (``None``: unlimited) on ``num_classes`` classes."""

    family: str
    n_trees: int
    num_classes: int
    max_depth: int | None = None

    def __post_init__(self) -> None:
        if self.family not in set(FAMILIES.values()):
            raise ConfigurationError(
                f"tree family must be one of {sorted(set(FAMILIES.values()))}, "
                f"got {self.family!r}")
        if self.n_trees < 1 or self.num_classes < 2 or (
                self.max_depth is not None and self.max_depth < 1):
            raise ConfigurationError("n_trees and max_depth must be >= 1, num_classes >= 2")

    @classmethod
    def like(cls, ensemble: Any) -> TreeTrainer:
        """A trainer of ``ensemble``'s family and size."""
        family = FAMILIES.get(ensemble.source)
        if family is None:
            raise ConfigurationError(f"no trainer for tree models from {ensemble.source!r}")
        rounds = ensemble.n_trees
        if family in ("xgboost", "lightgbm", "gradient-boosting", "hist-gradient-boosting"):
            rounds = max(1, ensemble.n_trees // max(ensemble.n_outputs, 1))
        depth = max(int(ensemble.depth) - 1, 1)
        return cls(family=family, n_trees=int(rounds), num_classes=int(ensemble.n_classes),
                   max_depth=depth)

    @classmethod
    def of_classifier(cls, clf: Any) -> TreeTrainer | None:
        """A trainer like ``clf``'s ensemble (through a metered view too), or ``None`` when
        ``clf`` is no tree ensemble of a known family."""
        ensemble = getattr(getattr(clf, "base", clf), "ensemble", None)
        if ensemble is None or getattr(ensemble, "source", None) not in FAMILIES:
            return None
        return cls.like(ensemble)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, seed: int) -> nn.Module:
        return self.fit(x.reshape(x.shape[0], -1).double().cpu().numpy(),
                        y.cpu().numpy().astype(np.int64), seed)

    def fit(self, x: np.ndarray, y: np.ndarray, seed: int) -> TreeModule:
        """Fit on ``(x, y)`` and return the module (classes re-indexed as seen)."""
        from bastion.models.trees import to_ensemble

        classes = np.unique(y)
        if len(classes) < 2:
            return TreeModule(None, classes, self.num_classes)
        est = self._estimator(len(classes), int(seed))
        est.fit(x, np.searchsorted(classes, y))
        return TreeModule(to_ensemble(est), classes, self.num_classes)

    def _estimator(self, k: int, seed: int) -> Any:
        depth = self.max_depth
        if self.family == "xgboost":
            import xgboost as xgb

            return xgb.XGBClassifier(n_estimators=self.n_trees, max_depth=depth or 0,
                                     random_state=seed, n_jobs=1, verbosity=0)
        if self.family == "lightgbm":
            import lightgbm as lgb

            return lgb.LGBMClassifier(n_estimators=self.n_trees, max_depth=depth or -1,
                                      num_leaves=min(2 ** (depth or 5), 131072),
                                      random_state=seed, n_jobs=1, verbose=-1)
        from sklearn import ensemble, tree

        common: dict[str, Any] = {"max_depth": depth, "random_state": seed}
        if self.family == "random-forest":
            return ensemble.RandomForestClassifier(n_estimators=self.n_trees, n_jobs=1, **common)
        if self.family == "extra-trees":
            return ensemble.ExtraTreesClassifier(n_estimators=self.n_trees, n_jobs=1, **common)
        if self.family == "decision-tree":
            return tree.DecisionTreeClassifier(**common)
        if self.family == "gradient-boosting":
            return ensemble.GradientBoostingClassifier(n_estimators=self.n_trees,
                                                       max_depth=depth or 3,
                                                       random_state=seed)
        return ensemble.HistGradientBoostingClassifier(max_iter=self.n_trees, early_stopping=False,
                                                       **common)
