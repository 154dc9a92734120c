"""The ``membership`` check: can an attacker tell the training members from unseen data?

Members are the training set (``ctx.train``, the data the threat model calls sensitive) and
non-members the test set (``ctx.test``); the check draws the same number of each (at most
``max_samples``, seeded) and runs

- **LiRA, offline** (Carlini et al. 2022) with ``n_reference`` reference models trained on
  random halves of the *rest* of both sets (never on a scored sample), reference model
  ``i`` seeded by ``ctx.unit_seed("membership", i)`` alone, so any executor trains the same
  models; and
- the **loss threshold** attack (Yeom et al. 2018), finding id ``membership.loss-threshold``;
- against a label-only model, the **label-only** attack instead of both.

Against a tree ensemble (XGBoost, LightGBM, scikit-learn forests and boosting), the reference
and shadow models are tree ensembles of the target's own family and size
(:class:`~bastion.models.trees.refit.TreeTrainer`: the same library, number of trees and
depth), not small networks: LiRA's per-sample distributions are only as good as the reference
models are like the target.

``attacks`` picks others (``loss``, ``confidence``, ``label-only``, ``shadow``, ``lira``,
``lira-online``), and ``population`` (an ``.npz``) gives the attacker's own data for the
reference and shadow models; then every member and non-member (up to ``max_samples`` each)
is scored.

Each attack is judged by its TPR at 0.1% and 1% FPR (Clopper–Pearson intervals on the counts),
its AUC (stratified bootstrap interval) and the empirical ε lower bound (95%, Clopper–Pearson
on the rates of the best test, either direction); the severity weighs all three
(:func:`~bastion.attacks.inference.membership_severity`). The ROC is plotted on log axes.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from bastion.attacks.inference.base import MembershipResult
from bastion.audit.checks._evidence import (
    check_settings,
    without_timings,
)
from bastion.audit.contract import AuditContext, Check, CheckResult, Metric, Requirement, register
from bastion.audit.findings import Severity
from bastion.audit.plan import effective_access, need_data
from bastion.errors import ConfigurationError

__all__ = ["ATTACKS", "MembershipCheck"]

#: fewest population samples (the samples not scored) LiRA's reference models train on
_MIN_POPULATION = 20
#: the attacks by setting name: ``lira`` is offline LiRA (bounded reference models, trained
#: once), ``lira-online`` Carlini et al.'s online variant (reference models per call)
ATTACKS = ("lira", "loss", "confidence", "label-only", "shadow", "lira-online")
#: metric-name prefixes by attack
_KEYS = {"loss": "loss-threshold", "confidence": "confidence-threshold"}
#: attacks that train reference or shadow models on population data
_FITTED = ("lira", "shadow", "lira-online")


@register
class MembershipCheck(Check):
    """Membership inference against the training set (see the module docstring)."""

    name: ClassVar[str] = "membership"
    title: ClassVar[str] = "Membership inference"
    threat: ClassVar[str] = "inversion_membership"
    practices: ClassVar[tuple[str, ...]] = ("privacy_protection", "model_validation")
    defaults: ClassVar[dict[str, Any]] = {
        "attacks": "auto",
        "population": None,
        "n_reference": 4,
        "reference_epochs": 20,
        "max_samples": 500,
        "bootstrap": 200,
        "max_queries": None,
    }

    def requires(self, ctx: AuditContext) -> Requirement | None:
        if ctx.model is None:
            return Requirement("needs a loaded model", "pass --model with a loadable model")
        if "train" not in ctx.sensitive:
            return Requirement(
                "the threat model marks no training data as sensitive",
                "add train to the threat model's sensitive data",
            )
        return need_data(ctx, "train", "the member set") or need_data(
            ctx, "test", "non-members: data the model never saw"
        )

    def inputs(self, ctx: AuditContext) -> dict[str, Any]:
        return {**check_settings(self, ctx), "access": effective_access(ctx)}

    def run(self, ctx: AuditContext) -> CheckResult:
        opts = check_settings(self, ctx)
        n_ref, epochs = int(opts["n_reference"]), int(opts["reference_epochs"])
        if n_ref < 2 or epochs < 1 or int(opts["max_samples"]) < 2:
            raise ConfigurationError(
                "membership: n_reference must be at least 2, reference_epochs and max_samples "
                "at least 1 and 2"
            )
        clf, train, test = ctx.model, ctx.train, ctx.test
        if opts["max_queries"] is not None:  # a metered view: an attack over it is refused
            from bastion.attacks.extraction import black_box

            labels = effective_access(ctx) == "labels"
            budget = int(opts["max_queries"])
            clf = black_box(clf, access="labels" if labels else "scores", query_budget=budget)
        shape = tuple(clf.input_shape)
        names = self._attacks(opts, effective_access(ctx))
        population = self._population(opts, ctx)
        cap = int(opts["max_samples"])
        if population is None and any(a in _FITTED for a in names):
            # as many members as non-members, leaving at least a third of the data to train
            # the reference models on (the rest of both sets: never a scored sample)
            n_m = n_n = min(len(test), len(train), cap, (len(train) + len(test)) // 3)
        else:
            n_m, n_n = min(len(train), cap), min(len(test), cap)
        g = torch.Generator().manual_seed(ctx.unit_seed(f"{self.name}.sample"))
        tr = torch.randperm(len(train), generator=g)
        te = torch.randperm(len(test), generator=g)
        x = torch.cat([train.x[tr[:n_m]], test.x[te[:n_n]]]).reshape(-1, *shape)
        y = torch.cat([train.y[tr[:n_m]], test.y[te[:n_n]]])
        truth = torch.cat([torch.ones(n_m, dtype=torch.bool), torch.zeros(n_n, dtype=torch.bool)])
        if population is None:
            xp = torch.cat([train.x[tr[n_m:]], test.x[te[n_n:]]]).reshape(-1, *shape)
            yp = torch.cat([train.y[tr[n_m:]], test.y[te[n_n:]]])
        else:
            xp, yp = population.x.reshape(-1, *shape), population.y
        results: list[tuple[str, MembershipResult]] = []
        notes: list[str] = []
        for i, name in enumerate(names):
            self._progress(ctx, name, i / len(names))
            attack = self._build(name, opts, ctx)
            if clf is not ctx.model:  # the metered view's budget is per attack
                clf.reset_queries()
            if attack.needs_fit:
                if len(xp) < _MIN_POPULATION:
                    notes.append(
                        f"{name} did not run: only {len(xp)} samples are left to train reference "
                        f"models on (needs {_MIN_POPULATION}; give a population)"
                    )
                    continue
                attack.fit(clf, xp, yp)
            results.append((name, attack.infer(clf, x, y, membership=truth)))
        if not results:
            raise ConfigurationError("membership: no attack could run; " + "; ".join(notes))
        return self._result(results, opts, (n_m, n_n), notes, ctx)

    @staticmethod
    def _attacks(opts: dict[str, Any], access: str) -> list[str]:
        spec = opts["attacks"]
        if spec in (None, "auto"):
            return ["label-only"] if access == "labels" else ["lira", "loss"]
        names = [spec] if isinstance(spec, str) else list(spec)
        unknown = [a for a in names if a not in ATTACKS]
        if unknown or not names:
            raise ConfigurationError(
                f"membership: unknown attack(s) {unknown}; choose from {', '.join(ATTACKS)}"
            )
        return list(dict.fromkeys(names))

    def _population(self, opts: dict[str, Any], ctx: AuditContext) -> Any:
        if not opts.get("population"):
            return None
        from pathlib import Path

        from bastion.audit.sources import load_dataset

        return load_dataset(Path(opts["population"]), ctx.model.bounds, ctx.model.num_classes)

    def _build(self, name: str, opts: dict[str, Any], ctx: AuditContext) -> Any:
        from bastion.attacks.inference import (
            DefaultTrainer,
            LabelOnlyAttack,
            LiRA,
            ShadowModelAttack,
            ThresholdAttack,
        )

        clf = ctx.model
        n_ref = int(opts["n_reference"])
        seed = ctx.unit_seed(f"{self.name}.{name}")
        trainer: Any = DefaultTrainer(
            tuple(clf.input_shape), clf.num_classes, epochs=int(opts["reference_epochs"])
        )
        tree_trainer = _tree_trainer(clf)
        if tree_trainer is not None:
            trainer = tree_trainer
        if name in ("loss", "confidence"):
            return ThresholdAttack(signal=name)
        if name == "label-only":
            return LabelOnlyAttack(seed=seed)
        if name == "shadow":
            return ShadowModelAttack(
                n_shadows=n_ref, train_fn=trainer, seed=seed, executor=ctx.executor
            )
        if name == "lira-online":
            return LiRA(
                n_reference=n_ref + n_ref % 2,
                online=True,
                train_fn=trainer,
                seed=seed,
                executor=ctx.executor,
            )
        return LiRA(
            n_reference=n_ref,
            online=False,
            train_fn=trainer,
            reference_seeds=[ctx.unit_seed(self.name, i) for i in range(n_ref)],
            executor=ctx.executor,
        )

    @staticmethod
    def _progress(ctx: AuditContext, what: str, fraction: float) -> None:
        if ctx.progress is not None:
            ctx.progress(what, fraction)

    def _result(
        self,
        results: list[tuple[str, MembershipResult]],
        opts: dict[str, Any],
        sizes: tuple[int, int],
        notes: list[str],
        ctx: AuditContext,
    ) -> CheckResult:
        from bastion.attacks.inference import auc_interval

        metrics: dict[str, Metric] = {}
        findings = []
        series: list[dict[str, Any]] = []
        rows: list[list[Any]] = []
        n_m, n_n = sizes
        for name, res in results:
            kind = _KEYS.get(name, res.kind)
            roc = res.roc()
            auc_ci = auc_interval(
                res.scores,
                truth_of(res),
                n_boot=int(opts["bootstrap"]),
                seed=ctx.unit_seed(f"{self.name}.bootstrap"),
            )
            metrics[f"{kind}.auc"] = Metric(
                roc.auc,
                ci=auc_ci,
                ci_method=f"bootstrap (stratified percentile, {int(opts['bootstrap'])} resamples)",
                n=n_m + n_n,
                higher_is_better=False,
                label=f"{kind}: AUC",
            )
            for fpr, key in ((0.001, "0.1pct"), (0.01, "1pct")):
                k = round(roc.tpr_at(fpr) * roc.n_pos)
                allowed = int(fpr * roc.n_neg + 1e-9)
                metrics[f"{kind}.tpr_at_{key}_fpr"] = Metric.proportion(
                    k,
                    roc.n_pos,
                    higher_is_better=False,
                    label=f"{kind}: TPR at {fpr:.1%} FPR (at most {allowed} of {roc.n_neg} "
                    "non-members above the threshold)",
                )
            eps = res.epsilon()
            metrics[f"{kind}.epsilon_lower"] = Metric(
                eps.lower,
                unit="ε",
                higher_is_better=False,
                label=f"{kind}: empirical ε lower bound (95%, δ=0; {eps.explain()})",
            )
            finding = res.finding()
            if name == "lira-online":
                finding = _with_evidence(finding, finding.evidence, location="online")
            if finding.severity != Severity.INFO:
                evidence = {
                    **without_timings(finding).evidence,
                    "auc_ci": list(auc_ci),
                    "tpr_at_0_1pct_fpr_ci": list(metrics[f"{kind}.tpr_at_0.1pct_fpr"].ci or ()),
                    "tpr_at_1pct_fpr_ci": list(metrics[f"{kind}.tpr_at_1pct_fpr"].ci or ()),
                }
                findings.append(_with_evidence(finding, evidence))
            series.append({"label": f"{kind} (AUC {roc.auc:.3f})", **_log_roc(roc)})
            rows.append(
                [
                    kind,
                    round(roc.auc, 4),
                    [round(v, 4) for v in auc_ci],
                    round(roc.tpr_at(0.001), 4),
                    round(roc.tpr_at(0.01), 4),
                    round(eps.lower, 3),
                    res.queries,
                ]
            )
        worst = max((f.severity.rank for f in findings), default=-1)
        head_name, head = results[0]
        summary = (
            f"{_KEYS.get(head_name, head.kind)} picks out {head.tpr_at(0.001):.1%} of members at "
            f"0.1% FPR and {head.tpr_at(0.01):.1%} at 1% FPR (AUC {head.auc:.3f}; {n_m} members, "
            f"{n_n} non-members)"
        )
        if worst >= 0:
            summary += f"; worst finding {list(Severity)[worst].value}"
        if notes:
            summary += "; " + "; ".join(notes)
        return CheckResult(
            status="failed" if findings else "passed",
            metrics=metrics,
            findings=findings,
            plots=[
                {
                    "kind": "roc",
                    "title": "Membership inference ROC (log axes)",
                    "x_label": "false positive rate",
                    "y_label": "true positive rate",
                    "log_x": True,
                    "log_y": True,
                    "series": series,
                }
            ],
            tables=[
                {
                    "title": "Membership attacks",
                    "columns": [
                        "attack",
                        "AUC",
                        "AUC 95% CI (bootstrap)",
                        "TPR@0.1%FPR",
                        "TPR@1%FPR",
                        "ε lower (95%)",
                        "queries",
                    ],
                    "rows": rows,
                }
            ],
            summary=summary,
            settings={
                **opts,
                "attacks": [name for name, _ in results],
                "members": n_m,
                "non_members": n_n,
                "reference_models": _reference_kind(ctx.model),
            },
        )


def _tree_trainer(clf: Any) -> Any:
    from bastion.models.trees.refit import TreeTrainer

    return TreeTrainer.of_classifier(clf)


def _reference_kind(clf: Any) -> str:
    t = _tree_trainer(clf)
    if t is None:
        return "small network (DefaultTrainer)"
    return f"{t.family}, {t.n_trees} trees, depth {t.max_depth}"


def truth_of(res: MembershipResult) -> torch.Tensor:
    if res.membership is None:  # pragma: no cover - the check always passes the truth
        raise ConfigurationError("membership results of the check carry their ground truth")
    return res.membership


def _with_evidence(finding: Any, evidence: dict[str, Any], **changes: Any) -> Any:
    from dataclasses import replace

    return replace(finding, evidence=evidence, **changes)


def _log_roc(roc: Any, max_points: int = 200) -> dict[str, list[float]]:
    """The ROC's points a log-log plot can show (both rates above 0), thinned evenly on the
    log FPR axis (keeping the highest TPR at each FPR) so the low-FPR end keeps its detail."""
    import numpy as np

    keep = (roc.fpr > 0) & (roc.tpr > 0)
    fpr, tpr = roc.fpr[keep], roc.tpr[keep]
    if fpr.size > max_points:
        targets = np.geomspace(fpr[0], 1.0, max_points)
        idx = np.unique(np.searchsorted(fpr, targets, side="right") - 1)
        fpr, tpr = fpr[idx], tpr[idx]
    return {"x": [float(v) for v in fpr], "y": [float(v) for v in tpr]}
