"""The ``evasion`` check: worst-case robust accuracy at the threat model's eps.

What runs follows the attacker's access (the threat model's, limited by the model's):

- ``white-box``: an AutoAttack-style ensemble — APGD with the cross-entropy loss, APGD with
  the DLR loss (Croce & Hein, ICML 2020) and the score-based Square attack — scored per sample
  (a sample is robust only if every attack failed on it), with the gradient-masking checks of
  :func:`bastion.audit.evasion.evaluate_evasion` (black box beating white box, a curve that
  rises, zero gradients, accuracy left at an unbounded radius);
- ``scores``: Square (score-based), within the query budget;
- ``labels``: HopSkipJump (decision-based), within the query budget.

Robust accuracy carries its Clopper–Pearson 95% interval, so 0.42 on 100 images reads
differently from 0.42 on 10,000. The report gets the robustness curve over eps, per-class
robust accuracy (a bar plot) and, for images, a few adversarial examples beside their originals
and the perturbation.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from bastion.audit.contract import AuditContext, Check, CheckResult, Metric, Requirement, register
from bastion.audit.findings import Severity
from bastion.audit.plan import effective_access, need_data
from bastion.errors import ConfigurationError

__all__ = ["EvasionCheck", "default_attacks"]

_WHITE_BOX = ("apgd-ce", "apgd-dlr", "square")
_ITERATIVE = {"pgd", "apgd-ce", "apgd-dlr", "apgd-t", "cw", "deepfool", "autoattack"}
_QUERY = {"square", "hopskipjump", "hsj"}


def default_attacks(access: str) -> tuple[str, ...]:
    """The attacks the check runs for an access level (see the module docstring)."""
    if access == "white-box":
        return _WHITE_BOX
    return ("square",) if access == "scores" else ("hopskipjump",)


def _runnable(names: tuple[str, ...], ctx: AuditContext) -> tuple[str, ...]:
    """``names`` less those that would refuse this model (Square on feature vectors), and
    HopSkipJump, which runs on any model, when none is left."""
    from bastion.attacks.evasion.catalog import runnable_attacks

    ok = set(runnable_attacks(ctx.model, ctx.threat.norm))
    return tuple(n for n in names if n in ok) or ("hopskipjump",)


@register
class EvasionCheck(Check):
    """Robust accuracy under the strongest attacks the access allows, at the threat's eps."""

    name = "evasion"
    title = "Evasion: worst-case robust accuracy"
    threat = "evasion"
    practices: ClassVar[tuple[str, ...]] = ("model_validation", "model_monitoring")
    defaults: ClassVar[dict[str, Any]] = {
        "max_samples": 256,
        "subset": "random",  # which max_samples: a seeded random subset, or the "first"
        "attacks": None,  # by access, see default_attacks
        "steps": 50,  # None: each attack's own default
        "max_queries": 500,  # per sample, for square and hopskipjump
        "batch_size": 256,
        "curve_points": 5,
        "examples": 4,
        # samples per seeded block, and blocks grouped into this many units of work for the
        # audit's executor (None: one unit per block); results do not depend on ``shards``
        "block": 64,
        "shards": None,
    }

    def requires(self, ctx: AuditContext) -> Requirement | None:
        return need_data(ctx, "test", "the labelled samples to attack")

    def _attacks(self, ctx: AuditContext, n: int) -> list[Any]:
        from bastion.attacks.evasion.catalog import build_attack

        s = ctx.check_settings(self.name)
        access = effective_access(ctx)
        names = tuple(s["attacks"] or _runnable(default_attacks(access), ctx))
        per_sample = None if s["max_queries"] is None else int(s["max_queries"])
        if access != "white-box" and ctx.query_budget is not None:
            per_sample = max(10, min(per_sample or 1000, ctx.query_budget // max(n, 1)))
        attacks = []
        for i, name in enumerate(names):
            extra: dict[str, Any] = {
                "seed": ctx.unit_seed(self.name, i),
                "batch_size": int(s["batch_size"]),
            }
            if name.lower() in _ITERATIVE and s["steps"] is not None:
                extra["steps"] = int(s["steps"])
            if name.lower() in _QUERY and per_sample:
                extra["max_queries"] = per_sample
            attacks.append(build_attack(name, norm=ctx.threat.norm, eps=ctx.threat.eps, **extra))
        return attacks

    def run(self, ctx: AuditContext) -> CheckResult:
        from bastion.audit.evasion import evaluate_evasion

        s = dict(ctx.check_settings(self.name))
        x, y = ctx.test.x, ctx.test.y
        n = min(int(s["max_samples"]), len(y))
        if s["subset"] not in ("random", "first"):
            raise ConfigurationError(f"evasion subset must be random or first, got {s['subset']!r}")
        if n < len(y) and s["subset"] == "first":
            x, y = x[:n], y[:n]
        elif n < len(y):
            g = torch.Generator().manual_seed(ctx.unit_seed(self.name, 1_000))
            keep = torch.randperm(len(y), generator=g)[:n].sort().values
            x, y = x[keep], y[keep]
        attacks = self._attacks(ctx, n)
        ev = evaluate_evasion(
            ctx.model,
            x,
            y,
            attacks,
            curve_points=int(s["curve_points"]),
            progress=False,
            model_name=str(ctx.model_info.get("source", "")),
            on_progress=None if ctx.progress is None else (lambda f: ctx.progress(self.name, f)),  # type: ignore[misc]
            block_size=int(s["block"]),
            shards=None if s["shards"] is None else int(s["shards"]),
            executor=ctx.executor,
        )
        results = list(ev.results.values())
        clean = results[0].clean_correct.cpu()
        robust = clean.clone()
        for r in results:
            robust &= (r.adv_pred == r.y).cpu()
        metrics = {
            "clean_accuracy": Metric.proportion(
                int(clean.sum()), n, higher_is_better=True, label="clean accuracy"
            ),
            "robust_accuracy": Metric.proportion(
                int(robust.sum()),
                n,
                higher_is_better=True,
                label=f"robust accuracy (worst case, {ev.norm.value} eps {ev.eps:g})",
            ),
        }
        for r in results:
            metrics[f"robust_accuracy.{r.attack}"] = Metric.proportion(
                int((r.adv_pred == r.y).sum()),
                n,
                higher_is_better=True,
                label=f"robust accuracy under {r.attack}",
            )
        findings = list(ev.findings)
        failed = any(f.severity.rank >= Severity.MEDIUM.rank for f in findings)
        plots = [self._curve_plot(ev, n), self._per_class_plot(y.cpu(), robust)]
        if ctx.domain == "image" and int(s["examples"]) > 0:
            examples = self._examples(
                x.cpu(), y.cpu(), robust, clean, results, int(s["examples"]), float(ev.eps or 0.0)
            )
            if examples is not None:
                plots.append(examples)
        table = {
            "title": "Attacks",
            "columns": [
                "attack",
                "robust accuracy",
                "success rate",
                "median norm",
                "queries/sample",
            ],
            "rows": [
                [
                    name,
                    a["robust_accuracy"],
                    a["success_rate"],
                    a["median_norm"],
                    a["queries_per_sample"],
                ]
                for name, a in ev.to_dict()["attacks"].items()
            ],
        }
        access = effective_access(ctx)
        return CheckResult(
            "failed" if failed else "passed",
            metrics=metrics,
            findings=findings,
            plots=plots,
            tables=[table],
            summary=(
                f"Robust accuracy {metrics['robust_accuracy'].value:.1%} (clean "
                f"{metrics['clean_accuracy'].value:.1%}) on {n} samples under "
                f"{', '.join(a.name for a in attacks)} ({access} access, "
                f"{ev.norm.value} eps {ev.eps:g})"
                + (f"; {len(ev.warnings)} reliability warning(s)" if ev.warnings else "")
                + "."
            ),
            settings={
                **s,
                "attacks": [a.name for a in attacks],
                "access": access,
                "warnings": list(ev.warnings),
            },
        )

    @staticmethod
    def _curve_plot(ev: Any, n: int) -> dict[str, Any]:
        from bastion.attacks.inference.metrics import clopper_pearson

        points = list(ev.curve)
        bounds = [clopper_pearson(round(p.robust_accuracy * n), n) for p in points]
        return {
            "kind": "line",
            "title": f"Robustness curve ({ev.curve_attack or 'no curve'})",
            "x_label": f"eps ({ev.norm.value})",
            "y_label": "robust accuracy",
            "series": [
                {
                    "label": ev.curve_attack or "",
                    "x": [p.eps for p in points],
                    "y": [p.robust_accuracy for p in points],
                    "lo": [float(b[0]) for b in bounds],
                    "hi": [float(b[1]) for b in bounds],
                }
            ],
        }

    @staticmethod
    def _per_class_plot(y: torch.Tensor, robust: torch.Tensor) -> dict[str, Any]:
        classes = sorted(int(c) for c in torch.unique(y))
        xs, vals, lo, hi = [], [], [], []
        for c in classes:
            m = Metric.proportion(int(robust[y == c].sum()), int((y == c).sum()))
            xs.append(str(c))
            vals.append(float(m.value or 0.0))
            lo.append(m.ci[0] if m.ci else 0.0)
            hi.append(m.ci[1] if m.ci else 1.0)
        return {
            "kind": "bar",
            "title": "Robust accuracy per class",
            "x_label": "class",
            "y_label": "robust accuracy",
            "series": [{"label": "robust accuracy", "x": xs, "y": vals, "lo": lo, "hi": hi}],
        }

    @staticmethod
    def _examples(
        x: torch.Tensor,
        y: torch.Tensor,
        robust: torch.Tensor,
        clean: torch.Tensor,
        results: list[Any],
        count: int,
        eps: float,
    ) -> dict[str, Any] | None:
        broken = torch.nonzero(clean & ~robust).flatten().tolist()[:count]
        if not broken:
            return None

        def pixels(t: torch.Tensor) -> Any:
            t = t.clamp(0, 1)
            return (t[0] if t.shape[0] == 1 else t).tolist() if t.dim() == 3 else t.tolist()

        rows = []
        for i in broken:
            r = next(r for r in results if int(r.adv_pred[i]) != int(r.y[i]))
            adv = r.x_adv[i].detach().cpu().float()
            delta = adv - x[i]
            scale = float(delta.abs().max()) or eps or 1.0
            rows.append(
                {
                    "caption": f"class {int(y[i])} → {int(r.adv_pred[i])} ({r.attack})",
                    "cells": [
                        {"label": "original", "pixels": pixels(x[i])},
                        {"label": "adversarial", "pixels": pixels(adv)},
                        {
                            "label": f"perturbation (±{scale:.3g} → 0..1)",
                            "pixels": pixels(delta / (2 * scale) + 0.5),
                        },
                    ],
                }
            )
        return {"kind": "images", "title": "Adversarial examples", "images": rows}
