"""Spectral signatures.

Tran, Li & Madry, "Spectral Signatures in Backdoor Attacks", NeurIPS 2018.
https://arxiv.org/abs/1811.00636

For each class, the activations (default: the penultimate activations, before the ReLU that
feeds the last linear layer) are centred, whitened by the pooled within-class covariance of the
*other* classes (a trigger feature that no clean class varies along then dominates), and
projected on their top singular vector; a backdoor leaves a strong signature along it. The
paper removes the samples with the largest squared projections, a fixed 1.5 × the expected
poison rate per class. Here the decision does not need the poison rate: the projections are
split in two by an exact one-dimensional 2-means, and the suspect part is flagged when the two
parts are far apart (``separation`` = gap between their means in pooled within-part standard
deviations, about 2.7 for a single Gaussian) and it holds at most ``max_fraction`` of the
class. The suspect part is the one whose samples spread most along the directions separating
the other classes (poisoned inputs come from several source classes), not simply the smaller.

Defaults: ``threshold=7.0`` (separation), ``max_fraction=0.67``, ``whiten=True``,
``shrinkage=0.1``.

Example
-------
>>> import torch
>>> from torch import nn
>>> from bastion.defences.data import SpectralSignatures
>>> _ = torch.manual_seed(0)
>>> x = torch.cat([torch.randn(60, 4), torch.randn(20, 4) + 8.0])
>>> y = torch.zeros(80, dtype=torch.long)
>>> ss = SpectralSignatures(nn.Sequential(nn.Identity(), nn.Linear(4, 2))).fit(x, y)
>>> int(ss.flags_[60:].sum()), int(ss.flags_[:60].sum())
(20, 0)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bastion.defences.data._activations import extract_activations
from bastion.defences.data._split import (
    ClassSplit,
    best_1d_split,
    make_split,
    split_scores,
    top_components,
)
from bastion.defences.data._whiten import MAX_DIM, class_geometry, mixing
from bastion.defences.data.base import PoisonDetector
from bastion.errors import ConfigurationError

__all__ = ["SpectralSignatures"]


class SpectralSignatures(PoisonDetector):
    """Top-singular-vector outlier detection per class (Tran et al. 2018).

    Parameters
    ----------
    model: the torch model trained on the suspect data (``nn.Module`` or ``TorchClassifier``).
    layer: name of the layer whose output is used (default: the penultimate activations).
    threshold: separation above which a class is called backdoored.
    max_fraction: the flagged part may hold at most this fraction of its class.
    min_class_size: smaller classes are not analysed.
    whiten: whiten each class by the other classes' pooled within-class covariance.
    shrinkage: weight of the identity in that covariance estimate, in [0, 1].

    Fitted ``outlier_scores_`` hold the paper's per-sample score (squared centred projection).
    """

    name = "spectral_signatures"

    def __init__(
        self,
        model: nn.Module | Any,
        *,
        layer: str | None = None,
        threshold: float = 7.0,
        max_fraction: float = 0.67,
        min_class_size: int = 10,
        whiten: bool = True,
        shrinkage: float = 0.1,
        batch_size: int = 128,
    ) -> None:
        self._model = model
        self.layer = layer
        if not float(threshold) > 0:
            raise ConfigurationError(f"threshold must be a positive separation, got {threshold!r}")
        if not 0.0 < float(max_fraction) < 1.0:
            raise ConfigurationError(f"max_fraction must be in (0, 1), got {max_fraction!r}")
        if not 0.0 <= float(shrinkage) <= 1.0:
            raise ConfigurationError(f"shrinkage must be in [0, 1], got {shrinkage!r}")
        if not isinstance(min_class_size, int) or min_class_size < 4:
            raise ConfigurationError(f"min_class_size must be an int >= 4, got {min_class_size!r}")
        self.threshold = float(threshold)
        self.max_fraction = float(max_fraction)
        self.min_class_size = min_class_size
        self.whiten = bool(whiten)
        self.shrinkage = float(shrinkage)
        self.batch_size = int(batch_size)

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        return extract_activations(self._model, x, layer=self.layer, batch_size=self.batch_size)

    def _fit(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        acts = self.activations(x)
        classes = [c for c in sorted(set(y.tolist())) if int((y == c).sum()) >= self.min_class_size]
        geo = class_geometry(acts, y, classes, whiten=self.whiten, shrinkage=self.shrinkage)
        self.splits_: dict[int, ClassSplit] = {}
        self.directions_: dict[int, tuple[torch.Tensor, torch.Tensor, float]] = {}
        self.projections_: dict[int, torch.Tensor] = {}
        assign = torch.zeros(y.shape[0], dtype=torch.long)
        self.outlier_scores_ = torch.zeros(y.shape[0])
        dim = geo.others[classes[0]].shape[1] if classes else 0
        if dim <= MAX_DIM:  # top eigenvector of each whitened scatter, batched over classes
            tops = geo.top_directions(classes, 1)
        bases = geo.mixing_bases(classes)
        for c in classes:
            sel = y == c
            z = geo.coords(c)
            if dim <= MAX_DIM:
                v = tops[c][:, 0]
            else:
                v = top_components(z - z.mean(0), 1)[:, 0]
            u = z @ v
            cut, sep = best_1d_split(u)
            side = (u > cut).long()
            self.splits_[c] = make_split(
                c,
                side,
                sep,
                mixing(z, side, bases[c]),
                threshold=self.threshold,
                max_fraction=self.max_fraction,
            )
            self.directions_[c] = (geo.means[c], geo.lift(c, v[:, None])[:, 0], cut)
            self.projections_[c] = u.float()
            self.outlier_scores_[sel] = ((u - u.mean()) ** 2).float()
            assign[sel] = side
        self.assignments_ = assign
        self.scores_ = self._masked(split_scores(assign, y, self.splits_), y)
        self.threshold_ = self.threshold
        return None

    def _masked(self, scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        for c, sp in self.splits_.items():
            if sp.minority_fraction > self.max_fraction:
                scores[y == c] = 0.0
        return scores.float()

    def _score(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        acts = self.activations(x)
        assign = torch.full((y.shape[0],), -1, dtype=torch.long)
        for c, (mean, v, cut) in self.directions_.items():
            sel = y == c
            if bool(sel.any()):
                assign[sel] = (((acts[sel].double() - mean) @ v) > cut).long()
        return self._masked(split_scores(assign, y, self.splits_), y)
