""":class:`TreeClassifier`: a tree ensemble behind the :class:`~bastion.models.Classifier` contract.

Score-only (trees have no useful gradient): ``logits`` are the ensemble's margins (``[0, m]``
for a binary booster) or, for forests, the log of the averaged probabilities, so ``softmax``
equals the library's ``predict_proba``. The structure is exposed as :attr:`ensemble` for the
exact and structural attacks (:mod:`bastion.attacks.trees`).

Example
-------
>>> import numpy as np, torch
>>> from sklearn.datasets import load_iris
>>> from sklearn.ensemble import RandomForestClassifier
>>> from bastion.models.trees import from_trees
>>> X, y = load_iris(return_X_y=True)
>>> rf = RandomForestClassifier(n_estimators=5, max_depth=3, random_state=0).fit(X, y)
>>> clf = from_trees(rf)
>>> p = torch.softmax(clf.logits(torch.tensor(X[:4])), 1).numpy()
>>> bool(np.allclose(p, rf.predict_proba(X[:4])))
True
>>> clf.ensemble.n_trees
5
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bastion.errors import InputError
from bastion.models.base import BaseClassifier, Capability
from bastion.models.trees._convert import to_ensemble
from bastion.models.trees._ensemble import TreeEnsemble

__all__ = ["TreeClassifier", "from_trees"]


class TreeClassifier(BaseClassifier):
    """A validated :class:`TreeEnsemble` evaluated by bastion (score-only access).

    ``bounds`` is the value range of every feature as one interval (the data contract's
    per-feature ranges are the real rules, see :mod:`bastion.data.tabular`); the default is
    wide enough not to constrain tabular data.
    """

    def __init__(
        self,
        ensemble: TreeEnsemble,
        *,
        bounds: tuple[float, float] = (-1e12, 1e12),
        query_budget: int | None = None,
    ) -> None:
        super().__init__(
            input_shape=(ensemble.n_features,),
            num_classes=ensemble.n_classes,
            bounds=bounds,
            capabilities=Capability.score_only(),
            query_budget=query_budget,
        )
        self.ensemble = ensemble

    @property
    def feature_names(self) -> tuple[str, ...] | None:
        return self.ensemble.feature_names

    def _numpy(self, x: torch.Tensor) -> np.ndarray:
        arr = x.detach().cpu().to(torch.float64).numpy()
        if not np.all(np.isfinite(arr)):
            raise InputError("inputs contain NaN or infinite values; tree models need finite rows")
        return arr

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        out = self.ensemble.logits(self._numpy(x))
        dtype = x.dtype if torch.is_floating_point(x) else torch.float32
        return torch.as_tensor(out).to(dtype)

    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.ensemble.predict(self._numpy(x)))

    def __repr__(self) -> str:
        return f"TreeClassifier({self.ensemble!r})"


def from_trees(
    model: Any, *, bounds: tuple[float, float] = (-1e12, 1e12), query_budget: int | None = None
) -> TreeClassifier:
    """A :class:`TreeClassifier` for a fitted XGBoost/LightGBM/scikit-learn tree classifier."""
    return TreeClassifier(to_ensemble(model), bounds=bounds, query_budget=query_budget)
