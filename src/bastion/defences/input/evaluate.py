"""Adaptive evaluation of an input defence, with a verdict.

:func:`evaluate_input_defence` attacks a defended model three ways with bastion's
:class:`~bastion.attacks.evasion.PGD` and reports what each achieves:

**Preprocessors** (robust accuracy of the defended model, higher is better)

- *undefended*: PGD on the bare classifier, evaluated on the bare classifier (the baseline);
- *non-adaptive*: the worse, per sample, of PGD on the bare classifier transferred through the
  defence, and PGD through the defended model's own autograd gradient (which a rounding
  transform zeroes: the gradient-masking case);
- *adaptive*: PGD through BPDA (non-differentiable transforms) or EOT (randomised ones), per
  sample the worst of that attack and the non-adaptive ones.

Verdict: **weak** when the adaptive robust accuracy is at most the undefended robust accuracy
plus ``margin`` (the defence buys less than ``margin`` of robust accuracy against an attacker
who knows it); ``gradient_masking`` is set when the non-adaptive robust accuracy exceeds the
adaptive one by more than ``margin``.

**Detectors** (evasion rate: the fraction of attacked inputs that end misclassified *and*
unflagged; lower is better). Attacked inputs are those correctly classified and not flagged
when clean.

- *non-adaptive*: PGD on the bare classifier, then screened by the detector;
- *adaptive*: targeted PGD on :func:`~bastion.defences.input.adaptive.detector_aware_classifier`
  (misclassify *and* stay under the threshold; BPDA inside the score), towards each of the
  ``targets`` most likely wrong classes in turn; an input counts as evaded when any attack,
  adaptive or not, evades.

Verdict: **weak** when the adaptive evasion rate reaches ``evasion_bar`` (default 0.5:
detection is evaded for most adversarial inputs) or comes within ``margin`` of the undefended
attack's success rate (the detector stops almost nothing).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from bastion.attacks.evasion import PGD
from bastion.defences.input.adaptive import adaptive_classifier, detector_aware_classifier
from bastion.defences.input.base import InputDetector, PreprocessedClassifier, Preprocessor
from bastion.errors import ConfigurationError, InputError
from bastion.models.base import Classifier, check_bounds, check_labels, unmetered
from bastion.threat import Norm, parse_norm

__all__ = ["InputDefenceReport", "evaluate_input_defence"]


@dataclass(frozen=True)
class InputDefenceReport:
    """What the non-adaptive and the adaptive attack achieve against an input defence.

    ``non_adaptive`` and ``adaptive`` are robust accuracies for a preprocessor and evasion
    rates for a detector (see the module docstring). Fields that do not apply to the kind of
    defence are ``None``.
    """

    defence: str
    kind: str  # "preprocessor" or "detector"
    adaptive_attack: str
    norm: str
    eps: float
    n: int
    undefended_clean_accuracy: float
    clean_accuracy: float
    undefended_robust_accuracy: float
    non_adaptive: float
    adaptive: float
    verdict: str  # "weak" or "holds"
    gradient_masking: bool
    reason: str
    margin: float
    seconds: float
    # preprocessors
    transfer_robust_accuracy: float | None = None
    naive_robust_accuracy: float | None = None
    # detectors
    clean_flag_rate: float | None = None
    attacked: int | None = None
    undefended_success_rate: float | None = None
    non_adaptive_detection_rate: float | None = None
    adaptive_detection_rate: float | None = None

    @property
    def weak(self) -> bool:
        return self.verdict == "weak"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values."""
        return asdict(self)


def _rate(mask: torch.Tensor) -> float:
    return float(mask.float().mean()) if mask.numel() else 0.0


def _frac(num: torch.Tensor, den: torch.Tensor) -> float | None:
    d = int(den.sum())
    return int((num & den).sum()) / d if d else None


def _predict(clf: Classifier, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    with torch.no_grad(), unmetered(clf), clf.evaluation():
        return torch.cat(
            [clf.predict(x[i : i + batch].to(clf.device)).cpu() for i in range(0, len(x), batch)]
        )


def evaluate_input_defence(
    classifier: Classifier,
    defence: Preprocessor | InputDetector,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str | Norm = "linf",
    steps: int = 40,
    step_size: float | None = None,
    restarts: int = 1,
    margin: float = 0.1,
    evasion_bar: float = 0.5,
    eot_samples: int = 8,
    targets: int = 3,
    weight: float = 10.0,
    seed: int = 0,
) -> InputDefenceReport:
    """Evaluate ``defence`` in front of ``classifier`` on ``(x, y)`` (see the module docstring).

    ``classifier`` must offer gradients (a torch model); a detector must be calibrated.
    ``eps``/``norm``/``steps``/``step_size``/``restarts`` configure every PGD run;
    ``eot_samples`` the EOT draws per step for randomised transforms; ``targets`` the number
    of target classes tried against a detector and ``weight`` the detector term's weight.

    Example
    -------
    >>> import torch
    >>> from torch import nn
    >>> from bastion.models import TorchClassifier
    >>> from bastion.defences.input import BitDepth, evaluate_input_defence
    >>> _ = torch.manual_seed(0)
    >>> clf = TorchClassifier(nn.Linear(4, 3), input_shape=(4,), num_classes=3)
    >>> x = torch.rand(32, 4)
    >>> y = clf.predict(x)
    >>> rep = evaluate_input_defence(clf, BitDepth(bits=3), x, y, eps=0.3, steps=10)
    >>> rep.adaptive_attack, rep.adaptive <= rep.non_adaptive
    ('pgd+bpda', True)
    """
    if not isinstance(defence, Preprocessor | InputDetector):
        raise ConfigurationError(
            f"defence must be a Preprocessor or an InputDetector, got {type(defence).__name__}"
        )
    nrm = parse_norm(norm)
    for value, what, lo, hi in (
        (margin, "margin", 0.0, 1.0),
        (evasion_bar, "evasion_bar", 0.0, 1.0),
    ):
        if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
            raise ConfigurationError(f"{what} must be a number in [{lo:g}, {hi:g}], got {value!r}")
    if not isinstance(targets, int) or isinstance(targets, bool) or targets < 1:
        raise ConfigurationError(f"targets must be a positive integer, got {targets!r}")
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[0] == 0:
        raise InputError("x must be a non-empty batch tensor (n, ...)")
    if tuple(x.shape[1:]) != tuple(classifier.input_shape):
        raise InputError(
            f"x has shape {tuple(x.shape)}; the model expects (n, "
            f"{', '.join(map(str, classifier.input_shape))})"
        )
    check_bounds(x, classifier.bounds)
    if not isinstance(y, torch.Tensor):
        raise InputError(f"y must be a torch.Tensor of labels, got {type(y).__name__}")
    check_labels(y, classifier.num_classes, x.shape[0])
    x, y = x.detach().float().cpu(), y.long().cpu()
    if isinstance(defence, InputDetector) and not hasattr(defence, "threshold_"):
        raise ConfigurationError(
            f"{type(defence).__name__} has no threshold: call calibrate(x_clean, fpr=...) first"
        )
    pgd = PGD(norm=nrm, eps=eps, steps=steps, step_size=step_size, restarts=restarts, seed=seed)
    start = time.perf_counter()
    with unmetered(classifier):
        base = pgd.generate(classifier, x, y)
        if isinstance(defence, Preprocessor):
            return _evaluate_preprocessor(
                classifier, defence, x, y, pgd, base, nrm, margin, eot_samples, seed, start
            )
        return _evaluate_detector(
            classifier,
            defence,
            x,
            y,
            base,
            nrm,
            margin,
            evasion_bar,
            targets,
            weight,
            seed,
            steps,
            step_size,
            restarts,
            start,
        )


def _evaluate_preprocessor(
    classifier: Classifier,
    transform: Preprocessor,
    x: torch.Tensor,
    y: torch.Tensor,
    pgd: PGD,
    base: Any,
    norm: Norm,
    margin: float,
    eot_samples: int,
    seed: int,
    start: float,
) -> InputDefenceReport:
    defended = PreprocessedClassifier(classifier, transform, seed=seed)
    clean_ok = _predict(defended, x) == y
    transfer_ok = _predict(defended, base.x_adv) == y
    naive = pgd.generate(defended, x, y)
    naive_ok = _predict(defended, naive.x_adv) == y
    surrogate, attack_name = adaptive_classifier(
        classifier, transform, samples=eot_samples, seed=seed
    )
    adaptive = pgd.generate(surrogate, x, y)
    adaptive_ok = _predict(defended, adaptive.x_adv) == y
    non_adaptive_ok = transfer_ok & naive_ok
    worst_ok = non_adaptive_ok & adaptive_ok
    undefended_robust = base.robust_accuracy
    non_adaptive, adaptive_acc = _rate(non_adaptive_ok), _rate(worst_ok)
    weak = adaptive_acc <= undefended_robust + margin
    masking = non_adaptive - adaptive_acc > margin
    if weak:
        reason = (
            f"under {attack_name} the defended model keeps {adaptive_acc:.1%} robust accuracy, "
            f"within {margin:.0%} of the undefended model's {undefended_robust:.1%}"
        )
    else:
        reason = (
            f"under {attack_name} the defended model keeps {adaptive_acc:.1%} robust accuracy, "
            f"more than {margin:.0%} above the undefended model's {undefended_robust:.1%} "
            "(for this attack and budget only)"
        )
    if masking:
        reason += f"; the non-adaptive attacks overstate it ({non_adaptive:.1%}): gradient masking"
    return InputDefenceReport(
        defence=transform.name,
        kind="preprocessor",
        adaptive_attack=attack_name,
        norm=norm.value,
        eps=float(base.eps),
        n=int(x.shape[0]),
        undefended_clean_accuracy=base.clean_accuracy,
        clean_accuracy=_rate(clean_ok),
        undefended_robust_accuracy=undefended_robust,
        non_adaptive=non_adaptive,
        adaptive=adaptive_acc,
        verdict="weak" if weak else "holds",
        gradient_masking=masking,
        reason=reason,
        margin=margin,
        seconds=time.perf_counter() - start,
        transfer_robust_accuracy=_rate(transfer_ok),
        naive_robust_accuracy=_rate(naive_ok),
    )


def _evaluate_detector(
    classifier: Classifier,
    detector: InputDetector,
    x: torch.Tensor,
    y: torch.Tensor,
    base: Any,
    norm: Norm,
    margin: float,
    evasion_bar: float,
    targets: int,
    weight: float,
    seed: int,
    steps: int,
    step_size: float | None,
    restarts: int,
    start: float,
) -> InputDefenceReport:
    clean_flag = detector.predict(x).cpu()
    clean_ok = base.clean_pred == y
    attacked = clean_ok & ~clean_flag
    fooled = base.adv_pred != y
    flagged = detector.predict(base.x_adv).cpu()
    evaded = attacked & fooled & ~flagged
    non_adaptive_evasion = _frac(evaded, attacked) or 0.0
    undefended_success = _frac(fooled, attacked) or 0.0
    non_adaptive_detection = _frac(flagged, attacked & fooled)

    surrogate = detector_aware_classifier(classifier, detector, weight=weight)
    with torch.no_grad(), unmetered(classifier), classifier.evaluation():
        z = torch.cat(
            [
                classifier.logits(x[i : i + 512].to(classifier.device)).cpu()
                for i in range(0, len(x), 512)
            ]
        )
    z = z.scatter(1, y[:, None], float("-inf"))
    order = z.argsort(dim=1, descending=True)
    k = min(targets, classifier.num_classes - 1)
    adaptive_evaded = evaded.clone()
    adaptive_fooled = attacked & fooled
    pgd_t = PGD(
        norm=norm,
        eps=base.eps,
        steps=steps,
        step_size=step_size,
        restarts=restarts,
        targeted=True,
        seed=seed,
    )
    for r in range(k):
        rows = torch.nonzero(attacked & ~adaptive_evaded).flatten()
        if rows.numel() == 0:
            break
        res = pgd_t.generate(surrogate, x[rows], y[rows], target=order[rows, r])
        f = _predict(classifier, res.x_adv) != y[rows]
        g = detector.predict(res.x_adv).cpu()
        adaptive_fooled[rows] |= f
        adaptive_evaded[rows] |= f & ~g
    adaptive_evasion = _frac(adaptive_evaded, attacked) or 0.0
    adaptive_detection = _frac(~adaptive_evaded, adaptive_fooled)
    bar = min(evasion_bar, undefended_success - margin)
    weak = bool(attacked.any()) and adaptive_evasion >= bar
    if weak:
        reason = (
            f"the detector-aware attack evades detection and misclassifies "
            f"{adaptive_evasion:.1%} of the inputs (undefended attack: {undefended_success:.1%})"
        )
    else:
        reason = (
            f"the detector-aware attack evades on {adaptive_evasion:.1%} of the inputs, below "
            f"{bar:.1%} (for this attack and budget only)"
        )
    masking = non_adaptive_evasion < adaptive_evasion - margin
    if masking:
        reason += f"; a non-adaptive screen suggests only {non_adaptive_evasion:.1%}"
    return InputDefenceReport(
        defence=detector.name,
        kind="detector",
        adaptive_attack="pgd-targeted on classifier+detector (bpda)",
        norm=norm.value,
        eps=float(base.eps),
        n=int(x.shape[0]),
        undefended_clean_accuracy=base.clean_accuracy,
        clean_accuracy=base.clean_accuracy,
        undefended_robust_accuracy=base.robust_accuracy,
        non_adaptive=non_adaptive_evasion,
        adaptive=adaptive_evasion,
        verdict="weak" if weak else "holds",
        gradient_masking=masking,
        reason=reason,
        margin=margin,
        seconds=time.perf_counter() - start,
        clean_flag_rate=_rate(clean_flag),
        attacked=int(attacked.sum()),
        undefended_success_rate=undefended_success,
        non_adaptive_detection_rate=non_adaptive_detection,
        adaptive_detection_rate=adaptive_detection,
    )
