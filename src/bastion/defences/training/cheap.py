"""Cheaper adversarial training: "fast" (FGSM with a random start) and "free" (minibatch replay).

- **Fast AT** — Wong, Rice & Kolter, "Fast is better than free: Revisiting adversarial
  training", ICLR 2020, https://arxiv.org/abs/2001.03994. The inner attack is one FGSM step of
  ``alpha = 1.25 · eps`` (the paper's) from a uniform random start in the ball, projected back
  onto the ball and the bounds: two forward/backward passes per batch instead of PGD-k's
  ``k + 1``. The method is known to **overfit catastrophically**: within a few batches the model
  learns to defeat FGSM while its PGD accuracy collapses to about zero. Wong et al. guard against
  it by checking PGD accuracy on a training mini-batch and stopping early; here the
  :class:`OverfitGuard` does it during training: every ``every`` steps it measures, on a fixed
  probe of training samples, PGD accuracy (``steps`` steps of ``2.5 · eps / steps``, random
  start) and accuracy under the training attack, both at the eps being trained. When the
  training attack's accuracy is ``gap`` or more above PGD accuracy and PGD accuracy is at most
  ``ratio`` of it or has fallen by ``drop`` below its best at that eps (the signature of
  catastrophic overfitting: the single step no longer finds the adversarial examples that PGD
  finds), the weights and optimiser state are rolled back to the last good check, ``alpha`` is
  lowered by ``alpha_decay`` and the random start is switched on; from the second firing on,
  GradAlign is switched on as well, its weight doubling at each later firing (Andriushchenko &
  Flammarion, "Understanding and Improving Fast Adversarial Training", NeurIPS 2020,
  https://arxiv.org/abs/2007.02617: the penalty
  ``λ · (1 − cos(∇ₓℓ(x), ∇ₓℓ(x + η)))`` with ``η`` uniform in the ball, which keeps the
  loss locally linear so that one step stays a good attack). ``grad_align`` turns it on from the
  start. Every check and firing is in the report.
- **Free AT** — Shafahi, Najibi, Ghiasi, Xu, Dickerson, Studer, Davis, Taylor & Goldstein,
  "Adversarial Training for Free!", NeurIPS 2019, https://arxiv.org/abs/1904.12843. Each
  mini-batch is replayed ``replays`` (``m``) times; one backward pass gives both the weights'
  gradient (a step of the optimiser) and the input gradient, which moves the perturbation by
  ``eps`` along its sign (L∞; the normalised gradient for L2), projected onto the ball. The
  perturbation is carried across the replays and on to the next mini-batch. ``epochs`` is the
  budget in natural-training epochs: the data is passed over ``ceil(epochs / m)`` times, so the
  cost is about that of natural training for ``epochs``.

Both are :class:`~bastion.defences.training.AdversarialTrainer` subclasses: same loop
(optimiser, schedule, eps warm-up, validation, early stopping, checkpoints, channels-last), same
:class:`~bastion.defences.training.AdversarialTrainingReport` (``method`` is ``"fast"`` or
``"free"``) with the method's ``settings`` and, for fast AT, the ``guard`` record.

Example
-------
>>> import torch
>>> from torch import nn
>>> x = torch.rand(64, 4, generator=torch.Generator().manual_seed(0))
>>> y = (x[:, 0] > 0.5).long()
>>> report = FreeAdversarialTrainer(eps=0.05, replays=2, epochs=4, batch_size=32, lr=0.05).fit(
...     nn.Linear(4, 2), (x, y))
>>> report.method, report.epochs_run, report.settings["replays"]
('free', 2, 2)
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from bastion.attacks.evasion._common import (
    ascent_step,
    maximise_loss,
    project,
    random_in_ball,
)
from bastion.defences.training.adversarial import (
    METHODS,
    AdversarialTrainer,
    AdversarialTrainingReport,
    _check_int,
    _copy_state,
    _positive,
)
from bastion.errors import ConfigurationError

__all__ = [
    "ALL_METHODS",
    "FastAdversarialTrainer",
    "FreeAdversarialTrainer",
    "GuardCheck",
    "GuardEvent",
    "OverfitGuard",
    "describe_method",
    "make_adversarial_trainer",
]

log = logging.getLogger(__name__)

ALL_METHODS = (*METHODS, "fast", "free")
GRAD_ALIGN_ON_FIRE = 0.2  # GradAlign's λ at the guard's second firing (the paper's CIFAR-10 λ)
GRAD_ALIGN_MAX = 2.0


@dataclass(frozen=True)
class GuardCheck:
    """One probe: the outer step it followed, PGD and training-attack accuracy, and alpha."""

    step: int
    epoch: int
    eps: float
    pgd_accuracy: float
    fgsm_accuracy: float
    alpha: float


@dataclass(frozen=True)
class GuardEvent:
    """A firing of the guard: what was seen, what was restored and what changed."""

    step: int
    epoch: int
    pgd_accuracy: float
    best_pgd_accuracy: float
    fgsm_accuracy: float
    rolled_back_to_step: int
    alpha_before: float
    alpha_after: float
    grad_align: float


@dataclass(frozen=True)
class OverfitGuard:
    """Settings of the catastrophic-overfitting guard of fast AT (see the module docstring).

    every: outer steps between probes (``None``: once per epoch, as Wong et al. check).
    samples: training samples in the probe. steps: PGD steps of the probe's attack.
    gap: how far the training attack's accuracy must be above PGD accuracy for a collapse ...
    ratio: ... with PGD accuracy at most this share of the training attack's, or
    drop: ... PGD accuracy fallen this far below its best at the same eps.
    alpha_decay: ``alpha`` is multiplied by this at each firing (floored at ``0.5 · eps``).

    A probe costs ``steps + 2`` forward/backward passes over ``samples`` examples, plus a copy of
    the weights and optimiser state when it passes: once per epoch of 2,000 images at batch 64,
    about 15% of a fast-AT epoch.
    """

    every: int | None = None
    samples: int = 128
    steps: int = 5
    gap: float = 0.15
    ratio: float = 0.5
    drop: float = 0.2
    alpha_decay: float = 0.8

    def __post_init__(self) -> None:
        if self.every is not None:
            _check_int(self.every, "guard every", 1)
        _check_int(self.samples, "guard samples", 1)
        _check_int(self.steps, "guard steps", 1)
        for name in ("gap", "ratio", "drop"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and 0.0 < v < 1.0):
                raise ConfigurationError(f"guard {name} must lie strictly in (0, 1), got {v!r}")
        if not (isinstance(self.alpha_decay, int | float) and 0.0 < self.alpha_decay <= 1.0):
            raise ConfigurationError(
                f"guard alpha_decay must lie in (0, 1], got {self.alpha_decay!r}"
            )


@dataclass(frozen=True)
class CheapTrainingReport(AdversarialTrainingReport):
    """An :class:`AdversarialTrainingReport` with the method's ``settings`` and, for fast AT,
    the ``guard``: its settings, every check, every firing, and ``fired``."""

    settings: dict[str, Any] = field(default_factory=dict)
    guard: dict[str, Any] | None = None

    def summary(self) -> str:
        """One line on what the guard saw and did (empty without a guard)."""
        return "" if self.guard is None else str(self.guard["summary"])


class _CheapTrainer(AdversarialTrainer):
    """What fast and free AT share: the method name, the report with settings."""

    _name = ""

    def __init__(self, *, inner_step: float | None, **kw: Any) -> None:
        for banned in ("method", "steps", "step_size", "beta"):
            if banned in kw:
                raise ConfigurationError(f"{self._name} adversarial training takes no {banned!r}")
        super().__init__(method="pgd", steps=1, step_size=inner_step, **kw)
        self.method = self._name

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(eps={self.eps}, norm={self.norm.value!r}, {self._own()}, "
            f"optimizer={self.optimizer!r}, lr={self.lr:g}, schedule={self.schedule!r}, "
            f"batch_size={self.batch_size}, seed={self.seed})"
        )

    def _own(self) -> str:
        """The method's own settings and the epochs, for the repr."""
        return f"epochs={self.epochs}"

    def settings(self) -> dict[str, Any]:
        """The method's own settings, as the report names them."""
        return {}

    def fit(
        self,
        module: nn.Module,
        train: DataLoader[Any] | tuple[torch.Tensor, torch.Tensor],
        *,
        val: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> CheapTrainingReport:
        """Train ``module`` in place (see :meth:`AdversarialTrainer.fit`); return the report."""
        self._start(train)
        base = super().fit(module, train, val=val)
        report = CheapTrainingReport(
            **{f.name: getattr(base, f.name) for f in fields(AdversarialTrainingReport)},
            settings=self.settings(),
            guard=self._guard_record(),
        )
        self.report_ = report
        return report

    def _start(self, train: DataLoader[Any] | tuple[torch.Tensor, torch.Tensor]) -> None:
        """Reset per-fit state before the loop starts."""

    def _guard_record(self) -> dict[str, Any] | None:
        return None


class FastAdversarialTrainer(_CheapTrainer):
    """Fast adversarial training (FGSM from a random start) with a catastrophic-overfitting
    guard. Parameters as :class:`AdversarialTrainer` (without ``method``, ``steps``,
    ``step_size``, ``beta``), and:

    alpha: the FGSM step (default ``1.25 · eps``).
    random_start: start from a uniform point of the ball (``False``: plain FGSM from ``x``).
    grad_align: GradAlign's weight λ from the start (0: off; the guard may turn it on).
    guard: an :class:`OverfitGuard` (default settings), or ``None`` for no guard.
    """

    _name = "fast"

    def __init__(
        self,
        *,
        eps: float,
        alpha: float | None = None,
        random_start: bool = True,
        grad_align: float = 0.0,
        guard: OverfitGuard | None = OverfitGuard(),
        **kw: Any,
    ) -> None:
        if alpha is not None and not _positive(alpha):
            raise ConfigurationError(f"alpha must be a positive number, got {alpha!r}")
        if not (
            isinstance(grad_align, int | float) and math.isfinite(grad_align) and grad_align >= 0
        ):
            raise ConfigurationError(
                f"grad_align must be a non-negative number, got {grad_align!r}"
            )
        if guard is not None and not isinstance(guard, OverfitGuard):
            raise ConfigurationError("guard must be an OverfitGuard or None")
        super().__init__(eps=eps, inner_step=alpha or 1.25 * float(eps), **kw)
        self.alpha = self.step_size
        self.random_start = bool(random_start)
        self.grad_align = float(grad_align)
        self.guard = guard
        self._reset_guard()

    def _own(self) -> str:
        return (
            f"alpha={self.alpha:g}, random_start={self.random_start}, "
            f"grad_align={self.grad_align:g}, guard={self.guard}, epochs={self.epochs}"
        )

    def settings(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "alpha_over_eps": self.alpha / self.eps,
            "random_start": self.random_start,
            "grad_align": self.grad_align,
            "alpha_final": self.step_size,
            "random_start_final": self._rs,
            "grad_align_final": self._lambda,
        }

    # ---------------------------------------------------------------- the training step

    def _reset_guard(self) -> None:
        self.step_size = self.alpha
        self._lambda = self.grad_align
        self._rs = self.random_start
        self._checks: list[GuardCheck] = []
        self._events: list[GuardEvent] = []
        self._good: tuple[int, dict[str, torch.Tensor], dict[str, Any]] | None = None
        self._best_pgd = (-1.0, -1.0)  # (eps, accuracy): the best PGD accuracy at this eps
        self._probe: tuple[torch.Tensor, torch.Tensor] | None = None
        self._every = 1
        self._step = 0
        self._per_epoch = 1
        self._eps_now = self.eps

    def _start(self, train: DataLoader[Any] | tuple[torch.Tensor, torch.Tensor]) -> None:
        self._reset_guard()
        if isinstance(train, DataLoader):
            self._per_epoch = max(1, len(train))
        elif isinstance(train, tuple | list) and len(train) == 2:
            self._per_epoch = max(1, math.ceil(len(train[0]) / self.batch_size))
        if self.guard is None:
            return
        self._every = self.guard.every or self._per_epoch
        self._probe = _probe(train, self.guard.samples, self.seed)

    def _train_step(
        self,
        module: nn.Module,
        opt: torch.optim.Optimizer,
        x: torch.Tensor,
        y: torch.Tensor,
        eps: float,
        gen: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self._eps_now = eps
        if self._good is None and self._probe is not None:
            self._check(module, opt)  # the starting point is the first good state
        module.eval()
        x_adv = self._fgsm(module, x, y, eps, gen)
        if self._lambda > 0:
            result = self._aligned_step(module, opt, x, x_adv, y, eps, gen)
        else:
            result = self._outer_step(module, opt, x_adv, y)
        self._step += 1
        if self._probe is not None and self._step % self._every == 0:
            self._check(module, opt)
        return result

    def _fgsm(
        self,
        module: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        eps: float,
        gen: torch.Generator,
    ) -> torch.Tensor:
        """The training attack: one step of ``alpha`` (scaled with eps during warm-up)."""
        if eps <= 0:
            return x
        start = x + random_in_ball(x, self.norm, eps, gen) if self._rs else x

        def ce(xa: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(module(xa), y, reduction="sum")

        return self._ascend(ce, x, start, eps, 1)

    def _aligned_step(
        self,
        module: nn.Module,
        opt: torch.optim.Optimizer,
        x: torch.Tensor,
        x_adv: torch.Tensor,
        y: torch.Tensor,
        eps: float,
        gen: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The outer step with GradAlign's penalty (input gradients at ``x`` and at a random
        point of the ball, differentiated through: a double backward)."""
        module.train()
        logits = module(x_adv)
        loss = F.cross_entropy(logits, y)
        if eps > 0:
            grads = []
            for noisy in (False, True):
                xr = x + random_in_ball(x, self.norm, eps, gen) if noisy else x.clone()
                xr = xr.clamp(*self.bounds)
                xr.requires_grad_(True)
                (g,) = torch.autograd.grad(F.cross_entropy(module(xr), y), xr, create_graph=True)
                grads.append(g.flatten(1))
            cos = F.cosine_similarity(grads[0], grads[1], dim=1, eps=1e-12)
            loss = loss + self._lambda * (1.0 - cos).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach(), (logits.detach().argmax(1) == y).sum()

    # ---------------------------------------------------------------- the guard

    def _check(self, module: nn.Module, opt: torch.optim.Optimizer) -> None:
        if self._probe is None or self.guard is None:
            return
        xp, yp = self._probe
        device = next(module.parameters()).device
        xp, yp = self._format(xp.to(device)), yp.to(device)
        was_training = module.training
        module.eval()
        gen = torch.Generator(device=device).manual_seed(self.seed + 11)
        eps = self._eps_now
        try:
            fgsm = _accuracy(module, self._fgsm(module, xp, yp, eps, gen), yp)
            pgd = _accuracy(module, self._pgd(module, xp, yp, eps, gen), yp)
        finally:
            module.train(was_training)
        epoch = max(0, self._step - 1) // self._per_epoch + 1
        self._checks.append(GuardCheck(self._step, epoch, eps, pgd, fgsm, self.step_size))
        log.debug("guard step %d: PGD %.3f, FGSM %.3f", self._step, pgd, fgsm)
        g = self.guard
        good = self._good
        best = self._best_pgd[1] if self._best_pgd[0] == eps else pgd
        masked = fgsm - pgd >= g.gap and (pgd <= g.ratio * fgsm or best - pgd >= g.drop)
        if good is None or not masked:
            self._best_pgd = (eps, max(best, pgd))
            self._good = (self._step, _copy_state(module), copy.deepcopy(opt.state_dict()))
            return
        good_step, weights, opt_state = good
        module.load_state_dict(weights)
        lrs = [group["lr"] for group in opt.param_groups]
        opt.load_state_dict(copy.deepcopy(opt_state))
        for group, lr in zip(opt.param_groups, lrs, strict=True):
            group["lr"] = lr  # the schedule goes on where it is
        before = self.step_size
        self.step_size = min(before, max(0.5 * self.eps, before * g.alpha_decay))
        self._rs = True
        if self._events:  # a second firing: GradAlign on, stronger at each later one
            self._lambda = min(GRAD_ALIGN_MAX, 2 * self._lambda or GRAD_ALIGN_ON_FIRE)
        event = GuardEvent(
            step=self._step,
            epoch=epoch,
            pgd_accuracy=pgd,
            best_pgd_accuracy=best,
            fgsm_accuracy=fgsm,
            rolled_back_to_step=good_step,
            alpha_before=before,
            alpha_after=self.step_size,
            grad_align=self._lambda,
        )
        self._events.append(event)
        log.warning("catastrophic overfitting %s", _event_text(event))

    def _pgd(
        self,
        module: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        eps: float,
        gen: torch.Generator,
    ) -> torch.Tensor:
        """The probe's attack: PGD of the guard's steps of ``2.5 · eps / steps``, random start."""
        if eps <= 0 or self.guard is None:
            return x
        steps = self.guard.steps

        def ce(xa: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(module(xa), y, reduction="sum")

        start = x + random_in_ball(x, self.norm, eps, gen)
        return maximise_loss(
            ce,
            x,
            start,
            norm=self.norm,
            eps=eps,
            step_size=2.5 * eps / steps,
            steps=steps,
            bounds=self.bounds,
        )

    def _guard_record(self) -> dict[str, Any] | None:
        if self.guard is None:
            return None
        return {
            "settings": asdict(self.guard) | {"every": self._every},
            "fired": bool(self._events),
            "checks": [asdict(c) for c in self._checks],
            "events": [asdict(e) for e in self._events],
            "summary": _guard_summary(len(self._checks), self._events),
        }


class FreeAdversarialTrainer(_CheapTrainer):
    """Free adversarial training (minibatch replay). Parameters as
    :class:`AdversarialTrainer` (without ``method``, ``steps``, ``step_size``, ``beta``), and:

    replays: ``m``, how many times each mini-batch is replayed (default 4).
    epochs: the budget in natural-training epochs; ``ceil(epochs / replays)`` passes are run
        (``warmup_eps_epochs`` counts passes).
    """

    _name = "free"

    def __init__(self, *, eps: float, replays: int = 4, epochs: int = 10, **kw: Any) -> None:
        _check_int(replays, "replays", 1)
        _check_int(epochs, "epochs", 1)
        self.replays = int(replays)
        self.budget_epochs = int(epochs)
        super().__init__(
            eps=eps,
            inner_step=float(eps) if _positive(eps) else None,
            epochs=math.ceil(epochs / replays),
            **kw,
        )
        self._delta: torch.Tensor | None = None

    def _own(self) -> str:
        return f"replays={self.replays}, epochs={self.budget_epochs} ({self.epochs} passes)"

    def settings(self) -> dict[str, Any]:
        return {
            "replays": self.replays,
            "budget_epochs": self.budget_epochs,
            "passes": self.epochs,
            "step": "eps",
        }

    def _start(self, train: DataLoader[Any] | tuple[torch.Tensor, torch.Tensor]) -> None:
        self._delta = None

    def _train_step(
        self,
        module: nn.Module,
        opt: torch.optim.Optimizer,
        x: torch.Tensor,
        y: torch.Tensor,
        eps: float,
        gen: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        delta = self._carried(x, eps)
        module.train()
        loss = right = torch.zeros(())
        for _ in range(self.replays):
            x_adv = (x + delta).clamp_(*self.bounds).requires_grad_(True)
            logits = module(x_adv)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            right = (logits.detach().argmax(1) == y).sum()
            if eps > 0 and x_adv.grad is not None:
                with torch.no_grad():
                    moved = ascent_step(
                        x_adv.detach(),
                        x_adv.grad,
                        x,
                        norm=self.norm,
                        eps=eps,
                        step_size=eps,
                        bounds=self.bounds,
                    )
                    delta = moved - x
        self._store(delta)
        return loss.detach(), right

    def _carried(self, x: torch.Tensor, eps: float) -> torch.Tensor:
        """The perturbation carried over from the last mini-batch, fitted to this one."""
        d = self._delta
        if d is None or d.shape[1:] != x.shape[1:] or d.device != x.device:
            return torch.zeros_like(x)
        n = x.shape[0]
        if d.shape[0] < n:
            d = torch.cat([d, d.new_zeros((n - d.shape[0], *d.shape[1:]))])
        d = d[:n].to(dtype=x.dtype)
        d = project(d, self.norm, eps) if eps > 0 else torch.zeros_like(x)
        return self._format(d)

    def _store(self, delta: torch.Tensor) -> None:
        d = delta.detach()
        if (
            self._delta is not None
            and self._delta.shape[0] > d.shape[0]
            and self._delta.shape[1:] == d.shape[1:]
        ):
            self._delta = torch.cat([d, self._delta[d.shape[0] :]])
        else:
            self._delta = d


def make_adversarial_trainer(
    method: str,
    *,
    steps: int = 10,
    beta: float = 6.0,
    alpha: float | None = None,
    replays: int = 4,
    guard: bool = True,
    **kw: Any,
) -> AdversarialTrainer:
    """The trainer for ``method`` (``"pgd"``, ``"trades"``, ``"fast"`` or ``"free"``), given the
    settings every method shares (``kw``) and each method's own, ignoring those of the others."""
    if method == "fast":
        return FastAdversarialTrainer(alpha=alpha, guard=OverfitGuard() if guard else None, **kw)
    if method == "free":
        return FreeAdversarialTrainer(replays=replays, **kw)
    if method not in METHODS:
        raise ConfigurationError(f"method must be one of {ALL_METHODS}, got {method!r}")
    return AdversarialTrainer(method=method, steps=steps, beta=beta, **kw)


METHOD_TITLES = {
    "pgd": "PGD-AT (Madry et al., ICLR 2018)",
    "trades": "TRADES (Zhang et al., ICML 2019)",
    "fast": "fast AT: FGSM from a random start (Wong, Rice & Kolter, ICLR 2020)",
    "free": "free AT: minibatch replay (Shafahi et al., NeurIPS 2019)",
}


def describe_method(trainer: AdversarialTrainer) -> dict[str, Any]:
    """The method ``trainer`` runs, its title and settings (the inner attack's, then the
    loop's), for reports: ``{"name", "title", "settings"}``."""
    if isinstance(trainer, _CheapTrainer):
        own = trainer.settings()
    else:
        own = {"steps": trainer.steps, "step_size": trainer.step_size}
        if trainer.method == "trades":
            own["beta"] = trainer.beta
    loop = {
        key: getattr(trainer, key)
        for key in ("epochs", "optimizer", "lr", "schedule", "batch_size", "warmup_eps_epochs")
        if hasattr(trainer, key)
    }
    return {
        "name": trainer.method,
        "title": METHOD_TITLES.get(trainer.method, trainer.method),
        "settings": {"eps": trainer.eps, "norm": trainer.norm.value, **own, **loop},
    }


def _guard_summary(checks: int, events: list[GuardEvent]) -> str:
    if not events:
        return f"catastrophic-overfitting guard: did not fire ({checks} checks)"
    return (
        f"catastrophic-overfitting guard fired {len(events)} time(s) in {checks} checks: "
        + "; ".join(_event_text(e) for e in events)
    )


def _event_text(e: GuardEvent) -> str:
    return (
        f"at step {e.step} (epoch {e.epoch}) probe PGD accuracy {e.pgd_accuracy:.2f} against "
        f"{e.fgsm_accuracy:.2f} under the training attack: rolled back to step "
        f"{e.rolled_back_to_step}, alpha {e.alpha_before:.3g} -> {e.alpha_after:.3g}, random "
        "start on" + (f", GradAlign λ={e.grad_align:g}" if e.grad_align else "")
    )


def _probe(
    train: DataLoader[Any] | tuple[torch.Tensor, torch.Tensor], n: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A fixed, seeded sample of ``n`` training examples (the first batches of a loader)."""
    if isinstance(train, DataLoader):
        xs, ys, have = [], [], 0
        for batch in train:
            if not (isinstance(batch, tuple | list) and len(batch) >= 2):
                return None
            xs.append(batch[0])
            ys.append(batch[1].long())
            have += int(batch[0].shape[0])
            if have >= n:
                break
        return (torch.cat(xs)[:n], torch.cat(ys)[:n]) if xs else None
    x, y = train
    if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)) or len(x) == 0:
        return None
    idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed + 5))[:n]
    return x[idx], y[idx].long()


def _accuracy(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((module(x).argmax(1) == y).float().mean())
