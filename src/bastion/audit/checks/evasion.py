"""The ``evasion`` check: worst-case robust accuracy at the threat model's eps.

What runs follows the attacker's access (the threat model's, limited by the model's):

- ``white-box``: an AutoAttack-style ensemble — APGD with the cross-entropy loss, APGD with
  the DLR loss (Croce & Hein, ICML 2020) and the score-based Square attack — scored per sample
  (a sample is robust only if every attack failed on it), with the gradient-masking checks of
  :func:`bastion.audit.evasion.evaluate_evasion` (black box beating white box, a curve that
  rises, zero gradients, accuracy left at an unbounded radius);
- ``scores``: Square (score-based), within the query budget;
- ``labels``: HopSkipJump (decision-based), within the query budget.

Tree ensembles (XGBoost, LightGBM, scikit-learn forests, whose structure the audit reads) get
the fast leaf-tuple attack (:class:`~bastion.attacks.trees.FastTreeAttack`) when the threat
model grants white-box access, and, whatever the access, an exact MILP certificate per sample
within a time budget (:func:`~bastion.attacks.trees.certify`): the report puts the certified
robust accuracy ("at least X% are provably robust at eps") next to the empirical one ("the
attacks failed on Y%"). With a data contract (``ctx.schema``) every attack and certificate
stays within the table's rules (ranges, integers, categories, one-hot groups, immutable
columns), and eps is in the columns' own units.

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


def _tree_ensemble(ctx: AuditContext) -> Any:
    """The model's tree ensemble (its structure), or ``None`` for other models."""
    from bastion.models.trees import TreeEnsemble

    ensemble = getattr(ctx.model, "ensemble", None)
    return ensemble if isinstance(ensemble, TreeEnsemble) else None


def _unit_schema(ctx: AuditContext) -> Any:
    """The contract's rules with unit costs: eps in the columns' own units, as the attacks'
    eps-ball is, so a certificate and an attack measure the same distance."""
    schema = ctx.schema
    if schema is None:
        return None
    import dataclasses

    import numpy as np

    return dataclasses.replace(schema, cost=np.ones(schema.n_features))


def _rows_inside_contract(x: torch.Tensor, y: torch.Tensor, schema: Any
                          ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The test rows the contract accepts, and how many were left out: a row no real input
    could be is no sample of the model's robustness (the data check reports it)."""
    if schema is None or x.dim() != 2:
        return x, y, 0
    ok = torch.from_numpy(schema.check(x.detach().cpu().double().numpy()) == 0)
    outside = int((~ok).sum())
    if outside == len(y):
        raise ConfigurationError(
            f"all {outside} test rows break the data contract's rules, so no row can be "
            "attacked within them; fix the contract or the test data (see the data check)")
    return (x[ok], y[ok], outside) if outside else (x, y, 0)


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
        # tree ensembles: exact certificates within this budget (rows not reached stay
        # uncertified), each solve within certify_time_limit_s
        "certify": True,
        "certify_budget_s": 120.0,
        "certify_time_limit_s": 10.0,
        "tree_max_steps": 100,
    }

    def requires(self, ctx: AuditContext) -> Requirement | None:
        return need_data(ctx, "test", "the labelled samples to attack")

    def inputs(self, ctx: AuditContext) -> dict[str, Any]:
        # how the blocks are grouped into units changes no result: not part of the resume key
        return {k: v for k, v in ctx.check_settings(self.name).items() if k != "shards"}

    def _attacks(self, ctx: AuditContext, n: int) -> list[Any]:
        from bastion.attacks.evasion.catalog import build_attack

        s = ctx.check_settings(self.name)
        access = effective_access(ctx)
        if not s["attacks"] and _tree_ensemble(ctx) is not None and self._knows_trees(ctx):
            from bastion.attacks.trees import ExactTreeAttack, FastTreeAttack

            seed = ctx.unit_seed(self.name, 0)
            eps = ctx.threat.eps
            if ctx.threat.norm.value == "linf":
                steps = int(s["tree_max_steps"])
                return [FastTreeAttack(eps=eps, max_steps=steps, seed=seed)]
            limit = float(s["certify_time_limit_s"])
            return [ExactTreeAttack(norm=ctx.threat.norm, eps=eps, time_limit=limit, seed=seed)]
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

    @staticmethod
    def _knows_trees(ctx: AuditContext) -> bool:
        """Whether the attacker may use the trees' structure: the threat model's white box."""
        wanted = str(getattr(getattr(ctx.threat, "access", None), "value", "white-box"))
        return wanted == "white-box"

    def run(self, ctx: AuditContext) -> CheckResult:
        from bastion.audit.evasion import evaluate_evasion

        s = dict(ctx.check_settings(self.name))
        x, y, outside = _rows_inside_contract(ctx.test.x, ctx.test.y, _unit_schema(ctx))
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
            constraints=_unit_schema(ctx),
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
        tables: list[dict[str, Any]] = []
        certified_note = ""
        ensemble = _tree_ensemble(ctx)
        if ensemble is not None and ev.eps is not None and s["certify"]:
            known = self._known(results)
            cert = self._certify(ctx, ensemble, x, y, known, float(ev.eps), s)
            if not ev.curve:  # minimum-norm tree attacks: the curve from their distances
                ev = type(ev)(**{**ev.__dict__, **self._tree_curve(ev, known, clean)})
            k = int(cert.certified.sum())
            metrics["certified_robust_accuracy"] = Metric.proportion(
                k,
                n,
                higher_is_better=True,
                label=f"certified robust accuracy (exact, {ev.norm.value} eps {ev.eps:g}; "
                "a lower bound)",
            )
            contradicted = int((cert.certified & ~robust.numpy()).sum())
            undecided = int(cert.undecided.sum())
            tables.append(self._certified_table(metrics, n, undecided, contradicted))
            findings = [self._tree_finding(f, metrics, undecided) for f in findings]
            late = f", {undecided} sample(s) undecided in the time budget" if undecided else ""
            certified_note = (
                f"; certified robust accuracy {k / n:.1%} (at least this share is provably "
                f"robust{late})"
            )
            if contradicted:  # a certificate an attack broke: a bug, never hidden
                ev_warnings = [*ev.warnings, f"{contradicted} certified sample(s) were evaded"]
                ev = type(ev)(**{**ev.__dict__, "warnings": tuple(ev_warnings)})
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
        if any(a.name.startswith("tree-") for a in attacks):
            access = "white-box"  # the trees' structure is the white box of a tree model
        return CheckResult(
            "failed" if failed else "passed",
            metrics=metrics,
            findings=findings,
            plots=plots,
            tables=[table, *tables],
            summary=(
                f"Robust accuracy {metrics['robust_accuracy'].value:.1%} (clean "
                f"{metrics['clean_accuracy'].value:.1%}) on {n} samples under "
                f"{', '.join(a.name for a in attacks)} ({access} access, "
                f"{ev.norm.value} eps {ev.eps:g})"
                + certified_note
                + (f"; {outside} test row(s) the data contract rejects were left out (the "
                   "data check reports them)" if outside else "")
                + (f"; {len(ev.warnings)} reliability warning(s)" if ev.warnings else "")
                + "."
            ),
            settings={
                **s,
                "attacks": [a.name for a in attacks],
                "access": access,
                "warnings": list(ev.warnings),
                "rows_outside_contract": outside,
            },
        )

    def _certify(
        self,
        ctx: AuditContext,
        ensemble: Any,
        x: torch.Tensor,
        y: torch.Tensor,
        known: Any,
        eps: float,
        s: dict[str, Any],
    ) -> Any:
        """Exact certificates at eps; samples an attack already evaded need no solve."""
        from bastion.attacks.trees import certify

        return certify(
            ensemble,
            x.detach().double().cpu().numpy(),
            y.cpu().numpy(),
            eps=eps,
            norm=ctx.threat.norm.value,
            schema=_unit_schema(ctx),
            time_limit=float(s["certify_time_limit_s"]),
            budget_s=float(s["certify_budget_s"]),
            known=known,
        )

    @staticmethod
    def _known(results: list[Any]) -> Any:
        """Per sample, the smallest distance at which an attack changed its prediction."""
        import math

        import numpy as np

        known = np.full(results[0].y.shape[0], np.inf)
        for r in results:
            hit = (r.adv_pred != r.y).numpy()
            known = np.minimum(known, np.where(hit, r.distances.double().numpy(), np.inf))
            tree = r.extra.get("tree_distances") or r.extra.get("exact_distances")
            if tree is not None:  # minimum-norm tree attacks: the distance before the eps clip
                known = np.minimum(known, [math.inf if d is None else d for d in tree])
        return known

    @staticmethod
    def _tree_curve(ev: Any, known: Any, clean: torch.Tensor) -> dict[str, Any]:
        from bastion.audit.evasion import CurvePoint

        radii = [float(ev.eps) * i / 4 for i in range(5)]
        ok = clean.numpy()
        points = tuple(
            CurvePoint(r, float((ok & ~(known <= r + 1e-7)).mean())) for r in radii
        )
        return {"curve": points, "curve_attack": next(iter(ev.results))}

    @staticmethod
    def _certified_table(
        metrics: dict[str, Metric], n: int, undecided: int, contradicted: int
    ) -> dict[str, Any]:
        def row(what: str, m: Metric, how: str) -> list[Any]:
            ci = None if m.ci is None else f"[{m.ci[0]:.3f}, {m.ci[1]:.3f}]"
            return [what, m.value, ci, how]

        return {
            "title": "Certified vs empirical robust accuracy",
            "columns": ["measure", "value", "95% CI (Clopper–Pearson)", "meaning"],
            "rows": [
                row(
                    "empirical (attacks)",
                    metrics["robust_accuracy"],
                    "the attacks failed on this share: an upper bound on the true robustness",
                ),
                row(
                    "certified (exact MILP)",
                    metrics["certified_robust_accuracy"],
                    f"provably robust within the rules: a lower bound; {undecided} of {n} "
                    f"undecided in the time budget; {contradicted} certificates contradicted",
                ),
            ],
        }

    @staticmethod
    def _tree_finding(f: Any, metrics: dict[str, Metric], undecided: int) -> Any:
        """The robust-accuracy finding of a tree model: the certificate in its evidence and a
        remedy for trees (adversarial training of a network does not apply)."""
        import dataclasses

        if f.id != "evasion.low-robust-accuracy":
            return f
        cert = metrics["certified_robust_accuracy"]
        evidence = {
            **f.evidence,
            "certified_robust_accuracy": cert.value,
            "certified_ci": list(cert.ci) if cert.ci else None,
            "undecided": undecided,
        }
        remedy = (
            "Make the trees robust where a small change flips the score: train with robust "
            "splitting (e.g. Chen et al. 2019's robust trees, or adversarial boosting with "
            "the tree attack's examples), drop or coarsen the features the attacks change "
            "most, add monotone constraints where the domain has them, and mark features an "
            "applicant cannot change as immutable in the contract; then re-run this audit."
        )
        return dataclasses.replace(f, evidence=evidence, remediation=remedy)

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
