"""Auto-PGD: parameter-free projected gradient ascent with an adaptive step size.

Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020. https://arxiv.org/abs/2003.01690

APGD replaces PGD's fixed step size by a budget-aware schedule: the step starts at ``2 * eps``
and is halved, per sample, at checkpoints placed at 22%, 41%, 57%, ... of the iterations
whenever the loss increased in fewer than a fraction ``rho`` of the iterations since the last
checkpoint, or stalled; a halved sample restarts from its best point. Steps carry momentum 0.75.
Each iteration costs one forward and one backward pass on the samples not yet fooled.

- :class:`APGD` (``loss="ce"`` is "apgd-ce", ``loss="dlr"`` is "apgd-dlr", the Difference of
  Logits Ratio loss that is invariant to shifts and rescaling of the logits). ``targeted=True``
  maximises targeted CE (``-CE(z, target)``) or the targeted DLR loss.
- :class:`APGDT` ("apgd-t"): untargeted goal reached through targeted-DLR runs against each of the
  ``n_target_classes`` most likely other classes in turn, keeping the first success per sample.

Norms: L∞ and L2. Defaults: ``steps=100``, ``restarts=1``, ``rho=0.75``, ``n_target_classes=9``.
Each sample returns its first successful iterate, else its highest-loss iterate.
Shapes: ``x`` is ``(n, *input_shape)`` in the model's bounds, ``y`` and ``target`` are ``(n,)``.

Example
-------
>>> import torch
>>> from torch import nn
>>> from bastion.models import TorchClassifier
>>> from bastion.attacks.evasion.apgd import APGD, APGDT
>>> _ = torch.manual_seed(0)
>>> clf = TorchClassifier(nn.Linear(4, 5), input_shape=(4,), num_classes=5)
>>> x = torch.rand(8, 4)
>>> res = APGD(norm="linf", eps=0.3, steps=20, loss="dlr").generate(clf, x)
>>> res.attack, bool(((res.x_adv - x).abs() <= 0.3 + 1e-6).all())
('apgd-dlr', True)
>>> APGDT(norm="l2", eps=0.5, steps=10, n_target_classes=2).generate(clf, x).attack
'apgd-t'
"""

from __future__ import annotations

from typing import Any

import torch

from bastion.attacks.evasion._apgd_core import LossFn, apgd_run
from bastion.attacks.evasion._common import ce_loss, dlr_loss, dlr_targeted_loss
from bastion.attacks.evasion.base import EvasionAttack, check_positive
from bastion.errors import ConfigurationError
from bastion.models.base import Classifier
from bastion.threat import Norm

__all__ = ["APGD", "APGDCE", "APGDDLR", "APGDT"]

_LOSSES = ("ce", "dlr")


def _check_rho(rho: object) -> float:
    if isinstance(rho, bool) or not isinstance(rho, int | float) or not 0 < rho < 1:
        raise ConfigurationError(f"rho must be a number in (0, 1), got {rho!r}")
    return float(rho)


def _ce(z: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return ce_loss(z, y)


def _ce_targeted(z: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return -ce_loss(z, t)


def _dlr(z: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return dlr_loss(z, y)


def _dlr_targeted(z: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return dlr_targeted_loss(z, y, t)


def _in_loop(attack: EvasionAttack) -> dict[str, Any]:
    """The run's tabular rules for :func:`apgd_run`, projected in the loop (none: no schema)."""
    rules = attack._rules()
    if rules is None:
        return {}

    def relax(x_adv: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return attack._constrain(x_adv, x0, relaxed=True)

    return {"rules": rules, "relax": relax}


class APGD(EvasionAttack):
    """Auto-PGD with cross-entropy or DLR loss, L∞ or L2 (see the module docstring).

    Parameters
    ----------
    norm: "linf" or "l2".
    eps: radius of the perturbation ball.
    steps: iterations per restart (each one forward and one backward pass).
    restarts: runs from fresh random starts; later runs attack only the samples not yet fooled,
        and a sample never fooled keeps its highest-loss iterate over all runs.
    loss: "ce" (name "apgd-ce") or "dlr" (name "apgd-dlr").
    rho: fraction of loss-increasing iterations below which the step size is halved.
    targeted: reach ``target`` instead of leaving ``y`` (targeted CE or targeted DLR loss).
    """

    name = "apgd"

    def __init__(
        self,
        *,
        norm: str | Norm = "linf",
        eps: float,
        steps: int = 100,
        restarts: int = 1,
        loss: str = "ce",
        rho: float = 0.75,
        targeted: bool = False,
        batch_size: int = 256,
        seed: int | None = 0,
    ) -> None:
        super().__init__(norm=norm, eps=eps, targeted=targeted, batch_size=batch_size, seed=seed)
        check_positive(steps, "steps", integer=True)
        check_positive(restarts, "restarts", integer=True)
        if loss not in _LOSSES:
            raise ConfigurationError(f"loss must be 'ce' or 'dlr', got {loss!r}")
        self.steps = int(steps)
        self.restarts = int(restarts)
        self.loss = str(loss)
        self.rho = _check_rho(rho)
        # the reported name depends on the loss ("apgd-ce" / "apgd-dlr")
        setattr(self, "name", f"apgd-{self.loss}")  # noqa: B010 - `name` is a ClassVar

    def get_params(self) -> dict[str, Any]:
        params = super().get_params()
        params.pop("name", None)
        return params

    def _loss_fn(self) -> LossFn:
        if self.loss == "ce":
            return _ce_targeted if self.targeted else _ce
        return _dlr_targeted if self.targeted else _dlr

    def _run(
        self,
        classifier: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        generator: torch.Generator,
    ) -> torch.Tensor:
        goal = y if target is None else target
        best = x.clone()
        best_loss = torch.full((x.shape[0],), -float("inf"), device=x.device, dtype=x.dtype)
        done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        loss = self._loss_fn()
        for _ in range(self.restarts):
            todo = (~done).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            out = apgd_run(
                classifier,
                x[todo],
                y[todo],
                goal[todo],
                norm=self.norm,
                eps=float(self.eps or 0.0),
                steps=self.steps,
                rho=self.rho,
                loss=loss,
                targeted_goal=target is not None,
                generator=generator,
                **_in_loop(self),
            )
            take = out.fooled | (out.loss > best_loss[todo])
            best[todo[take]] = out.x[take]
            best_loss[todo[take]] = out.loss[take]
            done[todo[out.fooled]] = True
        return best


class APGDCE(APGD):
    """:class:`APGD` with the cross-entropy loss ("apgd-ce")."""

    def __init__(
        self,
        *,
        norm: str | Norm = "linf",
        eps: float,
        steps: int = 100,
        restarts: int = 1,
        rho: float = 0.75,
        targeted: bool = False,
        batch_size: int = 256,
        seed: int | None = 0,
    ) -> None:
        super().__init__(
            norm=norm, eps=eps, steps=steps, restarts=restarts, loss="ce", rho=rho,
            targeted=targeted, batch_size=batch_size, seed=seed,
        )


class APGDDLR(APGD):
    """:class:`APGD` with the DLR loss ("apgd-dlr")."""

    def __init__(
        self,
        *,
        norm: str | Norm = "linf",
        eps: float,
        steps: int = 100,
        restarts: int = 1,
        rho: float = 0.75,
        targeted: bool = False,
        batch_size: int = 256,
        seed: int | None = 0,
    ) -> None:
        super().__init__(
            norm=norm, eps=eps, steps=steps, restarts=restarts, loss="dlr", rho=rho,
            targeted=targeted, batch_size=batch_size, seed=seed,
        )


class APGDT(EvasionAttack):
    """Targeted-DLR APGD against the most likely other classes, for an untargeted goal.

    For each sample, the other classes are ranked by the clean logits (highest first, the true
    class excluded); APGD with the targeted DLR loss runs against the first of them, then the
    second on the samples still not fooled, and so on for ``n_target_classes`` classes (at most
    ``num_classes - 1``). Success means the prediction differs from ``y``; the first success is
    kept, and a sample never fooled keeps its highest-loss iterate.

    Parameters
    ----------
    norm: "linf" or "l2".
    eps: radius of the perturbation ball.
    steps: iterations per target class.
    n_target_classes: how many target classes to try per sample.
    rho: fraction of loss-increasing iterations below which the step size is halved.
    """

    name = "apgd-t"
    supports_targeted = False

    def __init__(
        self,
        *,
        norm: str | Norm = "linf",
        eps: float,
        steps: int = 100,
        n_target_classes: int = 9,
        rho: float = 0.75,
        batch_size: int = 256,
        seed: int | None = 0,
    ) -> None:
        super().__init__(norm=norm, eps=eps, batch_size=batch_size, seed=seed)
        check_positive(steps, "steps", integer=True)
        check_positive(n_target_classes, "n_target_classes", integer=True)
        self.steps = int(steps)
        self.n_target_classes = int(n_target_classes)
        self.rho = _check_rho(rho)

    def _run(
        self,
        classifier: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        generator: torch.Generator,
    ) -> torch.Tensor:
        with torch.no_grad():
            ranking = classifier.logits(x).clone()
            ranking.scatter_(1, y[:, None], float("-inf"))
            order = ranking.argsort(dim=1, descending=True)
        n_targets = min(self.n_target_classes, classifier.num_classes - 1)
        best = x.clone()
        best_loss = torch.full((x.shape[0],), -float("inf"), device=x.device, dtype=x.dtype)
        done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for rank in range(n_targets):
            todo = (~done).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            out = apgd_run(
                classifier,
                x[todo],
                y[todo],
                order[todo, rank],
                norm=self.norm,
                eps=float(self.eps or 0.0),
                steps=self.steps,
                rho=self.rho,
                loss=_dlr_targeted,
                targeted_goal=False,
                generator=generator,
                **_in_loop(self),
            )
            take = out.fooled | (out.loss > best_loss[todo])
            best[todo[take]] = out.x[take]
            best_loss[todo[take]] = out.loss[take]
            done[todo[out.fooled]] = True
        return best
