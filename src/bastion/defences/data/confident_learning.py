"""Label-issue detection by confident learning, from out-of-sample probabilities.

Northcutt, Jiang & Chuang, "Confident Learning: Estimating Uncertainty in Dataset Labels",
JAIR 70, 2021. https://arxiv.org/abs/1911.00068 (written here from the paper.)

1. Out-of-sample predicted probabilities ``p`` by ``n_folds``-fold cross-validation (a small
   MLP per fold by default; ``train_fn(x, y, seed) -> nn.Module`` trains another model per
   fold, e.g. a tree ensemble of a tabular model's family with
   :class:`~bastion.models.trees.refit.TreeTrainer`; or pass your own probabilities with
   :meth:`ConfidentLearning.fit_probs`).
2. Per-class thresholds ``t_j`` = mean ``p_j`` over the samples labelled ``j``.
3. The confident joint ``C[i, j]`` counts samples labelled ``i`` whose most probable class among
   those with ``p_k >= t_k`` is ``j``; it is calibrated so each row sums to the count of label
   ``i``, then normalised to the joint ``Q`` of given and true labels.
4. Pruning: ``"prune_by_noise_rate"`` (default) flags, for each ``i != j``, the
   ``round(n Q[i, j])`` samples labelled ``i`` with the largest margin ``p_j - p_i``;
   ``"off_diagonal"`` flags the samples counted off the diagonal of ``C``; ``"both"`` their
   intersection.

Scores are the margin ``max_{j != y} p_j - p_y`` (higher is more suspicious);
``noise_rate_`` is the estimated share of wrong labels (the off-diagonal mass of ``Q``).

Example
-------
>>> import torch
>>> probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.2, 0.8], [0.1, 0.9], [0.95, 0.05]])
>>> y = torch.tensor([0, 0, 1, 1, 1])          # the last label is wrong
>>> ConfidentLearning().fit_probs(probs, y).flags_.tolist()
[False, False, False, False, True]
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from bastion.defences.data.base import PoisonDetector, check_xy
from bastion.errors import ConfigurationError, InputError
from bastion.models.zoo import small_mlp, train_classifier

__all__ = ["ConfidentLearning", "confident_joint"]

Factory = Callable[[tuple[int, ...], int], nn.Module]
_METHODS = ("prune_by_noise_rate", "off_diagonal", "both")


def _default_factory(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    n = 1
    for s in input_shape:
        n *= int(s)
    return small_mlp(n, num_classes)


def confident_joint(probs: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(C, assigned)``: the confident joint counts and each sample's confident class (-1 for
    samples above no threshold)."""
    k = probs.shape[1]
    thresholds = torch.ones(k, dtype=probs.dtype)
    for j in range(k):
        sel = y == j
        if bool(sel.any()):
            thresholds[j] = probs[sel, j].mean()
    above = probs >= thresholds - 1e-12
    masked = torch.where(above, probs, torch.full_like(probs, -1.0))
    assigned = masked.argmax(1)
    assigned[~above.any(1)] = -1
    c = torch.zeros(k, k, dtype=torch.float64)
    ok = assigned >= 0
    c.index_put_((y[ok], assigned[ok]), torch.ones(int(ok.sum()), dtype=torch.float64), True)
    return c, assigned


class ConfidentLearning(PoisonDetector):
    """Confident learning (Northcutt et al. 2021) for flipped or wrong labels.

    Parameters
    ----------
    n_folds: cross-validation folds for the out-of-sample probabilities.
    factory: ``(input_shape, num_classes) -> nn.Module`` for each fold (default a small MLP).
    epochs, lr: training of each fold's model (:func:`bastion.models.zoo.train_classifier`).
    method: "prune_by_noise_rate", "off_diagonal" or "both".
    num_classes: default ``max(y) + 1``.
    train_fn: ``(x, y, seed) -> nn.Module`` training each fold's model (then ``factory``,
        ``epochs`` and ``lr`` are unused).
    """

    name = "confident_learning"

    def __init__(
        self,
        *,
        n_folds: int = 5,
        factory: Factory | None = None,
        epochs: int = 8,
        lr: float = 1e-2,
        method: str = "prune_by_noise_rate",
        num_classes: int | None = None,
        seed: int = 0,
        train_fn: Callable[[torch.Tensor, torch.Tensor, int], nn.Module] | None = None,
    ) -> None:
        if train_fn is not None and not callable(train_fn):
            raise ConfigurationError("train_fn must be a callable train_fn(x, y, seed)")
        if not isinstance(n_folds, int) or isinstance(n_folds, bool) or n_folds < 2:
            raise ConfigurationError(f"n_folds must be an int >= 2, got {n_folds!r}")
        if method not in _METHODS:
            raise ConfigurationError(f"method must be one of {_METHODS}, got {method!r}")
        if not isinstance(epochs, int) or epochs < 1:
            raise ConfigurationError(f"epochs must be a positive int, got {epochs!r}")
        if not float(lr) > 0:
            raise ConfigurationError(f"lr must be positive, got {lr!r}")
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 2):
            raise ConfigurationError(f"num_classes must be an int >= 2, got {num_classes!r}")
        self.n_folds = n_folds
        self._factory = factory or _default_factory
        self.epochs = epochs
        self.lr = float(lr)
        self.method = method
        self.num_classes = num_classes
        self.seed = int(seed)
        self._train_fn = train_fn
        self._models: list[nn.Module] = []

    def fit_probs(self, probs: torch.Tensor, y: torch.Tensor) -> ConfidentLearning:
        """Run confident learning on given out-of-sample probabilities ``(n, k)``."""
        if not isinstance(probs, torch.Tensor) or probs.dim() != 2:
            raise InputError("probs must be an (n, num_classes) tensor")
        check_xy(probs, y)
        if float(probs.min()) < 0 or not torch.allclose(
            probs.sum(1), torch.ones(probs.shape[0], dtype=probs.dtype), atol=1e-3
        ):
            raise InputError("probs must be probabilities: non-negative rows summing to 1")
        y = y.long()
        if int(y.max()) >= probs.shape[1] or int(y.min()) < 0:
            raise InputError(f"labels must lie in [0, {probs.shape[1] - 1}]")
        self.flags_ = self._analyse(probs.double(), y)
        return self

    def _analyse(self, probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n, k = probs.shape
        self.probs_ = probs.float()
        self.scores_ = _margin(probs, y).float()
        c, assigned = confident_joint(probs, y)
        counts = torch.bincount(y, minlength=k).double()
        rows = c.sum(1, keepdim=True)
        calibrated = torch.where(rows > 0, c / rows.clamp_min(1) * counts.unsqueeze(1), c)
        joint = calibrated / calibrated.sum().clamp_min(1e-12)
        self.confident_joint_ = c
        self.joint_ = joint
        self.noise_rate_ = float(1.0 - joint.diagonal().sum())
        off = (assigned >= 0) & (assigned != y)
        pbnr = torch.zeros(n, dtype=torch.bool)
        for i in range(k):
            idx = torch.nonzero(y == i).flatten()
            for j in range(k):
                if i == j or idx.numel() == 0:
                    continue
                m = min(round(n * float(joint[i, j])), idx.numel())
                if m <= 0:
                    continue
                margin = probs[idx, j] - probs[idx, i]
                pbnr[idx[margin.topk(m).indices]] = True
        flags = {"prune_by_noise_rate": pbnr, "off_diagonal": off, "both": pbnr & off}[self.method]
        self.threshold_ = float(self.scores_[flags].min()) - 1e-6 if bool(flags.any()) else 1.0
        return flags

    def _fit(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        k = self.num_classes or int(y.max()) + 1
        n = y.shape[0]
        if n < 2 * self.n_folds:
            raise InputError(f"{n} samples are too few for {self.n_folds}-fold cross-validation")
        gen = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(n, generator=gen)
        probs = torch.zeros(n, k, dtype=torch.float64)
        self._models = []
        for f in range(self.n_folds):
            test = order[f :: self.n_folds]
            train = torch.ones(n, dtype=torch.bool)
            train[test] = False
            if self._train_fn is not None:
                model = self._train_fn(x[train], y[train], self.seed + f)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(self.seed + f)
                    model = self._factory(tuple(x.shape[1:]), k)
                train_classifier(
                    model, x[train], y[train], epochs=self.epochs, lr=self.lr, seed=self.seed + f
                )
            self._models.append(model)
            probs[test] = _softmax(model, x[test])
        return self._analyse(probs, y)

    def _score(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not self._models:
            raise ConfigurationError(
                "score() needs the fold models: fit(x, y) instead of fit_probs(probs, y)"
            )
        probs = torch.stack([_softmax(m, x) for m in self._models]).mean(0)
        return _margin(probs, y).float()


@torch.no_grad()
def _softmax(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    first = next(model.parameters(), None)  # a tree module has none: it runs on the CPU
    device = first.device if first is not None else torch.device("cpu")
    out = [
        torch.softmax(model(x[i : i + 1024].to(device)), 1).double().cpu()
        for i in range(0, x.shape[0], 1024)
    ]
    return torch.cat(out)


def _margin(probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    given = probs.gather(1, y.unsqueeze(1)).squeeze(1)
    others = probs.clone()
    others.scatter_(1, y.unsqueeze(1), -1.0)
    return others.max(1).values - given
