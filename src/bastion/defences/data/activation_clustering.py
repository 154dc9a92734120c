"""Activation clustering.

Chen, Carvalho, Baracaldo, Ludwig, Edwards, Lee, Molloy & Srivastava, "Detecting Backdoor
Attacks on Deep Neural Networks by Activation Clustering", 2018. https://arxiv.org/abs/1811.03728

For each class, the activations of one layer (default: the penultimate activations, before the
ReLU that feeds the last linear layer) of the model trained on the suspect data are whitened by
the pooled within-class covariance of the *other* classes (so a trigger feature that no clean
class varies along stands out), reduced to ``n_components`` dimensions (PCA) and split in two
by 2-means (deterministic: initialised by the best split of the first principal component). A
backdoored class splits into its genuine samples and the triggered ones. The paper judges the
split by the clusters' relative size or silhouette; genuine sub-modes of a class (a "1" with or
without a serif) have silhouettes as high as a backdoor's, so here the split is judged by its
*separation*: the gap between the two clusters along the line joining their centres, in pooled
within-cluster standard deviations (about 2.7 for a single Gaussian). The suspect cluster is
not simply the smaller one (a 10% backdoor is half of its target class on ten balanced
classes): it is the one whose samples spread most along the directions separating the other
classes, since poisoned inputs come from several source classes. It is flagged when the
separation exceeds ``threshold`` and it holds at most ``max_fraction`` of the class. The poison
rate is not needed.

Defaults: ``n_components=10``, ``threshold=8.0`` (separation), ``max_fraction=0.67``,
``whiten=True``, ``shrinkage=0.1`` (covariance shrinkage towards the identity).

Example
-------
>>> import torch
>>> from torch import nn
>>> from bastion.defences.data import ActivationClustering
>>> _ = torch.manual_seed(0)
>>> x = torch.cat([torch.randn(60, 4), torch.randn(20, 4) + 8.0])  # class 0 holds two groups
>>> y = torch.zeros(80, dtype=torch.long)
>>> ac = ActivationClustering(nn.Sequential(nn.Identity(), nn.Linear(4, 2))).fit(x, y)
>>> int(ac.flags_[60:].sum()), int(ac.flags_[:60].sum())
(20, 0)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bastion.defences.data._activations import extract_activations
from bastion.defences.data._split import (
    ClassSplit,
    make_split,
    separation,
    split_scores,
    top_components,
    two_means,
)
from bastion.defences.data._whiten import MAX_DIM, class_geometry, mixing
from bastion.defences.data.base import PoisonDetector
from bastion.errors import ConfigurationError

__all__ = ["ActivationClustering"]


class ActivationClustering(PoisonDetector):
    """Per-class 2-means on reduced activations (Chen et al. 2018).

    Parameters
    ----------
    model: the torch model trained on the suspect data (``nn.Module`` or ``TorchClassifier``).
    layer: name of the layer whose output is used (default: the penultimate activations).
    n_components: PCA dimensions before clustering.
    threshold: separation above which a split is called a backdoor.
    max_fraction: the flagged cluster may hold at most this fraction of its class.
    min_class_size: smaller classes are not analysed.
    whiten: whiten each class by the other classes' pooled within-class covariance.
    shrinkage: weight of the identity in that covariance estimate, in [0, 1].
    """

    name = "activation_clustering"

    def __init__(
        self,
        model: nn.Module | Any,
        *,
        layer: str | None = None,
        n_components: int = 10,
        threshold: float = 8.0,
        max_fraction: float = 0.67,
        min_class_size: int = 10,
        whiten: bool = True,
        shrinkage: float = 0.1,
        batch_size: int = 128,
    ) -> None:
        self._model = model
        self.layer = layer
        if not isinstance(n_components, int) or n_components < 1:
            raise ConfigurationError(f"n_components must be a positive int, got {n_components!r}")
        if not float(threshold) > 0:
            raise ConfigurationError(f"threshold must be a positive separation, got {threshold!r}")
        if not 0.0 < float(max_fraction) < 1.0:
            raise ConfigurationError(f"max_fraction must be in (0, 1), got {max_fraction!r}")
        if not 0.0 <= float(shrinkage) <= 1.0:
            raise ConfigurationError(f"shrinkage must be in [0, 1], got {shrinkage!r}")
        if not isinstance(min_class_size, int) or min_class_size < 4:
            raise ConfigurationError(f"min_class_size must be an int >= 4, got {min_class_size!r}")
        self.n_components = n_components
        self.threshold = float(threshold)
        self.max_fraction = float(max_fraction)
        self.min_class_size = min_class_size
        self.whiten = bool(whiten)
        self.shrinkage = float(shrinkage)
        self.batch_size = int(batch_size)

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        """The activations the detector analyses (``x`` may also be precomputed: see fit)."""
        return extract_activations(self._model, x, layer=self.layer, batch_size=self.batch_size)

    def _fit(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        acts = self.activations(x)
        classes = [c for c in sorted(set(y.tolist())) if int((y == c).sum()) >= self.min_class_size]
        geo = class_geometry(acts, y, classes, whiten=self.whiten, shrinkage=self.shrinkage)
        self.splits_: dict[int, ClassSplit] = {}
        self.projections_: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.centroids_: dict[int, torch.Tensor] = {}
        assign = torch.zeros(y.shape[0], dtype=torch.long)
        self.reduced_: dict[int, torch.Tensor] = {}
        dim = geo.others[classes[0]].shape[1] if classes else 0
        if dim <= MAX_DIM:  # eigenvectors of the whitened scatters, batched over classes
            k_all = min(self.n_components, dim)
            tops = geo.top_directions(classes, k_all)
        bases = geo.mixing_bases(classes)
        for c in classes:
            sel = y == c
            w = geo.coords(c)
            k = min(self.n_components, w.shape[1], w.shape[0] - 1)
            if dim <= MAX_DIM:
                basis = tops[c][:, :k]
            else:
                basis = top_components(w, k)  # w is centred: its class mean was subtracted
            z = w @ basis
            parts = two_means(z)
            self.splits_[c] = make_split(
                c,
                parts,
                abs(separation(z, parts)),
                mixing(w, parts, bases[c]),
                threshold=self.threshold,
                max_fraction=self.max_fraction,
            )
            self.projections_[c] = (geo.means[c], geo.lift(c, basis))
            self.centroids_[c] = torch.stack(
                [
                    z[parts == p].mean(0)
                    if bool((parts == p).any())
                    else torch.full_like(z[0], 1e30)
                    for p in (0, 1)
                ]
            )
            self.reduced_[c] = z[:, :2].float()
            assign[sel] = parts
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
        for c, (mean, basis) in self.projections_.items():
            sel = y == c
            if not bool(sel.any()):
                continue
            z = (acts[sel].double() - mean) @ basis
            assign[sel] = torch.cdist(z, self.centroids_[c]).argmin(1)
        return self._masked(split_scores(assign, y, self.splits_), y)
