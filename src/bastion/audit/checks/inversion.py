"""The ``inversion`` check: what does the model give away about its training data's content?

- **Images** (a ``(C, H, W)`` input and gradients under the threat model): MI-Face
  (Fredrikson et al. 2015) reconstructs one representative input per class (at most
  ``max_classes``), shown beside the class's mean training image. The evidence is the share of
  reconstructions nearer (MSE) their own class mean than any other class's (Clopper–Pearson
  interval over the classes) and their SSIM to it; ``inversion.miface`` is raised when at least
  half of them are nearer their own class mean, rated by their structure (mean SSIM: high from
  0.5 with 80% nearer, medium from 0.3, else low: noise-like reconstructions leak little).
- **Tabular data** with a sensitive column (``settings.inversion.sensitive_column``, or
  ``--sensitive-column``: a column index, or a name: a column of the audit's named tables, or
  one listed in ``settings.inversion.features``): attribute inference on the
  training members, whose sensitive value the attacker infers from the other columns, the
  label and the model's scores, against a baseline that never queries the model (fitted on the
  test set, the attacker's auxiliary data). ``inversion.attribute-inference`` is raised when
  the model adds at least ``min_advantage`` accuracy over the baseline. The candidate values
  are the data contract's categories of the column when the audit has one (``ctx.schema``),
  else the values seen in the test set. Any score-answering model takes part: a tree
  ensemble's probabilities as much as a network's.

Anything else is ``not_run`` with the reason (a score-only image model: MI-Face here needs
gradients; a tabular model without a named sensitive column).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from bastion.audit.checks._evidence import (
    check_settings,
    image_pixels,
    is_image_shape,
    without_timings,
)
from bastion.audit.contract import AuditContext, Check, CheckResult, Metric, Requirement, register
from bastion.audit.findings import Severity
from bastion.audit.plan import effective_access, need_data
from bastion.errors import ConfigurationError

__all__ = ["InversionCheck"]


@register
class InversionCheck(Check):
    """Model inversion (images) and attribute inference (tabular data)."""

    name: ClassVar[str] = "inversion"
    title: ClassVar[str] = "Model inversion and attribute inference"
    threat: ClassVar[str] = "inversion_membership"
    practices: ClassVar[tuple[str, ...]] = ("privacy_protection", "model_validation")
    defaults: ClassVar[dict[str, Any]] = {
        "steps": 150,
        "lr": 0.05,
        "tv": 0.3,
        "max_classes": 10,
        "classes": None,
        "method": "white-box",
        "samples": 20,
        "max_queries": None,
        "sensitive_column": None,
        "features": None,
        "max_records": 500,
        "min_advantage": 0.05,
    }

    def requires(self, ctx: AuditContext) -> Requirement | None:
        if ctx.model is None:
            return Requirement("needs a loaded model", "pass --model with a loadable model")
        shape = tuple(ctx.model.input_shape)
        if ctx.domain == "image" or is_image_shape(shape):
            method = check_settings(self, ctx)["method"]
            if method == "score" and effective_access(ctx) == "labels":
                return Requirement(
                    "score-based MI-Face needs the model's scores; it answers labels only",
                    "audit with threat access scores or white-box",
                )
            if method != "score" and effective_access(ctx) != "white-box":
                return Requirement(
                    "MI-Face inversion needs the model's gradients; the threat model or the "
                    f"model allows {effective_access(ctx)} only",
                    "audit a white-box model (a torch file) with threat access white-box, or set "
                    "settings.inversion.method to score (many more queries)",
                )
            if ctx.train is None and ctx.test is None:
                return Requirement(
                    "needs --train (class means to compare the reconstructions with)",
                    "pass --train train.npz",
                )
            return None
        if len(shape) != 1:
            return Requirement(
                f"inputs of shape {shape} are neither images nor table rows",
                None,
            )
        if check_settings(self, ctx).get("sensitive_column") is None:
            return Requirement(
                "tabular model: no sensitive column is named for attribute inference",
                "set settings.inversion.sensitive_column (a column index or name) in the "
                "audit config",
            )
        if effective_access(ctx) == "labels":
            return Requirement(
                "attribute inference needs the model's scores; it answers labels only",
                "audit with threat access scores or white-box",
            )
        return need_data(ctx, "train", "the members whose sensitive value is inferred") or (
            need_data(ctx, "test", "the attacker's auxiliary data for the baseline")
        )

    def inputs(self, ctx: AuditContext) -> dict[str, Any]:
        return {**check_settings(self, ctx), "access": effective_access(ctx)}

    def run(self, ctx: AuditContext) -> CheckResult:
        opts = check_settings(self, ctx)
        if len(tuple(ctx.model.input_shape)) == 1 and ctx.domain != "image":
            return self._attribute(ctx, opts)
        return self._miface(ctx, opts)

    # -- images ------------------------------------------------------------------------------
    def _miface(self, ctx: AuditContext, opts: dict[str, Any]) -> CheckResult:
        from bastion.attacks.inference import MIFace, reconstruction_metrics

        clf = ctx.model
        ref = ctx.train if ctx.train is not None else ctx.test
        role = "training" if ctx.train is not None else "test"
        present = sorted(int(c) for c in torch.unique(ref.y))
        if opts["classes"] is not None:
            classes = [int(c) for c in opts["classes"]]
            absent = [c for c in classes if c not in present]
            if absent:
                raise ConfigurationError(
                    f"inversion: the {role} data has no samples of classes {absent} to compare "
                    "their reconstructions with"
                )
        else:
            classes = present[: int(opts["max_classes"])]
        if not classes:
            raise ConfigurationError("inversion: the reference data holds no labelled samples")
        method = "score" if opts["method"] == "score" else "white-box"
        attack = MIFace(
            steps=int(opts["steps"]),
            lr=float(opts["lr"]),
            tv=float(opts["tv"]),
            samples=int(opts["samples"]),
            method=method,
            seed=ctx.unit_seed(self.name),
        )
        victim = clf
        if opts["max_queries"] is not None:
            from bastion.attacks.extraction import black_box

            if method == "score":
                victim = black_box(clf, access="scores", query_budget=int(opts["max_queries"]))
            else:
                planned = attack.planned_queries(clf, len(classes))
                if planned > int(opts["max_queries"]):
                    raise ConfigurationError(
                        f"inversion needs {planned} queries for {len(classes)} classes but the "
                        f"budget is {int(opts['max_queries'])}; raise it or invert fewer classes"
                    )
        res = attack.infer(victim, classes)
        x_ref = ref.x.reshape(-1, *clf.input_shape)
        rm = reconstruction_metrics(res, x_ref, ref.y)
        k = int((rm.mse < rm.mse_other).sum())
        close = Metric.proportion(
            k,
            len(classes),
            higher_is_better=False,
            label=f"reconstructions nearer their own class's {role} mean than any other's",
        )
        finding = without_timings(rm.finding(res))
        mean_ssim = float(rm.ssim.mean())
        severity = _miface_severity(close.value or 0.0, mean_ssim)
        finding = _replace(
            finding,
            severity=severity,
            title=f"{finding.title} (mean SSIM {mean_ssim:.2f} to the class means)",
        )
        findings = [finding] if close.value is not None and close.value >= 0.5 else []
        rows, table = [], []
        for i, c in enumerate(classes):
            mean = x_ref[ref.y == c].mean(0)
            rows.append(
                {
                    "caption": f"class {c}",
                    "cells": [
                        {
                            "label": f"reconstruction (p={float(res.confidence[i]):.2f})",
                            "pixels": image_pixels(res.x[i], clf.bounds),
                        },
                        {"label": f"{role} mean", "pixels": image_pixels(mean, clf.bounds)},
                    ],
                }
            )
            table.append(
                [
                    c,
                    round(float(res.confidence[i]), 4),
                    round(float(rm.mse[i]), 5),
                    round(float(rm.mse_other[i]), 5),
                    round(float(rm.ssim[i]), 4),
                ]
            )
        return CheckResult(
            status="failed" if findings else "passed",
            metrics={
                "closer_to_own_mean": close,
                "mean_ssim": Metric(
                    float(rm.ssim.mean()),
                    n=len(classes),
                    higher_is_better=False,
                    label=f"mean SSIM of reconstructions to the {role} mean",
                ),
                "mean_confidence": Metric(
                    float(res.confidence.mean()),
                    n=len(classes),
                    label="model's mean confidence in the reconstructions",
                ),
            },
            findings=findings,
            plots=[
                {
                    "kind": "images",
                    "title": f"MI-Face reconstructions beside the {role} class means",
                    "images": rows,
                }
            ],
            tables=[
                {
                    "title": "MI-Face per class",
                    "columns": [
                        "class",
                        "confidence",
                        "MSE to own mean",
                        "MSE to nearest other mean",
                        "SSIM to own mean",
                    ],
                    "rows": table,
                }
            ],
            summary=(
                f"{k} of {len(classes)} MI-Face reconstructions are nearer their own class's "
                f"{role} mean than any other's (mean SSIM {float(rm.ssim.mean()):.3f}, "
                f"{res.queries} {'gradient' if method == 'white-box' else 'score'} queries)"
            ),
            settings={**opts, "method": method, "classes": classes},
        )

    # -- tables ------------------------------------------------------------------------------
    def _attribute(self, ctx: AuditContext, opts: dict[str, Any]) -> CheckResult:
        from bastion.attacks.inference import AttributeInference

        clf, train, test = ctx.model, ctx.train, ctx.test
        opts = {**opts, "features": opts.get("features") or (
            list(ctx.feature_names) if ctx.feature_names else None)}
        col = _column(opts, clf.input_shape[0])
        g = torch.Generator().manual_seed(ctx.unit_seed(self.name))
        idx = torch.randperm(len(train), generator=g)[: int(opts["max_records"])]
        x, y = train.x[idx], train.y[idx]
        values = None
        if ctx.schema is not None and ctx.schema.n_features == clf.input_shape[0]:
            allowed = ctx.schema.allowed_values(col)
            if allowed is not None and 2 <= len(allowed) <= 32:
                values = [float(v) for v in allowed]
        attack = AttributeInference(feature=col, values=values).fit(clf, test.x, test.y)
        res = attack.infer(clf, x, y, truth=x[:, col])
        n = int(x.shape[0])
        acc = Metric.proportion(
            round(res.accuracy * n),
            n,
            higher_is_better=False,
            label="model-assisted accuracy on the members",
        )
        base = Metric.proportion(
            round(res.baseline_accuracy * n), n, label="baseline accuracy (never queries the model)"
        )
        finding = without_timings(res.finding())
        name = _column_name(opts, col)
        finding = _replace(
            finding,
            location=f"feature:{name}",
            title=finding.title.replace(f"feature {col}", f"feature {name}"),
        )
        findings = (
            [finding]
            if res.advantage >= float(opts["min_advantage"]) and finding.severity != Severity.INFO
            else []
        )
        return CheckResult(
            status="failed" if findings else "passed",
            metrics={
                "attribute_accuracy": acc,
                "baseline_accuracy": base,
                "advantage": Metric(
                    res.advantage,
                    n=n,
                    higher_is_better=False,
                    label="accuracy the model adds over the baseline",
                ),
            },
            findings=findings,
            tables=[
                {
                    "title": f"Attribute inference of {name}",
                    "columns": ["records", "values", "model-assisted", "baseline", "advantage"],
                    "rows": [
                        [
                            n,
                            len(res.values),
                            round(res.accuracy, 4),
                            round(res.baseline_accuracy, 4),
                            round(res.advantage, 4),
                        ]
                    ],
                }
            ],
            summary=(
                f"the model lets an attacker infer {name} of {res.accuracy:.1%} of its training "
                f"members, against {res.baseline_accuracy:.1%} without it "
                f"({res.advantage:+.1%})"
            ),
            settings={**opts, "column_index": col},
        )


def _miface_severity(closer: float, mean_ssim: float) -> Severity:
    """How much the reconstructions give away: nearer their own class mean than any other's
    is only a hint when they still look like noise, so the rating also needs structure (SSIM
    to the class mean): high from 0.5, medium from 0.3, low below."""
    if closer >= 0.8 and mean_ssim >= 0.5:
        return Severity.HIGH
    if closer >= 0.5 and mean_ssim >= 0.3:
        return Severity.MEDIUM
    return Severity.LOW


def _column(opts: dict[str, Any], width: int) -> int:
    spec = opts["sensitive_column"]
    names = opts.get("features")
    if isinstance(spec, str) and not spec.isdigit():
        if not names or spec not in names:
            known = f" (the columns are {', '.join(map(str, names[:30]))})" if names else ""
            raise ConfigurationError(
                f"inversion: sensitive_column {spec!r} is not a known column{known}; give "
                "its index, a column of the audit's named tables, or list the column names in "
                "settings.inversion.features"
            )
        col = list(names).index(spec)
    else:
        col = int(spec)
    if not 0 <= col < width:
        raise ConfigurationError(
            f"inversion: sensitive_column {col} is outside the model's {width} columns"
        )
    return col


def _column_name(opts: dict[str, Any], col: int) -> str:
    names = opts.get("features")
    return str(names[col]) if names and col < len(names) else f"column {col}"


def _replace(finding: Any, **changes: Any) -> Any:
    from dataclasses import replace

    return replace(finding, **changes)
