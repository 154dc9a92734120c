"""Evasion robustness evaluation: several attacks, the per-sample worst case, a robustness curve,
reliability checks for gradient masking, and findings.

Example
-------
>>> import torch
>>> from torch import nn
>>> from bastion.models import TorchClassifier
>>> from bastion.attacks.evasion import FGSM, PGD
>>> from bastion.audit.evasion import evaluate_evasion
>>> _ = torch.manual_seed(0)
>>> clf = TorchClassifier(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), input_shape=(4,),
...                       num_classes=3)
>>> x = torch.rand(16, 4)
>>> y = clf.predict(x)
>>> ev = evaluate_evasion(clf, x, y, [FGSM(eps=0.2), PGD(eps=0.2, steps=5)], curve_points=3,
...                       progress=False)
>>> ev.robust_accuracy <= min(r.robust_accuracy for r in ev.results.values())
True
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.progress import Progress

from bastion._progress import progress_bar
from bastion.attacks.evasion._common import ce_loss, input_gradient
from bastion.attacks.evasion.base import EvasionAttack, EvasionResult
from bastion.attacks.evasion.catalog import kind_of, with_eps
from bastion.audit.findings import Finding, Severity
from bastion.errors import ConfigurationError, InputError
from bastion.models.base import Capability, Classifier, check_bounds, check_labels, unmetered
from bastion.threat import ATLAS, OWASP, Norm

__all__ = ["CurvePoint", "EvasionEvaluation", "evaluate_evasion"]

log = logging.getLogger(__name__)

#: robust accuracy a black-box attack must undercut the best white-box attack by to raise a warning
_BLACK_BOX_MARGIN = 0.01
#: robust accuracy at an unbounded radius above which the evaluation is flagged
_LARGE_EPS_MAX_ACCURACY = 0.05
#: fraction of inputs with an exactly zero loss gradient that raises a warning
_ZERO_GRADIENT_FRACTION = 0.05


@dataclass(frozen=True)
class CurvePoint:
    eps: float
    robust_accuracy: float


@dataclass(frozen=True)
class EvasionEvaluation:
    """Clean and robust accuracy of a model under several evasion attacks.

    ``robust_accuracy`` is the per-sample worst case: a sample counts as robust only if every
    attack failed on it. ``curve`` is the robust accuracy of ``curve_attack`` as eps grows.
    """

    n: int
    norm: Norm
    eps: float | None
    clean_accuracy: float
    robust_accuracy: float
    results: dict[str, EvasionResult]
    curve: tuple[CurvePoint, ...] = ()
    curve_attack: str | None = None
    norm_curves: dict[str, tuple[CurvePoint, ...]] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    findings: tuple[Finding, ...] = ()
    seconds: float = 0.0
    model: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The ``report.json`` document."""
        return {
            "kind": "evasion",
            "model": self.model,
            "n": self.n,
            "norm": self.norm.value,
            "eps": self.eps,
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "attacks": {name: r.summary() for name, r in self.results.items()},
            "curve": {
                "attack": self.curve_attack,
                "points": [
                    {"eps": p.eps, "robust_accuracy": p.robust_accuracy} for p in self.curve
                ],
            },
            "warnings": list(self.warnings),
            "findings": [f.to_dict() for f in self.findings],
            "seconds": self.seconds,
            "extra": self.extra,
        }


def evaluate_evasion(
    classifier: Classifier,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: Sequence[EvasionAttack],
    *,
    curve_points: int = 6,
    curve_attack: EvasionAttack | None = None,
    reliability_checks: bool = True,
    progress: bool = True,
    model_name: str = "",
    on_progress: Callable[[float], None] | None = None,
    hardening: str | None = None,
    constraints: Any = None,
    block_size: int | None = None,
    shards: int | None = None,
    executor: Any = None,
) -> EvasionEvaluation:
    """Run ``attacks`` on ``(x, y)`` and summarise robustness (see :class:`EvasionEvaluation`).

    ``curve_points`` radii from 0 to the attacks' eps are evaluated with ``curve_attack``
    (default: the first eps-bounded white-box attack given, else the first eps-bounded one).
    With ``reliability_checks`` the evaluation looks for signs of gradient masking and reports
    them in ``warnings``. ``on_progress`` is called with the fraction done after each attack
    and each point of the curve. ``hardening`` names what was already done to the model
    (``"adversarial"``, ``"dp"``, ``"smooth"``), so that the findings' remedies do not advise
    it again. ``constraints`` (a :class:`~bastion.data.tabular.FeatureSchema`) holds every
    attack, and the curve's, to the table's rules.

    ``block_size`` splits the samples into seeded blocks and ``shards`` groups them into units
    of work run by ``executor`` (an :class:`~bastion.audit.executor.Executor`, default
    in-process), with per-sample results that do not depend on ``shards`` or the executor
    (:mod:`bastion.audit.evasion_shards`). Without ``block_size`` the attacks run in one piece.
    """
    if not attacks:
        raise ConfigurationError("give at least one attack")
    names = [a.name for a in attacks]
    if len(set(names)) != len(names):
        raise ConfigurationError(f"each attack may appear once, got {names}")
    norms = {a.norm for a in attacks}
    if len(norms) != 1:
        raise ConfigurationError("all attacks of one evaluation must use the same norm")
    norm = norms.pop()
    eps_values = {a.eps for a in attacks if a.eps is not None}
    if len(eps_values) > 1:
        raise ConfigurationError(f"all attacks must share one eps, got {sorted(eps_values)}")
    eps = eps_values.pop() if eps_values else None
    _check_data(classifier, x, y)
    start = time.perf_counter()

    results: dict[str, EvasionResult] = {}
    steps_total = len(attacks) + max(curve_points - 1, 0)
    done = [0]

    def tick() -> None:
        done[0] += 1
        if on_progress is not None:
            on_progress(min(done[0] / steps_total, 1.0))

    chosen = curve_attack or _default_curve_attack(attacks)
    with_curve = chosen is not None and bool(eps) and curve_points >= 2
    radii = [(eps or 0.0) * i / (curve_points - 1) for i in range(1, curve_points)]
    radii = radii if with_curve else []
    precomputed: dict[float, float] = {}
    with _progress(progress and block_size is None) as bar:
        if block_size is not None:
            from bastion.audit.evasion_shards import run_sharded

            reused = chosen.eps if chosen is not None and chosen.name in names else None
            sharded = run_sharded(
                classifier,
                x,
                y,
                attacks,
                block_size=block_size,
                shards=shards,
                curve_attack=chosen if with_curve else None,
                radii=[e for e in radii if not math.isclose(e, reused or -1.0)],
                executor=executor,
                constraints=constraints,
            )
            results, precomputed = sharded.results, sharded.curve
            done[0] = steps_total - 1
            tick()
        task = bar.add_task("attacks", total=len(attacks))
        for attack in attacks if block_size is None else ():
            bar.update(task, description=f"{attack.name}")
            results[attack.name] = attack.generate(classifier, x, y, constraints=constraints)
            bar.advance(task)
            tick()

        first = next(iter(results.values()))
        clean_correct = first.clean_correct
        robust = clean_correct.clone()
        for r in results.values():
            robust &= r.adv_pred == r.y
        robust_accuracy = float(robust.float().mean())

        curve: list[CurvePoint] = []
        if with_curve and chosen is not None and eps:
            task = bar.add_task(f"curve ({chosen.name})", total=curve_points - 1)
            curve.append(CurvePoint(0.0, first.clean_accuracy))
            for i in range(1, curve_points):
                e = eps * i / (curve_points - 1)
                if math.isclose(e, chosen.eps or -1.0) and chosen.name in results:
                    acc = results[chosen.name].robust_accuracy
                elif e in precomputed:
                    acc = precomputed[e]
                else:
                    acc = (
                        with_eps(chosen, e)
                        .generate(classifier, x, y, constraints=constraints)
                        .robust_accuracy
                    )
                curve.append(CurvePoint(e, acc))
                bar.advance(task)
                tick()

        norm_curves = {
            a.name: _curve_from_distances(results[a.name], [p.eps for p in curve])
            for a in attacks
            if a.minimum_norm and curve
        }

        warnings: list[str] = []
        if reliability_checks:
            warnings = _reliability_warnings(classifier, x, y, attacks, results, curve, eps, norm)
    for w in warnings:
        log.warning(w)

    evaluation = EvasionEvaluation(
        n=int(x.shape[0]),
        norm=norm,
        eps=eps,
        clean_accuracy=first.clean_accuracy,
        robust_accuracy=robust_accuracy,
        results=results,
        curve=tuple(curve),
        curve_attack=None if chosen is None or not curve else chosen.name,
        norm_curves=norm_curves,
        warnings=tuple(warnings),
        seconds=time.perf_counter() - start,
        model=model_name,
    )
    return _with_findings(evaluation, hardening)


def _check_data(classifier: Classifier, x: torch.Tensor, y: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise InputError("x and y must be torch tensors")
    if tuple(x.shape[1:]) != tuple(classifier.input_shape):
        raise InputError(
            f"x has shape {tuple(x.shape)}; the model expects (n, "
            f"{', '.join(map(str, classifier.input_shape))})"
        )
    if x.shape[0] == 0:
        raise InputError("x is empty: give at least one input")
    check_bounds(x, classifier.bounds)
    check_labels(y, classifier.num_classes, x.shape[0])


def _curve_from_distances(result: EvasionResult, radii: Sequence[float]) -> tuple[CurvePoint, ...]:
    """Robust accuracy at each radius implied by a minimum-norm attack's distances (no queries)."""
    broken_at = torch.where(
        result.success, result.distances, torch.full_like(result.distances, math.inf)
    )
    correct = result.clean_correct
    return tuple(
        CurvePoint(r, float((correct & ~(broken_at <= r + 1e-7)).float().mean())) for r in radii
    )


def _default_curve_attack(attacks: Sequence[EvasionAttack]) -> EvasionAttack | None:
    bounded = [a for a in attacks if a.eps and not a.minimum_norm and a.name != "autoattack"]
    white = [a for a in bounded if kind_of(a) == "white-box"]
    pool = white or bounded
    # iterative attacks draw a truer curve than single-step FGSM
    pool.sort(key=lambda a: a.name == "fgsm")
    return pool[0] if pool else None


def _progress(enabled: bool) -> Progress:
    return progress_bar(enabled)


def _reliability_warnings(
    classifier: Classifier,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: Sequence[EvasionAttack],
    results: dict[str, EvasionResult],
    curve: Sequence[CurvePoint],
    eps: float | None,
    norm: Norm,
) -> list[str]:
    """Signs that gradients are masked and the white-box numbers overstate robustness."""
    out: list[str] = []
    by_kind: dict[str, list[EvasionAttack]] = {}
    for a in attacks:
        by_kind.setdefault(kind_of(a), []).append(a)
    white = [results[a.name].robust_accuracy for a in by_kind.get("white-box", [])]
    if white:
        best_white = min(white)
        for a in by_kind.get("score-based", []) + by_kind.get("decision-based", []):
            acc = results[a.name].robust_accuracy
            if acc < best_white - _BLACK_BOX_MARGIN:
                out.append(
                    f"gradient masking suspected: black-box attack {a.name} reaches robust "
                    f"accuracy {acc:.3f}, below the best white-box attack ({best_white:.3f})"
                )
    for prev, point in itertools.pairwise(curve):
        if point.robust_accuracy > prev.robust_accuracy + 0.02:
            out.append(
                f"gradient masking suspected: robust accuracy rises from {prev.robust_accuracy:.3f}"
                f" at eps {prev.eps:g} to {point.robust_accuracy:.3f} at eps {point.eps:g}"
            )
            break
    if Capability.GRADIENTS in classifier.capabilities:
        sub = slice(0, min(256, x.shape[0]))
        xs, ys = x[sub].to(classifier.device), y[sub].to(classifier.device)
        with classifier.evaluation(), unmetered(classifier):
            _, grad, _ = input_gradient(classifier, xs, lambda z: ce_loss(z, ys))
            zero = float((grad.flatten(1).abs().amax(dim=1) == 0).float().mean())
            if zero > _ZERO_GRADIENT_FRACTION:
                out.append(
                    f"gradient masking suspected: the loss gradient is exactly zero for "
                    f"{zero:.0%} of inputs; use score- or decision-based attacks as well"
                )
            lo, hi = classifier.bounds
            large = (hi - lo) if norm is Norm.LINF else (hi - lo) * math.sqrt(xs[0].numel())
            probe = _large_eps_probe(attacks, large)
            if probe is not None:
                res = probe.generate(classifier, x[sub], y[sub])
                if res.robust_accuracy > _LARGE_EPS_MAX_ACCURACY:
                    out.append(
                        f"unreliable evaluation: {probe.name} leaves robust accuracy "
                        f"{res.robust_accuracy:.3f} at an unbounded radius (eps {large:g}); "
                        f"accuracy should reach 0 there"
                    )
    return out


def _large_eps_probe(attacks: Sequence[EvasionAttack], eps: float) -> EvasionAttack | None:
    for a in attacks:
        if a.name in {"pgd", "apgd-ce", "apgd-dlr"}:
            return with_eps(a, eps)
    for a in attacks:
        if a.name == "fgsm":
            from bastion.attacks.evasion.pgd import PGD

            return PGD(norm=a.norm, eps=eps, steps=20, step_size=eps / 8, seed=a.seed)
    return None


def evasion_remedy(ev: EvasionEvaluation, hardening: str | None = None) -> str:
    """The remedy for an evasion finding, from the numbers and from what was already done
    (``hardening``: ``"adversarial"``, ``"dp"``, ``"smooth"`` or ``None``)."""
    ratio = ev.robust_accuracy / ev.clean_accuracy if ev.clean_accuracy else 0.0
    mitigations = f"({ATLAS['mitigation_model_hardening']}, {ATLAS['mitigation_input_detection']})"
    numbers = f"robust accuracy {ev.robust_accuracy:.1%} of clean {ev.clean_accuracy:.1%}"
    if hardening == "adversarial":
        if ratio < 0.1:
            return (
                f"Adversarial training was applied and left {numbers}: at eps {ev.eps:g} it "
                "learnt nothing. Check that eps suits the data's scale (the hardening report "
                "says when it is too large), then train longer or try TRADES (--method trades)."
            )
        return (
            f"Adversarial training was applied ({numbers}). To go further: more epochs or "
            "PGD steps, TRADES (--method trades) to trade clean for robust accuracy, or "
            f"randomized smoothing where a certified guarantee is needed {mitigations}."
        )
    if hardening == "dp":
        return (
            f"DP-SGD protects the training data, not the decision boundary ({numbers}). For "
            "evasion add adversarial training (bastion harden adversarial) or randomized "
            f"smoothing; expect DP's noise to cost clean accuracy as well {mitigations}."
        )
    if hardening == "smooth":
        return (
            f"Gaussian-augmentation training was applied; these attacks target the base model "
            f"({numbers}). Serve the smoothed classifier, whose certified accuracy is the "
            f"guarantee, or add adversarial training for the base model {mitigations}."
        )
    if ratio >= 0.9:
        return (
            f"The model holds at eps {ev.eps:g} ({numbers}). Before relying on it, re-run at "
            "larger eps and with the autoattack ensemble and a decision-based attack "
            "(hopskipjump) to rule out gradient masking."
        )
    return (
        f"Harden the model with adversarial training (PGD-AT or TRADES: bastion harden "
        f"adversarial) and re-run this evaluation ({numbers}); consider input screening and "
        f"restricting queries {mitigations}."
    )


def _with_findings(ev: EvasionEvaluation, hardening: str | None = None) -> EvasionEvaluation:
    findings: list[Finding] = []
    if ev.eps is not None:
        drop = ev.clean_accuracy - ev.robust_accuracy
        ratio = ev.robust_accuracy / ev.clean_accuracy if ev.clean_accuracy else 0.0
        if ratio < 0.1:
            severity = Severity.HIGH
        elif ratio < 0.7:
            severity = Severity.MEDIUM
        elif drop > 0.05:
            severity = Severity.LOW
        else:
            severity = Severity.INFO
        worst = min(ev.results.values(), key=lambda r: r.robust_accuracy)
        findings.append(
            Finding(
                id="evasion.low-robust-accuracy",
                title=(
                    f"Robust accuracy {ev.robust_accuracy:.1%} under {ev.norm.value} attacks "
                    f"at eps {ev.eps:g} (clean {ev.clean_accuracy:.1%})"
                ),
                severity=severity,
                threat="evasion",
                atlas=(ATLAS["white_box_optimisation"], ATLAS["evade_model"]),
                owasp=(OWASP["input_manipulation"],),
                evidence={
                    "clean_accuracy": ev.clean_accuracy,
                    "robust_accuracy": ev.robust_accuracy,
                    "strongest_attack": worst.attack,
                    "n": ev.n,
                },
                remediation=evasion_remedy(ev, hardening),
            )
        )
    if ev.warnings:
        findings.append(
            Finding(
                id="evasion.gradient-masking",
                title="The evaluation may overstate robustness (gradient masking suspected)",
                severity=Severity.MEDIUM,
                threat="evasion",
                atlas=(ATLAS["black_box_optimisation"],),
                owasp=(OWASP["input_manipulation"],),
                evidence={"warnings": list(ev.warnings)},
                remediation=(
                    "Add adaptive, score-based (square) and decision-based (hopskipjump) attacks "
                    "and the autoattack ensemble; do not rely on non-differentiable defences."
                ),
            )
        )
    return EvasionEvaluation(**{**ev.__dict__, "findings": tuple(findings)})
