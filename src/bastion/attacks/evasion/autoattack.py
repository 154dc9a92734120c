"""AutoAttack-style ensemble: the per-sample worst case over diverse parameter-free attacks.

Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020. https://arxiv.org/abs/2003.01690

The attacks run in sequence, each only on the samples that every earlier attack left correctly
classified, so the robust accuracy is the per-sample worst case over the components:

- ``version="standard"``: APGD-CE, then APGD-T (targeted DLR against ``n_target_classes`` classes),
  then Square (score-based, ``square_queries`` queries per sample). FAB-T of the original suite is
  not included.
- ``version="fast"``: APGD-CE, then APGD-T against at most 3 target classes; no Square.

Square lives in :mod:`bastion.attacks.evasion.square` and is imported when first needed. Should
that module be missing, the ensemble still runs the other attacks and says so: the component is
listed in :attr:`AutoAttack.last_skipped_` with the reason, and a warning is logged.

After each :meth:`~bastion.attacks.evasion.base.EvasionAttack.generate`, the attack holds:

- ``last_breakdown_``: component name -> number of samples that component broke (samples that
  were correctly classified and that no earlier component had broken);
- ``last_ran_``: names of the components that ran, in order; ``last_skipped_``: name -> reason;
- ``last_clean_correct_``, ``last_n_``: correctly classified samples and samples seen;

and :meth:`AutoAttack.breakdown` turns them into robust accuracy after each component.

Norms: L∞ and L2. Defaults: ``steps=100``, ``square_queries=5000``, ``n_target_classes=9``.

Example
-------
>>> import torch
>>> from torch import nn
>>> from bastion.models import TorchClassifier
>>> from bastion.attacks.evasion.autoattack import AutoAttack
>>> _ = torch.manual_seed(0)
>>> clf = TorchClassifier(nn.Linear(4, 5), input_shape=(4,), num_classes=5)
>>> x = torch.rand(8, 4)
>>> aa = AutoAttack(norm="linf", eps=0.3, version="fast", steps=10)
>>> res = aa.generate(clf, x)
>>> aa.component_names()
['apgd-ce', 'apgd-t']
>>> sum(aa.last_breakdown_.values()) == int((res.adv_pred != res.y).sum())
True
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from typing import Any

import torch

from bastion.attacks.evasion._common import project
from bastion.attacks.evasion.apgd import APGD, APGDT
from bastion.attacks.evasion.base import EvasionAttack, check_positive
from bastion.errors import ConfigurationError
from bastion.models.base import Classifier
from bastion.threat import Norm

__all__ = ["AutoAttack"]

log = logging.getLogger(__name__)

_SQUARE_MODULE = "bastion.attacks.evasion.square"
_VERSIONS = ("standard", "fast")
_FAST_TARGETS = 3


class AutoAttack(EvasionAttack):
    """APGD-CE, APGD-T and Square in sequence, each on the samples still robust.

    Parameters
    ----------
    norm: "linf" or "l2".
    eps: radius of the perturbation ball.
    version: "standard" (APGD-CE, APGD-T, Square) or "fast" (APGD-CE, APGD-T with at most 3
        target classes).
    steps: iterations of each APGD run.
    square_queries: query budget per sample of the Square attack.
    n_target_classes: target classes tried by APGD-T.

    See the module docstring for the per-component breakdown kept after each run.
    """

    name = "autoattack"
    supports_targeted = False

    def __init__(
        self,
        *,
        norm: str | Norm = "linf",
        eps: float,
        version: str = "standard",
        steps: int = 100,
        square_queries: int = 5000,
        n_target_classes: int = 9,
        batch_size: int = 256,
        seed: int | None = 0,
    ) -> None:
        super().__init__(norm=norm, eps=eps, batch_size=batch_size, seed=seed)
        if version not in _VERSIONS:
            raise ConfigurationError(f"version must be 'standard' or 'fast', got {version!r}")
        check_positive(steps, "steps", integer=True)
        check_positive(square_queries, "square_queries", integer=True)
        check_positive(n_target_classes, "n_target_classes", integer=True)
        self.version = version
        self.steps = int(steps)
        self.square_queries = int(square_queries)
        self.n_target_classes = int(n_target_classes)
        eps_f = float(eps)
        n_targets = self.n_target_classes
        if version == "fast":
            n_targets = min(n_targets, _FAST_TARGETS)
        self._components: list[tuple[str, EvasionAttack | None]] = [
            ("apgd-ce", APGD(norm=self.norm, eps=eps_f, steps=self.steps, loss="ce",
                             batch_size=batch_size, seed=seed)),
            ("apgd-t", APGDT(norm=self.norm, eps=eps_f, steps=self.steps,
                             n_target_classes=n_targets, batch_size=batch_size, seed=seed)),
        ]
        if version == "standard":
            self._components.append(("square", None))  # built on first use
        self.last_breakdown_: dict[str, int] = {}
        self.last_ran_: list[str] = []
        self.last_skipped_: dict[str, str] = {}
        self.last_clean_correct_ = 0
        self.last_n_ = 0

    # -- introspection ----------------------------------------------------------------------
    def component_names(self) -> list[str]:
        """Names of the component attacks, in the order they run."""
        return [name for name, _ in self._components]

    def breakdown(self) -> dict[str, Any]:
        """The last run's per-component figures as JSON-ready values.

        ``robust_accuracy_after`` maps each component that ran to the robust accuracy over all
        samples once it and every earlier component had run; ``broken`` is ``last_breakdown_``.
        """
        n = max(self.last_n_, 1)
        robust = self.last_clean_correct_
        after: dict[str, float] = {}
        for name in self.last_ran_:
            robust -= self.last_breakdown_.get(name, 0)
            after[name] = robust / n
        return {
            "components": self.component_names(),
            "ran": list(self.last_ran_),
            "skipped": dict(self.last_skipped_),
            "broken": dict(self.last_breakdown_),
            "n": self.last_n_,
            "clean_correct": self.last_clean_correct_,
            "robust_accuracy_after": after,
        }

    def _result_extra(self) -> dict[str, Any]:
        """What ``generate`` should put in ``EvasionResult.extra`` (the :meth:`breakdown`)."""
        return self.breakdown()

    # -- the algorithm ----------------------------------------------------------------------
    def _square(self) -> EvasionAttack | None:
        if importlib.util.find_spec(_SQUARE_MODULE) is None:
            return None
        module = importlib.import_module(_SQUARE_MODULE)
        square_cls = module.Square
        attack: EvasionAttack = square_cls(
            norm=self.norm,
            eps=float(self.eps or 0.0),
            max_queries=self.square_queries,
            p_init=None,  # the paper's default for the norm
            batch_size=self.batch_size,
            seed=self.seed,
        )
        return attack

    def _reset(self) -> None:
        """Clear the per-run figures; ``generate`` calls this before the first batch."""
        self.last_breakdown_ = {}
        self.last_ran_ = []
        self.last_skipped_ = {}
        self.last_clean_correct_ = 0
        self.last_n_ = 0

    def _run(
        self,
        classifier: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        generator: torch.Generator,
    ) -> torch.Tensor:
        eps = float(self.eps or 0.0)
        lo, hi = classifier.bounds
        x_adv = x.clone()
        with torch.no_grad():
            robust = classifier.predict(x) == y
        self.last_n_ += int(x.shape[0])
        self.last_clean_correct_ += int(robust.sum())
        for i, (name, attack) in enumerate(self._components):
            if name == "square":
                shape = tuple(classifier.input_shape)
                if len(shape) not in (2, 3) or min(shape[-2:]) < 2:
                    # square windows of pixels: no move on feature vectors (tabular models)
                    self.last_skipped_[name] = f"needs image inputs, the model takes {shape}"
                    continue
            if attack is None and name == "square":
                attack = self._square()
                if attack is None:
                    reason = f"{_SQUARE_MODULE} is not available"
                    if name not in self.last_skipped_:
                        log.warning("AutoAttack: skipping %s: %s", name, reason)
                    self.last_skipped_[name] = reason
                    continue
                self._components[i] = (name, attack)
            if attack is None:  # pragma: no cover - every other component is built eagerly
                continue
            if name not in self.last_ran_:
                self.last_ran_.append(name)
            self.last_breakdown_.setdefault(name, 0)
            todo = robust.nonzero().squeeze(1)
            if todo.numel() == 0:
                continue
            xs, ys = x[todo], y[todo]
            attack._constraints = getattr(self, "_constraints", None)  # rules in its loop too
            cand = attack._run(classifier, xs, ys, None, generator).detach().to(x.dtype)
            with torch.no_grad():
                cand = torch.where(torch.isfinite(cand), cand, xs)
                cand = (xs + project(cand - xs, self.norm, eps)).clamp(lo, hi)
                cand = self._constrain(cand, xs)  # a break counts only inside the rules
                broke = classifier.predict(cand) != ys
            x_adv[todo[broke]] = cand[broke]
            robust[todo[broke]] = False
            self.last_breakdown_[name] += int(broke.sum())
            log.info(
                "autoattack: %s broke %d of the %d samples still robust",
                name, int(broke.sum()), int(todo.numel()),
            )
        return x_adv
