"""Adversarial training: PGD-AT (Madry et al.) and TRADES (Zhang et al.).

- **PGD-AT** — Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards Deep Learning Models Resistant
  to Adversarial Attacks", ICLR 2018, https://arxiv.org/abs/1706.06083. Each batch is replaced by
  its PGD adversarial examples (uniform random start in the ball, ``steps`` steps maximising
  cross-entropy) and the model takes a cross-entropy step on them.
- **TRADES** — Zhang, Yu, Jiao, Xing, El Ghaoui & Jordan, "Theoretically Principled Trade-off
  between Robustness and Accuracy", ICML 2019, https://arxiv.org/abs/1901.08573. The inner loop
  starts from ``x + 0.001·N(0, I)`` and maximises ``KL(f(x) ‖ f(x'))``; the outer loss is
  ``CE(f(x), y) + β · KL(f(x) ‖ f(x'))`` (batch mean).

The inner maximisation is the lean loop :func:`bastion.attacks.evasion._common.maximise_loss`
(the same projected step as :class:`~bastion.attacks.evasion.PGD`, without its per-sample
bookkeeping). It runs with the module in **eval** mode, as the TRADES reference code does:
batch-norm uses its running statistics and is not updated by the attack's forward passes, and
dropout is off; the outer step then runs in train mode. Only input gradients are computed during
the attack.

Defaults: Adam with ``lr=1e-3``, no weight decay, ``step_size = 2.5 · eps / steps`` (Madry's
rule), ``beta=6`` (TRADES), batch 128, and a learning-rate schedule and eps warm-up chosen from
the planned number of optimiser steps ``T = epochs × ceil(n / batch_size)`` — users run short
budgets first, and a schedule made for long runs throws most of a short one away:

- ``schedule="auto"``: a **constant** learning rate while ``T < 2000`` (a run that short is
  still under-trained at its end, and any decay only shortens the useful part: with a
  batch-norm CNN on 3,000 MNIST images, 4 epochs, cosine to zero reached 23.6% robust accuracy
  and a constant rate 31.2%; on scikit-learn digits cosine lost 3–15 points at every budget
  from 12 to 600 steps, see BENCHMARKS.md), **cosine** to zero from ``T ≥ 2000`` (long runs:
  the standard recipe for CIFAR-scale budgets; not measured here).
- ``warmup_eps_epochs=None``: eps (and the step, in proportion) ramps linearly from 0 over the
  first **15% of the planned steps**, whatever the budget: 4 steps of a 1-epoch run of 24
  batches, 15 epochs of a 100-epoch run. Small networks facing a large eps from the first step
  often never leave chance (training accuracy under attack near 0); the ramp fixes that and,
  being proportional, costs long and short runs the same share.
- Batch-norm: the attack runs with the module in eval mode (running statistics, not updated by
  the attack's passes), the outer step in train mode, as in the TRADES reference code and ART.

``schedule`` and ``warmup_eps_epochs`` override the rule. Validation (when ``val`` is given)
measures clean accuracy and robust accuracy under a fresh random-start PGD of ``val_steps``
steps after every epoch; the weights of the best robust epoch are restored at the end and
training stops after ``patience`` epochs without improvement. Deterministic under ``seed``
(shuffling, random starts, dropout).

Diagnostics: while it runs the trainer watches for the signs that training is not working and
logs a warning (logger ``bastion.defences.training.adversarial``) naming the likely cause and
the change to try; each is kept in :attr:`AdversarialTrainingReport.diagnostics`
(:class:`TrainingDiagnostic`; ``bastion harden`` turns them into findings
``adversarial-training.<code>``):

- ``eps-too-large`` (before training): eps at least half the input range, or at least 3/4 of
  the median half-distance between a training sample and the nearest one of another class
  (:func:`bastion.audit.scale.class_separation`) — no model can be robust there;
- ``near-chance`` (after epoch 2, or after the only epoch): training accuracy under attack
  within 10% of the way from chance (the most frequent label's share) to 100%;
- ``robust-not-rising``: over 3 epochs at full eps, robust accuracy (validation, else the
  training accuracy under attack) gained less than 1 point and stays in the lower half; when
  the training loss fell meanwhile the cause named is robust overfitting.

Shapes: ``x`` is ``(n, ...)`` as the module expects, in ``bounds``; ``y`` is ``(n,)`` labels.

Example
-------
>>> import torch
>>> from torch import nn
>>> x = torch.rand(64, 4, generator=torch.Generator().manual_seed(0))
>>> y = (x[:, 0] > 0.5).long()
>>> trainer = AdversarialTrainer(eps=0.05, steps=3, epochs=2, batch_size=32, lr=0.05)
>>> report = trainer.fit(nn.Linear(4, 2), (x, y), val=(x, y))
>>> report.method, report.epochs_run, len(report.history)
('pgd', 2, 2)
>>> 0.0 <= report.best_robust_accuracy <= 1.0
True
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.progress import Progress
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.hooks import RemovableHandle

from bastion._io import atomic_write_bytes
from bastion._progress import progress_bar
from bastion.attacks.evasion._common import maximise_loss, random_in_ball
from bastion.audit.findings import Finding, Severity
from bastion.defences.training._layout import channels_last_gradients
from bastion.errors import ConfigurationError, InputError, ModelError
from bastion.threat import Norm, parse_norm

__all__ = [
    "METHODS",
    "AdversarialTrainer",
    "AdversarialTrainingReport",
    "EpochStats",
    "TrainingDiagnostic",
    "diagnostic_finding",
]

log = logging.getLogger(__name__)

METHODS = ("pgd", "trades")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("auto", "cosine", "constant", "step", "onecycle", "linear")

# The automatic rule (schedule="auto", warmup_eps_epochs=None); see the module docstring.
AUTO_LONG_STEPS = 2000  # optimiser steps from which the learning rate decays (cosine)
AUTO_WARMUP_FRACTION = 0.15  # share of the planned steps over which eps ramps up from 0
LINEAR_TAIL = 0.25
# Diagnostics: training accuracy at most chance + this share of the way to 100% is "near
# chance"; the eps-scale check looks at this many training samples.
NEAR_CHANCE_MARGIN = 0.1
SHORT_RUN_STEPS = 100  # fewer planned optimiser steps than this: "the run is short"
SCALE_SAMPLES = 2000  # schedule="linear": constant, then linearly to 0 over this final share


@dataclass(frozen=True)
class EpochStats:
    """One epoch: mean training loss and accuracy (on the adversarial batches for PGD-AT, the
    clean ones for TRADES), validation accuracies (``None`` without ``val``), wall seconds."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_clean_accuracy: float | None
    val_robust_accuracy: float | None
    seconds: float


@dataclass(frozen=True)
class TrainingDiagnostic:
    """A sign that a run is not working: ``code`` (``"eps-too-large"``, ``"near-chance"`` or
    ``"robust-not-rising"``), the epoch it was seen after (0: before training), what was
    measured (``message``), the likely ``cause`` and the change to try (``fix``)."""

    code: str
    epoch: int
    message: str
    cause: str
    fix: str

    def __str__(self) -> str:
        return f"{self.message}. Likely cause: {self.cause}. Try: {self.fix}"


@dataclass(frozen=True)
class AdversarialTrainingReport:
    """What a run did: the method and threat model, epochs run, the best robust epoch, history,
    the learning-rate schedule and eps warm-up actually used, and any :class:`TrainingDiagnostic`
    raised while it ran."""

    method: str
    eps: float
    norm: str
    steps: int
    epochs_run: int
    best_epoch: int
    best_robust_accuracy: float | None
    history: tuple[EpochStats, ...]
    schedule: str = "constant"
    warmup_steps: int = 0
    diagnostics: tuple[TrainingDiagnostic, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["history"] = [asdict(h) for h in self.history]
        d["diagnostics"] = [asdict(x) for x in self.diagnostics]
        return d


class AdversarialTrainer:
    """Train a classifier in place with PGD-AT (``method="pgd"``) or TRADES (``"trades"``).

    Parameters
    ----------
    method: ``"pgd"`` (Madry PGD-AT) or ``"trades"``.
    eps, norm: the threat model trained against (``"linf"`` or ``"l2"``).
    steps, step_size: inner PGD steps and step (default ``2.5 * eps / steps``).
    beta: TRADES trade-off weight of the KL term (ignored by PGD-AT).
    epochs, lr, optimizer (``"sgd"`` or ``"adam"``), momentum (SGD), weight_decay, batch_size.
    schedule: learning rate over the planned steps, per step: ``"auto"`` (default: constant
        below 2,000 planned optimiser steps, cosine from there; see the module docstring),
        ``"cosine"`` (to zero), ``"constant"``, ``"linear"`` (constant, then linearly to zero
        over the last 25%), ``"step"`` (×0.1 at 50% and 75%) or ``"onecycle"`` (linear up to
        ``lr`` over the first 40%, then down to zero).
    warmup_eps_epochs: eps ramps linearly from 0 to ``eps`` over this many epochs (a float:
        fractions of an epoch count; ``0``: no warm-up). ``None`` (default): over the first 15%
        of the planned optimiser steps.
    val_steps: PGD steps of the validation attack (default: ``steps``).
    patience: stop after this many epochs without a better robust validation accuracy
        (``None``: never stop early). Needs ``val`` to have any effect.
    checkpoint_dir: write ``last.pt`` and ``best.pt`` there after every epoch (atomically).
    bounds: valid input range. device: where to train (default: the module's device).
    seed: seeds shuffling, random starts and dropout. progress: show a rich progress bar.
    channels_last: run convolutions on channels-last tensors (faster on CPU: about 1.3× per
        attack step for :func:`~bastion.models.zoo.small_cnn`). ``None`` (default): on for
        image batches ``(n, c, h, w)`` on CPU when the module accepts them (a probe forward
        pass; a module that ``view``s a channels-last tensor falls back). The module is
        returned in the contiguous format either way; the maths is unchanged.
    """

    def __init__(
        self,
        *,
        method: str = "pgd",
        eps: float,
        norm: str | Norm = "linf",
        steps: int = 10,
        step_size: float | None = None,
        beta: float = 6.0,
        epochs: int = 10,
        lr: float = 1e-3,
        optimizer: str = "adam",
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        batch_size: int = 128,
        schedule: str = "auto",
        warmup_eps_epochs: float | None = None,
        val_steps: int | None = None,
        patience: int | None = 3,
        checkpoint_dir: str | Path | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
        device: str | torch.device | None = None,
        seed: int = 0,
        progress: bool = False,
        channels_last: bool | None = None,
    ) -> None:
        if method not in METHODS:
            raise ConfigurationError(f"method must be one of {METHODS}, got {method!r}")
        if not _positive(eps):
            raise ConfigurationError(f"eps must be a positive number, got {eps!r}")
        self.norm = parse_norm(norm)
        _check_int(steps, "steps", 1)
        if step_size is not None and not _positive(step_size):
            raise ConfigurationError(f"step_size must be a positive number, got {step_size!r}")
        if not (isinstance(beta, int | float) and math.isfinite(beta) and beta >= 0):
            raise ConfigurationError(f"beta must be a non-negative number, got {beta!r}")
        _check_int(epochs, "epochs", 1)
        if not _positive(lr):
            raise ConfigurationError(f"lr must be a positive number, got {lr!r}")
        if optimizer not in OPTIMIZERS:
            raise ConfigurationError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        if not (isinstance(momentum, int | float) and 0.0 <= momentum < 1.0):
            raise ConfigurationError(f"momentum must lie in [0, 1), got {momentum!r}")
        if not (isinstance(weight_decay, int | float) and weight_decay >= 0):
            raise ConfigurationError(f"weight_decay must be >= 0, got {weight_decay!r}")
        _check_int(batch_size, "batch_size", 1)
        if schedule not in SCHEDULES:
            raise ConfigurationError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        if warmup_eps_epochs is not None and not (
            isinstance(warmup_eps_epochs, int | float)
            and not isinstance(warmup_eps_epochs, bool)
            and math.isfinite(warmup_eps_epochs)
            and warmup_eps_epochs >= 0
        ):
            raise ConfigurationError(
                f"warmup_eps_epochs must be a number >= 0 or None (automatic), got "
                f"{warmup_eps_epochs!r}"
            )
        if warmup_eps_epochs is not None and warmup_eps_epochs > epochs:
            raise ConfigurationError(
                f"warmup_eps_epochs ({warmup_eps_epochs}) exceeds epochs ({epochs})"
            )
        if val_steps is not None:
            _check_int(val_steps, "val_steps", 1)
        if patience is not None:
            _check_int(patience, "patience", 1)
        lo, hi = bounds
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ConfigurationError(f"bounds must be finite with low < high, got {bounds!r}")
        self.method = method
        self.eps = float(eps)
        self.steps = int(steps)
        self.step_size = float(step_size) if step_size is not None else 2.5 * self.eps / steps
        self.beta = float(beta)
        self.epochs = int(epochs)
        self.lr = float(lr)
        self.optimizer = optimizer
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.batch_size = int(batch_size)
        self.schedule = schedule
        self.warmup_eps_epochs = None if warmup_eps_epochs is None else float(warmup_eps_epochs)
        self.val_steps = int(val_steps) if val_steps is not None else self.steps
        self.patience = patience
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.bounds = (float(lo), float(hi))
        self.device = torch.device(device) if device is not None else None
        self.seed = int(seed)
        self.progress = bool(progress)
        self.channels_last = channels_last
        self._cl = False  # channels_last in use during the current fit
        self._cl_hooks: list[RemovableHandle] = []

    def __repr__(self) -> str:
        return (
            f"AdversarialTrainer(method={self.method!r}, eps={self.eps}, "
            f"norm={self.norm.value!r}, steps={self.steps}, step_size={self.step_size:g}, "
            f"epochs={self.epochs}, optimizer={self.optimizer!r}, lr={self.lr:g}, "
            f"schedule={self.schedule!r}, batch_size={self.batch_size}, seed={self.seed})"
        )

    # ------------------------------------------------------------------ training

    def fit(
        self,
        module: nn.Module,
        train: DataLoader[Any] | tuple[torch.Tensor, torch.Tensor],
        *,
        val: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> AdversarialTrainingReport:
        """Train ``module`` in place; return the report. Ends in eval mode with the weights of
        the best robust validation epoch (the last epoch without ``val``)."""
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise ModelError("the module has no trainable parameters")
        device = self.device or params[0].device
        module.to(device)
        batches = _Batches(train, self.batch_size, device, self.seed)
        if val is not None:
            val = _check_xy(val[0], val[1], "val")
        self._cl = self._use_channels_last(module, batches, device)
        # channels-last gradients through Flatten: the backward passes stay in one layout
        self._cl_hooks = channels_last_gradients(module) if self._cl else []
        torch.manual_seed(self.seed)
        gen = torch.Generator(device=device).manual_seed(self.seed + 1)
        opt = self._optimizer(params)
        total_steps = self.epochs * len(batches)
        ramp = self.warmup_steps(total_steps, len(batches))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self._lr_factor(total_steps))
        monitor = _Monitor(self, ramp, len(batches))
        monitor.check_scale(batches)
        history: list[EpochStats] = []
        best_epoch, best_acc = 0, -1.0
        best_state: dict[str, torch.Tensor] | None = None
        stale = 0
        step = 0
        with _progress(self.progress) as bar:
            task = bar.add_task(f"{self.method} epochs", total=self.epochs)
            try:
                for epoch in range(1, self.epochs + 1):
                    t0 = time.perf_counter()
                    loss_sum = torch.zeros((), device=device)
                    correct = torch.zeros((), device=device, dtype=torch.long)
                    seen = 0
                    for xb, yb in batches.epoch():
                        xb = self._format(xb)
                        eps = self._eps_at(step, ramp)
                        loss, right = self._train_step(module, opt, xb, yb, eps, gen)
                        sched.step()
                        step += 1
                        loss_sum += loss * xb.shape[0]
                        correct += right
                        seen += xb.shape[0]
                        monitor.count_labels(yb)
                    clean = robust = None
                    if val is not None:
                        clean, robust = self.evaluate(module, val[0], val[1], seed=self.seed)
                    stats = EpochStats(
                        epoch=epoch,
                        train_loss=float(loss_sum) / max(1, seen),
                        train_accuracy=float(correct) / max(1, seen),
                        val_clean_accuracy=clean,
                        val_robust_accuracy=robust,
                        seconds=time.perf_counter() - t0,
                    )
                    history.append(stats)
                    log.info("%s epoch %d: %s", self.method, epoch, stats)
                    monitor.after_epoch(stats, step)
                    score = robust if robust is not None else float(epoch)  # no val: keep last
                    improved = score > best_acc
                    if improved:
                        best_epoch, best_acc, stale = epoch, score, 0
                        best_state = _copy_state(module)
                    else:
                        stale += 1
                    self._checkpoint(module, opt, epoch, history, improved)
                    bar.advance(task)
                    if val is not None and self.patience is not None and stale >= self.patience:
                        log.info("early stop after epoch %d (best %d)", epoch, best_epoch)
                        break
            finally:
                if best_state is not None:
                    module.load_state_dict(best_state)
                if self._cl:
                    _set_format(module, torch.contiguous_format)
                    self._cl = False
                for handle in self._cl_hooks:
                    handle.remove()
                self._cl_hooks = []
                module.eval()
        report = AdversarialTrainingReport(
            method=self.method,
            eps=self.eps,
            norm=self.norm.value,
            steps=self.steps,
            epochs_run=len(history),
            best_epoch=best_epoch,
            best_robust_accuracy=best_acc if val is not None else None,
            history=tuple(history),
            schedule=self.resolved_schedule(total_steps),
            warmup_steps=ramp,
            diagnostics=tuple(monitor.found),
        )
        self.report_ = report
        return report

    def _train_step(
        self,
        module: nn.Module,
        opt: torch.optim.Optimizer,
        x: torch.Tensor,
        y: torch.Tensor,
        eps: float,
        gen: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One outer step; returns the (detached) batch loss and the number of correct preds."""
        module.eval()
        if self.method == "pgd":
            x_adv = self.perturb(module, x, y, eps=eps, steps=self.steps, generator=gen)
            return self._outer_step(module, opt, x_adv, y)
        else:
            with torch.no_grad():
                p_clean = F.softmax(module(x), dim=1)
            start = x + 0.001 * torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)

            def kl(xa: torch.Tensor) -> torch.Tensor:
                return F.kl_div(F.log_softmax(module(xa), dim=1), p_clean, reduction="sum")

            x_adv = self._ascend(kl, x, start, eps, self.steps)
            module.train()
            logits, adv_logits = module(x), module(x_adv)  # apart, as batch-norm would see them
            robust_kl = F.kl_div(
                F.log_softmax(adv_logits, dim=1), F.softmax(logits, dim=1), reduction="batchmean"
            )
            loss = F.cross_entropy(logits, y) + self.beta * robust_kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach(), (logits.detach().argmax(1) == y).sum()

    @staticmethod
    def _outer_step(
        module: nn.Module, opt: torch.optim.Optimizer, x_adv: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A train-mode cross-entropy step on the adversarial batch ``x_adv`` (PGD-AT's outer
        step); returns the detached loss and the number of correct predictions."""
        module.train()
        logits = module(x_adv)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach(), (logits.detach().argmax(1) == y).sum()

    def _ascend(
        self,
        loss: Any,
        x: torch.Tensor,
        start: torch.Tensor,
        eps: float,
        steps: int,
    ) -> torch.Tensor:
        if eps <= 0:
            return x
        step_size = self.step_size * eps / self.eps  # keep the step/eps ratio during warm-up
        return maximise_loss(
            loss,
            x,
            start,
            norm=self.norm,
            eps=eps,
            step_size=step_size,
            steps=steps,
            bounds=self.bounds,
        )

    def perturb(
        self,
        module: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        eps: float | None = None,
        steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """PGD adversarial examples (random start, cross-entropy) in the module's current mode."""
        e = self.eps if eps is None else float(eps)
        if e <= 0:
            return x
        noise = random_in_ball(x, self.norm, e, generator or torch.Generator(device=x.device))

        def ce(xa: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(module(xa), y, reduction="sum")

        return self._ascend(ce, x, x + noise, e, steps or self.steps)

    def evaluate(
        self,
        module: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        seed: int = 0,
        batch_size: int = 512,
    ) -> tuple[float, float]:
        """Clean and PGD robust accuracy (``val_steps`` steps, random start) in eval mode."""
        was_training = module.training
        module.eval()
        device = next(module.parameters()).device
        gen = torch.Generator(device=device).manual_seed(seed + 7)
        clean = robust = 0
        try:
            for i in range(0, x.shape[0], batch_size):
                xb = self._format(x[i : i + batch_size].to(device))
                yb = y[i : i + batch_size].to(device)
                with torch.inference_mode():
                    clean += int((module(xb).argmax(1) == yb).sum())
                x_adv = self.perturb(module, xb, yb, steps=self.val_steps, generator=gen)
                with torch.inference_mode():
                    robust += int((module(x_adv).argmax(1) == yb).sum())
        finally:
            module.train(was_training)
        n = max(1, x.shape[0])
        return clean / n, robust / n

    # ------------------------------------------------------------------ helpers

    def _use_channels_last(
        self, module: nn.Module, batches: _Batches, device: torch.device
    ) -> bool:
        if self.channels_last is False or (self.channels_last is None and device.type != "cpu"):
            return False
        probe = batches.probe()
        if probe.dim() != 4:
            return False
        _set_format(module, torch.channels_last)
        was_training = module.training
        try:
            with torch.no_grad():
                module.eval()
                module(probe.to(device).contiguous(memory_format=torch.channels_last))
        except RuntimeError as exc:
            _set_format(module, torch.contiguous_format)
            if self.channels_last:
                raise ModelError(f"the module does not accept channels-last input: {exc}") from exc
            log.debug("channels-last off: the module rejects it (%s)", exc)
            return False
        finally:
            module.train(was_training)
        return True

    def _format(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self._cl else x

    def _optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(
            params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )

    def resolved_schedule(self, total_steps: int) -> str:
        """The learning-rate schedule a run of ``total_steps`` optimiser steps uses (the
        automatic rule for ``schedule="auto"``, see the module docstring)."""
        if self.schedule != "auto":
            return self.schedule
        return "cosine" if total_steps >= AUTO_LONG_STEPS else "constant"

    def warmup_steps(self, total_steps: int, per_epoch: int) -> int:
        """Optimiser steps over which eps ramps from 0 (the automatic rule when
        ``warmup_eps_epochs`` is ``None``)."""
        if self.warmup_eps_epochs is None:
            return round(AUTO_WARMUP_FRACTION * total_steps)
        return round(self.warmup_eps_epochs * per_epoch)

    def _lr_factor(self, total: int) -> Any:
        schedule = self.resolved_schedule(total)

        def factor(step: int) -> float:
            t = min(1.0, step / max(1, total))
            if schedule == "cosine":
                return 0.5 * (1.0 + math.cos(math.pi * t))
            if schedule == "step":
                return 1.0 if t < 0.5 else (0.1 if t < 0.75 else 0.01)
            if schedule == "onecycle":
                return max(1e-3, t / 0.4) if t < 0.4 else max(0.0, (1.0 - t) / 0.6)
            if schedule == "linear":
                start = 1.0 - LINEAR_TAIL
                return 1.0 if t < start else max(0.0, (1.0 - t) / LINEAR_TAIL)
            return 1.0

        return factor

    def _eps_at(self, step: int, ramp: int) -> float:
        """eps at optimiser step ``step`` (0-based) of a run whose warm-up lasts ``ramp``."""
        if ramp <= 0:
            return self.eps
        return self.eps * min(1.0, (step + 1) / ramp)

    def _checkpoint(
        self,
        module: nn.Module,
        opt: torch.optim.Optimizer,
        epoch: int,
        history: list[EpochStats],
        improved: bool,
    ) -> None:
        if self.checkpoint_dir is None:
            return
        state = {
            "epoch": epoch,
            "model": module.state_dict(),
            "optimizer": opt.state_dict(),
            "history": [asdict(h) for h in history],
            "trainer": repr(self),
        }
        _save(state, self.checkpoint_dir / "last.pt")
        if improved:
            _save(state, self.checkpoint_dir / "best.pt")


_TITLES = {
    "eps-too-large": "Adversarial training: eps too large for the data's scale",
    "near-chance": "Adversarial training: training accuracy near chance",
    "robust-not-rising": "Adversarial training: robust accuracy not rising",
}


def diagnostic_finding(diag: TrainingDiagnostic) -> Finding:
    """The finding ``adversarial-training.<code>`` of a :class:`TrainingDiagnostic`, for the
    hardening report."""
    return Finding(
        id=f"adversarial-training.{diag.code}",
        title=_TITLES.get(diag.code, f"Adversarial training: {diag.code}"),
        severity=Severity.MEDIUM,
        threat="evasion",
        atlas=(),
        owasp=(),
        evidence={"epoch": diag.epoch, "observed": diag.message, "likely_cause": diag.cause},
        remediation=diag.fix,
    )


class _Monitor:
    """Watches a run for the signs that it is not working and says why (see the module
    docstring): eps too large for the data's scale (before training), training accuracy near
    chance, robust accuracy not rising. Each sign is logged (a warning) and reported once."""

    #: post-warm-up epochs without a gain of ``MIN_GAIN`` before "robust-not-rising"
    FLAT_EPOCHS = 3
    MIN_GAIN = 0.01

    def __init__(self, trainer: AdversarialTrainer, ramp: int, per_epoch: int) -> None:
        self.trainer = trainer
        self.ramp = ramp
        self.per_epoch = per_epoch
        self.total = trainer.epochs * per_epoch
        self.found: list[TrainingDiagnostic] = []
        self.counts = torch.zeros(0, dtype=torch.long)
        self.series: list[tuple[float, float]] = []  # (robust measure, train loss), post-warm-up
        self.scale_issue = False

    def _report(self, diag: TrainingDiagnostic) -> None:
        if any(d.code == diag.code for d in self.found):
            return
        self.found.append(diag)
        log.warning("adversarial training: %s", diag)

    # -- before training: eps against the data's scale
    def check_scale(self, batches: _Batches) -> None:
        from bastion.audit.scale import class_separation

        x, y = batches.sample(SCALE_SAMPLES)
        t = self.trainer
        eps, lo, hi = t.eps, *t.bounds
        width = hi - lo
        if t.norm is not Norm.LINF:
            width *= math.sqrt(x[0].numel())
        std = float(x.float().std()) if x.numel() > 1 else 0.0
        on_scale = (
            f"check that eps is on the inputs' scale (their standard deviation is {std:.3g}, "
            f"their bounds {lo:g}..{hi:g})"
        )
        if eps >= width / 2:
            self.scale_issue = True
            self._report(TrainingDiagnostic(
                code="eps-too-large", epoch=0,
                message=f"eps {eps:g} is {eps / width:.0%} of the input range ({t.norm.value})",
                cause="with eps at least half the range every input can be moved to the middle "
                "of the range, so no model can be robust",
                fix=f"lower eps to a small share of the range; {on_scale}",
            ))  # fmt: skip
            return
        if x.shape[0] < 2 or int(torch.unique(y).numel()) < 2:
            return
        sep = class_separation(x, y, norm=t.norm, seed=t.seed)
        if sep.too_large(eps):
            self.scale_issue = True
            self._report(TrainingDiagnostic(
                code="eps-too-large", epoch=0,
                message=(
                    f"eps {eps:g} is {sep.ratio(eps):.0%} of the median half-distance between a "
                    f"training sample and the nearest sample of another class "
                    f"({sep.median_half_distance:.3g} in {t.norm.value})"
                ),
                cause="most eps-balls nearly reach another class, so no model can be robust "
                "there and adversarial training learns little",
                fix=f"lower eps to {sep.suggested_eps():.2g} or less; {on_scale}",
            ))  # fmt: skip

    # -- while training
    def count_labels(self, y: torch.Tensor) -> None:
        c = torch.bincount(y.detach().cpu())
        if c.numel() > self.counts.numel():
            c[: self.counts.numel()] += self.counts
            self.counts = c
        else:
            self.counts[: c.numel()] += c

    def chance(self) -> float:
        """The accuracy of always answering the most frequent training label."""
        total = int(self.counts.sum())
        return int(self.counts.max()) / total if total else 0.0

    def after_epoch(self, stats: EpochStats, step: int) -> None:
        t = self.trainer
        chance = self.chance()
        first = stats.epoch >= min(2, t.epochs)  # after the first epoch(s)
        near = chance + NEAR_CHANCE_MARGIN * (1.0 - chance)
        if t.method != "trades" and first and stats.train_accuracy <= near:
            fix = (
                "warm eps up over more of the run (warmup_eps_epochs / --warmup-eps-epochs, "
                f"e.g. {max(1, t.epochs // 3)}), lower eps, or lower the learning rate "
                f"(lr {t.lr:g} → {t.lr * 0.3:.2g}); a wider model also helps"
            )
            if self.scale_issue:
                cause = "eps is too large for the data's scale (see the eps-too-large warning)"
            elif self.total < SHORT_RUN_STEPS:
                cause = (
                    f"the run is short: {self.total} optimiser steps in all, too few for the "
                    "model to learn under attack"
                )
                fix = (
                    f"train for more epochs (about {SHORT_RUN_STEPS} optimiser steps or more: "
                    f"epochs × ceil(n / batch_size)) or with a smaller batch; then " + fix
                )
            elif self.ramp == 0:
                cause = (
                    "the attack runs at full eps from the first step, too strong for a model "
                    "that has not learnt anything yet"
                )
            else:
                cause = (
                    "the model cannot fit adversarial examples at this eps: eps too large for "
                    "the model, or a learning rate the optimiser cannot work with"
                )
            self._report(TrainingDiagnostic(
                code="near-chance", epoch=stats.epoch,
                message=(
                    f"training accuracy under attack is {stats.train_accuracy:.1%} after epoch "
                    f"{stats.epoch}, near chance ({chance:.1%})"
                ),
                cause=cause,
                fix=fix,
            ))  # fmt: skip
        if step - self.per_epoch < self.ramp:
            return  # the epoch began during the eps warm-up: its robust accuracy is not comparable
        robust = stats.val_robust_accuracy
        if robust is None and t.method != "trades":
            robust = stats.train_accuracy
        if robust is None:
            return
        self.series.append((robust, stats.train_loss))
        if len(self.series) < self.FLAT_EPOCHS:
            return
        values = [r for r, _ in self.series]
        gain = max(values[1:]) - values[0]
        if gain >= self.MIN_GAIN or values[-1] >= chance + 0.5 * (1.0 - chance):
            return
        what = "validation" if stats.val_robust_accuracy is not None else "training"
        loss_drop = self.series[0][1] - self.series[-1][1]
        if stats.val_robust_accuracy is not None and loss_drop > 0.1 * self.series[0][1]:
            cause = (
                "the training loss keeps falling but robust accuracy on held-out data does "
                "not: the model fits the training set's adversarial examples without "
                "generalising (robust overfitting)"
            )
            fix = "more training data, weight decay, or a smaller model; keep the best epoch"
        else:
            cause = (
                "the optimiser makes no progress against the attack: a learning rate too high "
                "(the loss oscillates) or too low, or eps too large for the model"
            )
            fix = (
                f"lower the learning rate (lr {t.lr:g} → {t.lr * 0.3:.2g}) if the loss is flat "
                f"or noisy, raise it (→ {t.lr * 3:.2g}) if it falls slowly; or lower eps"
            )
        self._report(TrainingDiagnostic(
            code="robust-not-rising", epoch=stats.epoch,
            message=(
                f"{what} robust accuracy has not risen over {len(values)} epochs at full eps "
                f"({values[0]:.1%} → {values[-1]:.1%}, best {max(values):.1%})"
            ),
            cause=cause,
            fix=fix,
        ))  # fmt: skip


class _Batches:
    """Mini-batches on ``device``: a seeded shuffle of tensors, or a user's DataLoader."""

    def __init__(
        self,
        train: DataLoader[Any] | tuple[torch.Tensor, torch.Tensor],
        batch_size: int,
        device: torch.device,
        seed: int,
    ) -> None:
        self.device = device
        self.loader: Iterable[Any] | None = None
        if isinstance(train, DataLoader):
            self.loader = train
            try:
                self.count = len(train)
            except TypeError as exc:
                raise InputError("the DataLoader must have a length (a sized dataset)") from exc
            if self.count == 0:
                raise InputError("the training DataLoader is empty")
            return
        if not (isinstance(train, tuple | list) and len(train) == 2):
            raise InputError("train must be a DataLoader or a tuple (x, y) of tensors")
        x, y = _check_xy(train[0], train[1], "train")
        self.x, self.y = x.to(device), y.to(device)
        self.batch_size = batch_size
        self.count = math.ceil(x.shape[0] / batch_size)
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.count

    def probe(self) -> torch.Tensor:
        """Two training inputs, to try the module on."""
        if self.loader is None:
            return self.x[:2]
        batch = next(iter(self.loader))
        return batch[0][:2] if isinstance(batch, tuple | list) else torch.empty(0)

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Up to ``n`` training samples (a seeded draw; a DataLoader's first batches), on CPU."""
        if self.loader is None:
            g = torch.Generator().manual_seed(0)
            idx = torch.randperm(self.x.shape[0], generator=g)[:n].to(self.x.device)
            return self.x[idx].cpu(), self.y[idx].cpu()
        xs: list[torch.Tensor] = []
        ys: list[torch.Tensor] = []
        for batch in self.loader:
            if not (isinstance(batch, tuple | list) and len(batch) >= 2):
                break
            xs.append(batch[0].detach().cpu())
            ys.append(batch[1].detach().cpu().long())
            if sum(len(v) for v in xs) >= n:
                break
        if not xs:
            return torch.empty(0), torch.empty(0, dtype=torch.long)
        return torch.cat(xs)[:n], torch.cat(ys)[:n]

    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.loader is not None:
            for batch in self.loader:
                if not (isinstance(batch, tuple | list) and len(batch) >= 2):
                    raise InputError("each DataLoader batch must be (x, y)")
                yield batch[0].to(self.device), batch[1].to(self.device).long()
            return
        order = torch.randperm(self.x.shape[0], generator=self.generator).to(self.device)
        for i in range(0, order.shape[0], self.batch_size):
            idx = order[i : i + self.batch_size]
            yield self.x[idx], self.y[idx]


def _check_xy(x: Any, y: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
        raise InputError(f"{what} must be a pair of tensors (x, y)")
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise InputError(
            f"{what}: x and y must be non-empty and of equal length, got {len(x)} and {len(y)}"
        )
    if y.dim() != 1 or y.dtype not in (torch.int64, torch.int32):
        raise InputError(f"{what}: y must be 1-d integer labels, got {y.dtype} {tuple(y.shape)}")
    return x, y.long()


def _set_format(module: nn.Module, fmt: torch.memory_format) -> None:
    module.to(memory_format=fmt)  # type: ignore[call-overload]


def _copy_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _save(state: dict[str, Any], path: Path) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def _positive(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _check_int(v: Any, name: str, minimum: int) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
        raise ConfigurationError(f"{name} must be an integer >= {minimum}, got {v!r}")


def _progress(enabled: bool) -> Progress:
    return progress_bar(enabled)
