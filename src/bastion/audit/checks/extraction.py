"""The ``extraction`` check: how faithful a copy can an attacker make within the query budget?

The attacker queries the model through what the threat model lets them see (a white-box
threat still steals through the prediction API, which answers scores) and trains a copy with
the strongest strategy that access allows:

- scores: **Knockoff Nets** (soft labels on a natural pool of inputs) and, when the budget
  covers more than ``d + 1`` queries (``d`` input features), **equation solving** with up to
  ``2 (d + 1)`` queries, which recovers a linear softmax model exactly (kept when the residual
  of its over-determined fit says the model is linear);
- labels only: **Copycat** (hard labels on the pool).

A tree-ensemble model (XGBoost, LightGBM, scikit-learn forests) is stolen by **sampling**
instead (:class:`~bastion.attacks.extraction.sampling.TreeSampling`, strategy ``tree``): a
surrogate tree ensemble trained on the model's labels for pool rows and rows redrawn inside
the data contract's rules (``ctx.schema``). On tables, equation solving queries inside the
columns' own ranges (the schema's, else the pool's), so a logistic regression on raw features
is recovered exactly too.

The pool is the training set's inputs (unlabelled) when given, else the leading
``pool_fraction`` of the test set; fidelity (agreement with the model's labels) is measured on
the test set (the rest of it). The budget is spent in ``points`` equal slices with a copy
trained after each, so fidelity against queries is a curve; a pool strategy can spend at most
one query per pool input. When the threat model names the served ``output_policy`` (top-k,
rounding, label-only, noise, reverse sigmoid), the same attack runs against the model answering
through it, as a second curve. A finding ``extraction.high-fidelity`` is raised when a copy
agrees with the model on at least ``threshold`` of the held-out inputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch

from bastion.audit.checks._evidence import check_settings
from bastion.audit.contract import AuditContext, Check, CheckResult, Metric, Requirement, register
from bastion.audit.findings import Finding, Severity
from bastion.audit.plan import effective_access
from bastion.errors import ConfigurationError
from bastion.threat import ATLAS, OWASP

__all__ = ["ExtractionCheck", "policy_from"]

#: relative residual of equation solving below which the model counts as linear softmax
_LINEAR_RESIDUAL = 1e-3
#: strategies that query a natural pool (at most once per pool input)
_POOL = ("knockoff", "copycat", "adaptive")
#: transfer rate of adversarial examples from the copy that raises a finding
_TRANSFER_FINDING = 0.3


def policy_from(spec: Any) -> Any:
    """An :class:`~bastion.defences.output.OutputPolicy` from a policy object, a string
    (``rounding:2``) or a mapping (``{name: rounding, decimals: 2}``)."""
    from bastion.attacks.extraction.catalog import parse_policy
    from bastion.defences.output import OutputPolicy

    if isinstance(spec, OutputPolicy):
        return spec
    if isinstance(spec, str):
        return parse_policy(spec)
    if isinstance(spec, Mapping):
        name = str(spec.get("name") or spec.get("kind") or spec.get("policy") or "")
        args = [str(v) for k, v in spec.items() if k not in ("name", "kind", "policy")]
        return parse_policy(f"{name}:{','.join(args)}" if args else name)
    raise ConfigurationError(
        f"output_policy must be a policy name such as rounding:2 or a mapping, got {spec!r}"
    )


def _is_tree_model(clf: Any) -> bool:
    """Whether ``clf`` is a tree ensemble (its structure exposed)."""
    return getattr(getattr(clf, "base", clf), "ensemble", None) is not None


def _query_box(ctx: AuditContext, x_pool: torch.Tensor) -> tuple[Any, Any]:
    """Per-column query ranges of a table: the schema's where finite, else the pool's."""
    rows = x_pool.reshape(len(x_pool), -1).double()
    low, high = rows.min(0).values.numpy(), rows.max(0).values.numpy()
    schema = ctx.schema
    if schema is not None and schema.n_features == low.shape[0]:
        import numpy as np

        low = np.where(np.isfinite(schema.low), schema.low, low)
        high = np.where(np.isfinite(schema.high), schema.high, high)
    return low, high


@register
class ExtractionCheck(Check):
    """Model stealing through the prediction API (see the module docstring)."""

    name: ClassVar[str] = "extraction"
    title: ClassVar[str] = "Model extraction"
    threat: ClassVar[str] = "model_stealing"
    practices: ClassVar[tuple[str, ...]] = ("model_monitoring", "secure_data_access")
    defaults: ClassVar[dict[str, Any]] = {
        "budget": None,
        "points": 4,
        "epochs": 20,
        "pool_fraction": 0.7,
        "surrogate": "auto",
        "threshold": 0.9,
        "strategy": "auto",
        "policies": [],
        "transfer_eps": 0.0,
    }

    def requires(self, ctx: AuditContext) -> Requirement | None:
        if ctx.model is None:
            return Requirement("needs a loaded model", "pass --model with a loadable model")
        if ctx.test is None:
            return Requirement(
                "needs --test (held-out inputs to measure how well the copy agrees)",
                "pass --test test.npz",
            )
        return None

    def inputs(self, ctx: AuditContext) -> dict[str, Any]:
        policy = ctx.output_policy
        return {
            **check_settings(self, ctx),
            "access": effective_access(ctx),
            "query_budget": ctx.query_budget,
            "output_policy": policy
            if policy is None or isinstance(policy, str | Mapping)
            else repr(policy),
        }

    def run(self, ctx: AuditContext) -> CheckResult:
        from bastion.attacks.extraction import black_box

        opts = check_settings(self, ctx)
        budget = int(opts["budget"] or ctx.query_budget or 10_000)
        points, threshold = int(opts["points"]), float(opts["threshold"])
        frac = float(opts["pool_fraction"])
        if budget < 1 or points < 1 or not 0.0 < threshold <= 1.0 or not 0.0 < frac < 1.0:
            raise ConfigurationError(
                "extraction: budget and points must be at least 1, threshold in (0, 1] and "
                "pool_fraction in (0, 1)"
            )
        clf = ctx.model
        shape = tuple(clf.input_shape)
        test = ctx.test
        if ctx.train is not None:
            x_pool = ctx.train.x.reshape(-1, *shape)
            x_eval, y_eval = test.x.reshape(-1, *shape), test.y
        else:
            cut = max(1, min(len(test) - 1, round(frac * len(test))))
            x_pool = test.x[:cut].reshape(-1, *shape)
            x_eval, y_eval = test.x[cut:].reshape(-1, *shape), test.y[cut:]
        access = effective_access(ctx)
        api: Literal["scores", "labels"] = "labels" if access == "labels" else "scores"
        curves = [
            self._steal(
                black_box(clf, access=api), api, budget, x_pool, x_eval, y_eval, opts, ctx, "model"
            )
        ]
        specs = [] if ctx.output_policy is None else [ctx.output_policy]
        policies = [policy_from(spec) for spec in [*specs, *(opts["policies"] or [])]]
        for policy in policies:
            from bastion.defences.output import HardenedClassifier

            served = HardenedClassifier(clf, policy)
            policy_api: Literal["scores", "labels"] = (
                "labels" if policy.label_only or api == "labels" else "scores"
            )
            view = served if policy_api == "scores" else black_box(served, access="labels")
            label = f"through {policy.describe()}"
            curves.append(
                self._steal(view, policy_api, budget, x_pool, x_eval, y_eval, opts, ctx, label)
            )
        transfer = None
        eps = float(opts["transfer_eps"] or 0.0)
        head = curves[0]["best"]["result"]
        if eps > 0 and head.surrogate is not None:
            from bastion.attacks.extraction import transfer_rate

            transfer = transfer_rate(head, clf, x_eval, y_eval, eps=eps)
        return self._result(curves, budget, threshold, len(x_eval), access, policies, transfer)

    def _steal(
        self,
        victim: Any,
        api: str,
        budget: int,
        x_pool: torch.Tensor,
        x_eval: torch.Tensor,
        y_eval: torch.Tensor,
        opts: dict[str, Any],
        ctx: AuditContext,
        label: str,
    ) -> dict[str, Any]:
        """The strongest attack on ``victim`` and its fidelity against queries."""
        from bastion.attacks.extraction import EquationSolving
        from bastion.attacks.extraction.catalog import build_extraction_attack

        shape = tuple(victim.input_shape)
        d = math.prod(shape)
        surrogate = opts["surrogate"]
        if surrogate == "auto":
            surrogate = "cnn" if len(shape) == 3 and min(shape[1:]) >= 16 else "mlp"
        strategy = str(opts["strategy"])
        if strategy == "auto":
            strategy = "knockoff" if api == "scores" else "copycat"
            if _is_tree_model(ctx.model):
                strategy = "tree"
        if strategy == "equation" and api == "labels":
            strategy = "copycat"  # the strongest attack on labels: equation solving needs scores
        # a pool strategy asks each pool input once; the others synthesise their queries
        spend = min(budget, len(x_pool)) if strategy in _POOL else budget
        if ctx.progress is not None:
            ctx.progress(f"{strategy} {label}", 0.1)
        attack: Any
        if strategy == "tree":
            from bastion.attacks.extraction.sampling import TreeSampling

            attack = TreeSampling(query_budget=spend, schema=ctx.schema,
                                  rounds=int(opts["points"]),
                                  seed=ctx.unit_seed(f"{self.name}.{label}"))
        else:
            attack = build_extraction_attack(
                strategy,
                query_budget=spend,
                labels="soft" if api == "scores" else "hard",
                surrogate=surrogate,
                rounds=int(opts["points"]),
                epochs=int(opts["epochs"]),
                seed=ctx.unit_seed(f"{self.name}.{label}"),
            )
        res = attack.extract(victim, x_pool=x_pool, x_eval=x_eval, y_eval=y_eval)
        best = {"strategy": strategy, "result": res}
        equation = None
        # a tree ensemble is piecewise constant: no linear model to solve for
        linear_possible = not _is_tree_model(ctx.model)
        if api == "scores" and budget >= d + 2 and opts["strategy"] == "auto" and linear_possible:
            # more equations than unknowns, so the residual tells a linear model from others
            low, high = _query_box(ctx, x_pool) if ctx.domain == "tabular" else (None, None)
            eq = EquationSolving(
                query_budget=budget,
                queries=min(budget, 2 * (d + 1)),
                seed=ctx.unit_seed(f"{self.name}.eq"),
                low=low,
                high=high,
            )
            eq_res = eq.extract(victim, x_eval=x_eval, y_eval=y_eval)
            residual = eq_res.extra.get("residual")
            # a fit that could not use enough uncensored scores says so (status) even when
            # the equations it did use fit
            exact = eq_res.extra.get("status", "exact") == "exact"
            if residual is not None and residual < _LINEAR_RESIDUAL and exact:
                equation = eq_res
                if (eq_res.fidelity or 0.0) >= (res.fidelity or 0.0):
                    best = {"strategy": "equation", "result": eq_res}
        return {
            "label": label,
            "api": api,
            "learning": res,
            "strategy": strategy,
            "equation": equation,
            "best": best,
        }

    def _result(
        self,
        curves: list[dict[str, Any]],
        budget: int,
        threshold: float,
        n_eval: int,
        access: str,
        policies: list[Any],
        transfer: Any,
    ) -> CheckResult:
        metrics: dict[str, Metric] = {}
        series: list[dict[str, Any]] = []
        findings: list[Finding] = []
        rows: list[list[Any]] = []
        for i, c in enumerate(curves):
            key = "fidelity" if i == 0 else "fidelity_under_policy"
            if i > 1:
                key = f"fidelity_under_policy_{i}"
            best = c["best"]["result"]
            fid = float(best.fidelity or 0.0)
            metric = Metric.proportion(
                round(fid * n_eval),
                n_eval,
                higher_is_better=False,
                label=f"agreement of the copy with the model ({c['label']}, "
                f"{c['best']['strategy']}, {best.queries} queries)",
            )
            metrics[key] = metric
            if best.accuracy is not None:
                metrics[f"{key.replace('fidelity', 'copy_accuracy')}"] = Metric.proportion(
                    round(best.accuracy * n_eval), n_eval, label=f"copy accuracy ({c['label']})"
                )
            hist = c["learning"].history
            lo_hi = [Metric.proportion(round(f * n_eval), n_eval).ci for _, f in hist]
            series.append(
                {
                    "label": f"{c['strategy']} ({c['api']}, {c['label']})",
                    "x": [int(q) for q, _ in hist],
                    "y": [float(f) for _, f in hist],
                    "lo": [float(ci[0]) if ci else 0.0 for ci in lo_hi],
                    "hi": [float(ci[1]) if ci else 1.0 for ci in lo_hi],
                }
            )
            if c["equation"] is not None:
                eq = c["equation"]
                series.append(
                    {
                        "label": f"equation solving ({c['label']})",
                        "x": [int(eq.queries)],
                        "y": [float(eq.fidelity or 0.0)],
                    }
                )
            rows.append(
                [
                    c["label"],
                    c["best"]["strategy"],
                    c["api"],
                    best.queries,
                    budget,
                    round(fid, 4),
                    None if best.accuracy is None else round(best.accuracy, 4),
                ]
            )
            if fid >= threshold:
                where = None if i == 0 else f"output-policy:{policies[i - 1].describe()}"
                findings.append(self._finding(c, fid, metric, budget, threshold, where))
        head = curves[0]["best"]["result"]
        summary = (
            f"a copy trained on {head.queries} queries ({curves[0]['best']['strategy']}, "
            f"{curves[0]['api']}) agrees with the model on {float(head.fidelity or 0):.1%} of "
            f"{n_eval} held-out inputs"
        )
        for policy, c in zip(policies, curves[1:], strict=True):
            pb = c["best"]["result"]
            summary += f"; through {policy.describe()}: {float(pb.fidelity or 0):.1%}"
        if transfer is not None:
            metrics["transfer_rate"] = Metric.proportion(
                round(transfer.transfer_rate * transfer.victim_correct),
                max(transfer.victim_correct, 1),
                higher_is_better=False,
                label=f"adversarial examples crafted on the copy (PGD, eps {transfer.eps}) that "
                "fool the model, of the inputs it classified correctly",
            )
            summary += f"; {transfer.transfer_rate:.1%} of PGD examples from the copy transfer"
            if transfer.transfer_rate >= _TRANSFER_FINDING:
                findings.append(self._transfer_finding(transfer))
        return CheckResult(
            status="failed" if findings else "passed",
            metrics=metrics,
            findings=findings,
            plots=[
                {
                    "kind": "line",
                    "title": "Fidelity of the copy against queries",
                    "x_label": "queries",
                    "y_label": "fidelity (agreement with the model)",
                    "series": series,
                }
            ],
            tables=[
                {
                    "title": "Extraction",
                    "columns": [
                        "victim",
                        "strategy",
                        "answers",
                        "queries",
                        "budget",
                        "fidelity",
                        "copy accuracy",
                    ],
                    "rows": rows,
                }
            ],
            summary=summary,
            settings={
                "budget": budget,
                "threshold": threshold,
                "access": access,
                "output_policies": [p.describe() for p in policies],
                "transfer": None if transfer is None else transfer.to_dict(),
            },
        )

    def _finding(
        self,
        curve: dict[str, Any],
        fid: float,
        metric: Metric,
        budget: int,
        threshold: float,
        location: str | None,
    ) -> Finding:
        best = curve["best"]["result"]
        sure = metric.ci is not None and metric.ci[0] >= threshold
        return Finding(
            id="extraction.high-fidelity",
            title=(
                f"A copy of the model agrees with it on {fid:.1%} of held-out inputs after "
                f"{best.queries} queries ({curve['best']['strategy']}, {curve['label']})"
            ),
            severity=Severity.HIGH if sure else Severity.MEDIUM,
            threat="model_stealing",
            atlas=(ATLAS["model_extraction"],),
            owasp=(OWASP["model_theft"],),
            location=location,
            evidence={
                "fidelity": fid,
                "fidelity_ci": None if metric.ci is None else list(metric.ci),
                "queries": best.queries,
                "query_budget": budget,
                "threshold": threshold,
                "strategy": curve["best"]["strategy"],
                "answers": curve["api"],
                "copy_accuracy": best.accuracy,
                "model_accuracy": best.victim_accuracy,
            },
            remediation=(
                "Limit queries per client (quotas, rate limits) and monitor for extraction "
                "patterns (bastion serve's extraction detector); return labels or rounded "
                "top-1 scores instead of full probability vectors, and audit the served output "
                "policy (threat.output_policy)."
            ),
        )

    @staticmethod
    def _transfer_finding(transfer: Any) -> Finding:
        rate = transfer.transfer_rate
        return Finding(
            id="extraction.transferable-adversarial-examples",
            title=(
                f"Adversarial examples crafted on the stolen copy fool the model on {rate:.1%} "
                f"of the inputs it classified correctly (PGD, eps {transfer.eps})"
            ),
            severity=Severity.HIGH if rate >= 0.6 else Severity.MEDIUM,
            threat="model_stealing",
            atlas=(ATLAS["black_box_transfer"], ATLAS["model_extraction"]),
            owasp=(OWASP["model_theft"], OWASP["input_manipulation"]),
            evidence=transfer.to_dict(),
            remediation=(
                "A faithful copy makes the model open to white-box evasion: harden it against "
                "evasion (adversarial training) and limit what the API returns and how often."
            ),
        )
