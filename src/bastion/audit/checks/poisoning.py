"""The ``poisoning`` check: does the training set hold poisoned samples?

Runs poisoned-sample detectors on the training set (``ctx.train``) as the model allows
(``methods: auto``): **activation clustering** (Chen et al. 2018) and **spectral signatures**
(Tran et al. 2018) on the activations of a torch model (default: its penultimate layer, or
``layer``), and **confident learning** (Northcutt et al. 2021, its own cross-validated models
on the data, no model needed) for any other model and for every tabular model. A detector
splits each class in two and
flags the suspect part only when the split is far beyond what a clean class shows, so a clean
set is normally quiet.

On a table, confident learning's out-of-fold probabilities come from tree ensembles of the
model's own family and size (:class:`~bastion.models.trees.refit.TreeTrainer`; scikit-learn's
histogram gradient boosting for a model that is no tree ensemble): trees need no scaling of
the raw columns, where a small network on unscaled amounts and ages is a poor judge of labels.
``poisoning.suspected-mislabels`` (label flips, or honest label noise) is raised when the
flagged share reaches ``min_mislabel_fraction``; its evidence gives the estimated noise rate.
It is ``medium`` (the check fails) from ``serious_mislabel_fraction`` (8%) of the training set
on, and ``low`` below: honest tables carry a few percent of doubtful labels, and confident
learning flags about that much on clean data, so a small share is worth a look, not a failure.

Evidence: the fraction of the training set each method flags (Clopper–Pearson intervals), a
histogram of each method's per-sample scores (flagged and not), and, for images, thumbnails of
flagged samples. Findings: ``poisoning.suspected-backdoor`` for each class whose activations
hold a flagged cluster (location ``class:<label>``), ``poisoning.suspected-mislabels`` when
confident learning flags samples.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from bastion.audit.checks._evidence import (
    check_settings,
    image_pixels,
    is_image_shape,
)
from bastion.audit.contract import AuditContext, Check, CheckResult, Metric, Requirement, register
from bastion.audit.findings import Finding, Severity
from bastion.audit.plan import need_data
from bastion.threat import ATLAS, OWASP

__all__ = ["PoisoningCheck"]

#: histogram bins of the score plots
_BINS = 30


def _torch_module(model: Any) -> Any:
    return (
        getattr(model, "module", None)
        if isinstance(getattr(model, "module", None), torch.nn.Module)
        else None
    )


@register
class PoisoningCheck(Check):
    """Poisoned-sample detection on the training set (see the module docstring)."""

    name: ClassVar[str] = "poisoning"
    title: ClassVar[str] = "Training-data poisoning"
    threat: ClassVar[str] = "data_poisoning"
    practices: ClassVar[tuple[str, ...]] = ("data_validation",)
    #: confident learning needs no model: without one (refused by the scanner, say) it still runs
    needs_model: ClassVar[bool] = False
    defaults: ClassVar[dict[str, Any]] = {
        "methods": "auto",
        "layer": None,
        "thumbnails": 16,
        "min_mislabel_fraction": 0.0,
        "serious_mislabel_fraction": 0.08,
    }

    def requires(self, ctx: AuditContext) -> Requirement | None:
        missing = need_data(ctx, "train", "the training set to scan")
        if missing is not None:
            return missing
        methods = self._methods(ctx)
        if ctx.model is None and any(m != "confident_learning" for m in methods):
            return Requirement(
                "activation clustering and spectral signatures need the loaded model",
                "pass --model, or set settings.poisoning.methods to cl",
            )
        if _torch_module(ctx.model) is None and any(m != "confident_learning" for m in methods):
            return Requirement(
                "activation clustering and spectral signatures need a torch model's activations",
                "set settings.poisoning.methods to cl (confident learning) for other models",
            )
        return None

    def _methods(self, ctx: AuditContext) -> list[str]:
        from bastion.defences.data.scan import parse_methods

        spec = check_settings(self, ctx)["methods"]
        if spec in (None, "auto"):
            if _torch_module(ctx.model) is not None and ctx.domain != "tabular":
                return ["activation_clustering", "spectral_signatures"]
            return ["confident_learning"]
        return parse_methods(spec)

    def inputs(self, ctx: AuditContext) -> dict[str, Any]:
        return {**check_settings(self, ctx), "methods": self._methods(ctx)}

    def run(self, ctx: AuditContext) -> CheckResult:
        from bastion.defences.data.scan import scan_poison

        opts = check_settings(self, ctx)
        methods = self._methods(ctx)
        train = ctx.train
        x, y = train.x, train.y.long()
        if ctx.model is not None:
            x = x.reshape(-1, *ctx.model.input_shape)
        module = _torch_module(ctx.model)
        scan = scan_poison(
            ctx.model if module is not None else None,
            x,
            y,
            methods=methods,
            layer=opts["layer"],
            seed=ctx.unit_seed(self.name),
            cl_train_fn=_cl_trainer(ctx, int(y.max()) + 1 if len(y) else 2),
        )
        n = scan.n
        metrics: dict[str, Metric] = {}
        plots: list[dict[str, Any]] = []
        findings: list[Finding] = []
        rows: list[list[Any]] = []
        for name, rep in scan.methods.items():
            metrics[f"{name}.flagged_fraction"] = Metric.proportion(
                rep.n_flagged,
                n,
                higher_is_better=False,
                label=f"training samples flagged by {name.replace('_', ' ')}",
            )
            scores = rep.scores.double()
            finite = torch.isfinite(scores)
            plots.append(
                {
                    "kind": "histogram",
                    "title": f"{name.replace('_', ' ')}: per-sample scores",
                    "x_label": "suspicion score (higher is more suspicious)",
                    "y_label": "samples",
                    "series": [
                        {
                            "label": "not flagged",
                            "values": [float(v) for v in scores[finite & ~rep.flags]],
                        },
                        {
                            "label": "flagged",
                            "values": [float(v) for v in scores[finite & rep.flags]],
                        },
                    ],
                }
            )
            suspicious = [c for c in rep.classes if c.get("suspicious")]
            rows.append(
                [
                    name,
                    rep.n_flagged,
                    round(rep.n_flagged / n, 4) if n else 0.0,
                    ", ".join(str(c["label"]) for c in suspicious) or "none",
                ]
            )
            floor = float(opts["min_mislabel_fraction"])
            if name == "confident_learning" and rep.n_flagged and rep.n_flagged >= floor * n:
                serious = rep.n_flagged >= float(opts["serious_mislabel_fraction"]) * n
                findings.append(self._mislabel_finding(rep, n, serious=serious))
            for c in suspicious:
                findings.append(self._backdoor_finding(name, c, n))
        findings = _merge_by_location(findings)
        any_flags = scan.flagged_by_any()
        metrics["flagged_fraction"] = Metric.proportion(
            int(any_flags.sum()),
            n,
            higher_is_better=False,
            label="training samples flagged by any method",
        )
        shape = tuple(x.shape[1:])
        if is_image_shape(shape) and bool(any_flags.any()):
            plots.append(self._thumbnails(x, y, any_flags, int(opts["thumbnails"]), train.bounds))
        return CheckResult(
            status="failed" if any(f.severity.rank >= Severity.MEDIUM.rank for f in findings)
            else "passed",
            metrics=metrics,
            findings=findings,
            plots=plots,
            tables=[
                {
                    "title": "Poisoned-sample detection",
                    "columns": ["method", "flagged", "fraction", "suspicious classes"],
                    "rows": rows,
                }
            ],
            summary=(
                f"{int(any_flags.sum())} of {n} training samples flagged "
                f"({', '.join(m.replace('_', ' ') for m in methods)})"
                + (
                    f"; suspected backdoor in {', '.join(f.location or '' for f in backdoors)}"
                    if (backdoors := [f for f in findings
                                      if f.id == "poisoning.suspected-backdoor"])
                    else ""
                )
            ),
            settings={
                **opts,
                "methods": methods,
                "flagged_indices": torch.nonzero(any_flags).flatten().tolist(),
            },
        )

    @staticmethod
    def _thumbnails(
        x: torch.Tensor,
        y: torch.Tensor,
        flags: torch.Tensor,
        limit: int,
        bounds: tuple[float, float],
    ) -> dict[str, Any]:
        rows = []
        idx = torch.nonzero(flags).flatten()
        for c in sorted(int(v) for v in torch.unique(y[idx])):
            chosen = idx[y[idx] == c][: max(1, limit // 2)]
            rows.append(
                {
                    "caption": f"labelled {c}: {int((y[idx] == c).sum())} flagged",
                    "cells": [
                        {"label": f"#{int(i)}", "pixels": image_pixels(x[i], bounds)}
                        for i in chosen.tolist()
                    ],
                }
            )
            if sum(len(r["cells"]) for r in rows) >= limit:
                break
        return {"kind": "images", "title": "Flagged training samples", "images": rows}

    @staticmethod
    def _backdoor_finding(method: str, cls: dict[str, Any], n: int) -> Finding:
        return Finding(
            id="poisoning.suspected-backdoor",
            title=(
                f"Class {cls['label']}: {cls['minority_size']} of its {cls['n']} training samples "
                f"form a separate cluster ({method.replace('_', ' ')}, separation "
                f"{float(cls['statistic']):.1f})"
            ),
            severity=Severity.HIGH,
            threat="data_poisoning",
            atlas=(ATLAS["poison_training_data"], ATLAS["backdoor_trigger"]),
            owasp=(OWASP["data_poisoning"], OWASP["model_poisoning"]),
            location=f"class:{cls['label']}",
            evidence={"methods": [method], "class": cls, "n_train": n},
            remediation=(
                "Inspect the flagged samples (settings.flagged_indices, thumbnails) and their "
                "sources; drop or relabel them and retrain, then measure the backdoor's "
                "success rate and the clean accuracy (bastion.defences.data.repair)."
            ),
        )

    @staticmethod
    def _mislabel_finding(rep: Any, n: int, *, serious: bool = True) -> Finding:
        k = rep.n_flagged
        noise = rep.stats.get("estimated_noise_rate")
        return Finding(
            id="poisoning.suspected-mislabels",
            title=f"{k} training samples ({k / n:.1%}) look mislabelled (confident learning)",
            severity=Severity.MEDIUM if serious else Severity.LOW,
            threat="data_poisoning",
            atlas=(ATLAS["poison_training_data"],),
            owasp=(OWASP["data_poisoning"],),
            evidence={"n_flagged": k, "n_train": n, "estimated_noise_rate": noise,
                      "flagged_indices": torch.nonzero(rep.flags).flatten().tolist()[:100]},
            remediation="Review the flagged labels; label-flipping poison and honest label "
            "noise both show here. Fix or drop them and retrain.",
        )


def _cl_trainer(ctx: AuditContext, k: int) -> Any:
    """Confident learning's fold models for a table: the model's tree family, else histogram
    gradient boosting; ``None`` (small networks) for other data."""
    if ctx.domain != "tabular":
        return None
    from bastion.models.trees.refit import TreeTrainer

    trainer = TreeTrainer.of_classifier(ctx.model)
    if trainer is not None:
        return trainer
    return TreeTrainer(family="hist-gradient-boosting", n_trees=100, num_classes=max(k, 2))


def _merge_by_location(findings: list[Finding]) -> list[Finding]:
    """One backdoor finding per class, naming every method that flagged it."""
    from dataclasses import replace

    out: dict[tuple[str, str | None], Finding] = {}
    for f in findings:
        key = (f.id, f.location)
        if key in out:
            prev = out[key]
            methods = [*prev.evidence.get("methods", []), *f.evidence.get("methods", [])]
            out[key] = replace(prev, evidence={**prev.evidence, "methods": methods})
        else:
            out[key] = f
    return list(out.values())
