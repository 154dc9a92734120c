"""The ``data`` check: a data contract inferred from the training set, the test set validated
against it.

Findings: ``data.contract-violation`` (test samples break a rule the training data obeys:
range, shape, NaN; located by the rule), ``data.drift`` (features whose distribution moved,
Kolmogorov–Smirnov with Benjamini–Hochberg control), ``data.label-shift`` (the class mix
differs, chi-square), and ``data.train-test-overlap`` (test samples that are also training
samples, which inflates every accuracy in the report). Histograms of the most drifted
features go into the report as plots.

Tabular audits: with the audit's data contract (``--contract``, ``ctx.contract``) the contract
is the reference instead: the training and test tables are validated against it as they are
(a CSV or Parquet file is read again, with its own column types and its label column), every
broken rule of either is a ``data.contract-violation`` located ``<role>:<rule>`` and naming
its columns, and the test set's drift is measured against the contract's reference. Without a
contract, a contract inferred from the named training columns names the columns too.
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar

import numpy as np

from bastion.audit.contract import (
    AuditContext,
    Check,
    CheckResult,
    Metric,
    Requirement,
    Status,
    register,
)
from bastion.audit.findings import Finding, Severity
from bastion.audit.plan import need_data
from bastion.threat import ATLAS, OWASP

__all__ = ["DataCheck"]

_THREAT = "data_quality"


def _hashes(x: np.ndarray) -> list[str]:
    flat = np.ascontiguousarray(x.reshape(x.shape[0], -1))
    return [hashlib.sha256(row.tobytes()).hexdigest() for row in flat]


@register
class DataCheck(Check):
    """Infer a contract from ``--train``; validate ``--test`` against it."""

    name = "data"
    title = "Data validation: contract, drift, label shift and overlap"
    threat = _THREAT
    practices: ClassVar[tuple[str, ...]] = ("data_validation", "model_monitoring")
    needs_model = False
    defaults: ClassVar[dict[str, Any]] = {"fdr": 0.05, "label_shift_p": 0.01, "histograms": 3}

    def requires(self, ctx: AuditContext) -> Requirement | None:
        return need_data(ctx, "train", "the reference the contract is inferred from") or need_data(
            ctx, "test", "the data validated against the contract"
        )

    def run(self, ctx: AuditContext) -> CheckResult:
        from bastion.data.contracts import infer_contract, validate

        s = dict(ctx.check_settings(self.name))
        train = ctx.train.x.numpy()
        test = ctx.test.x.numpy()
        names = list(ctx.feature_names) if ctx.feature_names else None
        findings: list[Finding] = []
        if ctx.contract is not None:
            contract = ctx.contract
            train_report = validate(_table(ctx, "train", train, contract), contract,
                                    distribution=False)
            report = validate(_table(ctx, "test", test, contract), contract,
                              fdr=float(s["fdr"]))
            findings += _violations(train_report.errors, "train", prefix="train:")
            reference = f"the data contract {contract.name!r}"
        else:
            import pandas as pd

            named = train.ndim == 2 and names is not None
            contract = infer_contract(
                pd.DataFrame(train, columns=names) if named else train,
                name="train",
                kind="table" if train.ndim == 2 else "tensor",
                seed=ctx.unit_seed(self.name),
            )
            report = validate(pd.DataFrame(test, columns=names) if named else test, contract,
                              fdr=float(s["fdr"]))
            reference = f"the contract inferred from {len(train)} training rows"
        n = report.n_rows
        bad_rows = {v.row for v in report.errors if v.row is not None}
        # dtype, shape: every row (drift is about the set, not its rows)
        whole = [v for v in report.errors if v.row is None and v.rule != "drift"]
        invalid = n if whole else len(bad_rows)
        findings += _violations(report.errors, "test",
                                prefix="test:" if ctx.contract is not None else "")
        drift = list(report.drift)
        drifted = [t for t in drift if t.drifted]
        metrics = {
            "valid_rows": Metric.proportion(
                n - invalid, n, higher_is_better=True, label="test rows that satisfy the contract"
            ),
            "drifted_features": Metric.proportion(
                len(drifted),
                len(drift),
                higher_is_better=False,
                label="features whose distribution moved",
            ),
        }
        if drifted:
            share = len(drifted) / max(len(drift), 1)
            findings.append(
                Finding(
                    id="data.drift",
                    title=f"{len(drifted)} of {len(drift)} features of the test set drifted from "
                    "the training set",
                    severity=Severity.MEDIUM if share >= 0.1 else Severity.LOW,
                    threat=_THREAT,
                    atlas=(ATLAS["poison_training_data"],),
                    owasp=(OWASP["model_skewing"],),
                    evidence={"features": [t.column for t in drifted[:20]], "fdr": float(s["fdr"])},
                    remediation="Check that the test set comes from the population the model "
                    "serves; retrain on current data or monitor drift in production "
                    "(bastion monitor).",
                )
            )
        self._label_shift(ctx, s, findings, metrics)
        self._overlap(train, test, findings, metrics)
        plots = self._histograms(ctx, train, test, contract, drifted, int(s["histograms"]),
                                 names)
        status: Status = (
            "failed" if any(f.severity.rank >= Severity.MEDIUM.rank for f in findings) else "passed"
        )
        return CheckResult(
            status,
            metrics=metrics,
            findings=findings,
            plots=plots,
            tables=[
                {
                    "title": "Drift tests (most shifted first)",
                    "columns": ["feature", "test", "statistic", "q-value", "drifted"],
                    "rows": [
                        [t.column, t.test, t.statistic, t.q_value, t.drifted]
                        for t in sorted(drift, key=lambda t: -t.statistic)[:10]
                    ],
                }
            ],
            summary=f"{n - invalid} of {n} test rows satisfy {reference}; {len(drifted)} of "
            f"{len(drift)} features drifted.",
            settings=s,
        )

    def _label_shift(
        self,
        ctx: AuditContext,
        s: dict[str, Any],
        findings: list[Finding],
        metrics: dict[str, Metric],
    ) -> None:
        from scipy.stats import chisquare

        k = max(int(ctx.train.y.max()), int(ctx.test.y.max())) + 1
        ref = np.bincount(ctx.train.y.numpy(), minlength=k).astype(float)
        obs = np.bincount(ctx.test.y.numpy(), minlength=k).astype(float)
        present = ref > 0
        unseen = int(obs[~present].sum())
        expected = ref[present] / ref[present].sum() * obs[present].sum()
        p = float(chisquare(obs[present], expected).pvalue) if present.sum() > 1 else 1.0
        metrics["label_shift_p"] = Metric(p, label="chi-square p-value of the test class mix")
        if p < float(s["label_shift_p"]) or unseen:
            findings.append(
                Finding(
                    id="data.label-shift",
                    title="The test set's class mix differs from training",
                    severity=Severity.LOW,
                    threat=_THREAT,
                    atlas=(ATLAS["poison_training_data"],),
                    owasp=(OWASP["model_skewing"],),
                    evidence={
                        "p_value": p,
                        "unseen_class_samples": unseen,
                        "train_counts": ref.astype(int).tolist(),
                        "test_counts": obs.astype(int).tolist(),
                    },
                    remediation="Stratify the split, or report per-class metrics; a class the "
                    "model never saw cannot be predicted.",
                )
            )

    def _overlap(
        self,
        train: np.ndarray,
        test: np.ndarray,
        findings: list[Finding],
        metrics: dict[str, Metric],
    ) -> None:
        seen = set(_hashes(train))
        shared = sum(h in seen for h in _hashes(test))
        metrics["train_test_overlap"] = Metric.proportion(
            shared, len(test), higher_is_better=False, label="test samples also in training"
        )
        if shared:
            findings.append(
                Finding(
                    id="data.train-test-overlap",
                    title=f"{shared} test sample(s) also appear in the training set",
                    severity=Severity.MEDIUM if shared / len(test) >= 0.01 else Severity.LOW,
                    threat=_THREAT,
                    atlas=(ATLAS["mitigation_validate_model"],),
                    owasp=(OWASP["model_skewing"],),
                    evidence={"count": shared, "n": len(test)},
                    remediation="Deduplicate before splitting; overlapping samples inflate every "
                    "accuracy in this report.",
                )
            )

    def _histograms(
        self,
        ctx: AuditContext,
        train: np.ndarray,
        test: np.ndarray,
        contract: Any,
        drifted: list[Any],
        count: int,
        columns: list[str] | None = None,
    ) -> list[dict[str, Any]]:
        if not drifted or count < 1:
            return []
        if train.ndim == 2:
            names = columns or [f"c{j}" for j in range(train.shape[1])]
            ref, cur = train, test
        else:
            from bastion.data.contracts._tensor import sample_features

            ax = contract.channel_axis
            ref, names = sample_features(train.astype(np.float64), ax)
            cur, _ = sample_features(test.astype(np.float64), ax)
        index = {name: j for j, name in enumerate(names)}
        plots = []
        for t in sorted(drifted, key=lambda t: -t.statistic)[:count]:
            j = index.get(t.column)
            if j is None:
                continue
            a, b = ref[:, j], cur[:, j]
            edges = np.histogram_bin_edges(np.concatenate([a, b]), bins=20)
            centres = ((edges[:-1] + edges[1:]) / 2).tolist()
            plots.append(
                {
                    "kind": "histogram",
                    "title": f"Drifted feature {t.column} "
                    f"(KS {t.statistic:.3g}, q {t.q_value:.2g})",
                    "x_label": t.column,
                    "y_label": "density",
                    "series": [
                        {
                            "label": "train",
                            "x": centres,
                            "y": np.histogram(a, bins=edges, density=True)[0].tolist(),
                        },
                        {
                            "label": "test",
                            "x": centres,
                            "y": np.histogram(b, bins=edges, density=True)[0].tolist(),
                        },
                    ],
                }
            )
        return plots


def _violations(errors: Any, role: str, *, prefix: str) -> list[Finding]:
    """One ``data.contract-violation`` per broken rule (drift aside), naming its columns."""
    by_rule: dict[str, list[Any]] = {}
    for v in errors:
        if v.rule != "drift":
            by_rule.setdefault(v.rule, []).append(v)
    out = []
    for rule, items in sorted(by_rule.items()):
        columns = sorted({str(v.column) for v in items if v.column is not None})
        where = f" in column(s) {', '.join(columns[:8])}" if columns else ""
        out.append(
            Finding(
                id="data.contract-violation",
                title=f"{len(items)} {role} sample(s) break the {rule} rule{where}",
                severity=Severity.MEDIUM,
                threat=_THREAT,
                atlas=(ATLAS["poison_training_data"],),
                owasp=(OWASP["data_poisoning"],),
                evidence={
                    "rule": rule,
                    "role": role,
                    "count": len(items),
                    "columns": columns,
                    "examples": [i.message for i in items[:5]],
                },
                remediation="Validate inputs against the contract before they reach the model "
                "(bastion data validate) and find where the pipeline changed them.",
                location=f"{prefix}{rule}",
            )
        )
    return out


def _table(ctx: AuditContext, role: str, x: np.ndarray, contract: Any) -> Any:
    """The ``role`` data as the contract sees it: its CSV/Parquet file as it is (less the
    label column when the contract has none), else the model's columns with integral
    columns as integers."""
    import pandas as pd

    known = {c.name for c in contract.columns}
    path = ctx.data_paths.get(role)
    if path is not None and path.suffix.lower() in (".csv", ".parquet"):
        from bastion.data.tabular import load_table

        frame = load_table(path)
        features = set(ctx.feature_names or ())
        drop = [c for c in frame.columns if c not in features and c not in known]
        return frame.drop(columns=drop)
    names = list(ctx.feature_names) if ctx.feature_names else (
        list(ctx.schema.names) if ctx.schema is not None else None)
    if x.ndim != 2 or names is None or len(names) != x.shape[1]:
        return x
    frame = pd.DataFrame(x.astype(np.float64), columns=names)
    for c in contract.columns:
        col = frame.get(c.name)
        if col is not None and c.kind in ("integer", "boolean", "categorical") and bool(
                np.all(col.to_numpy() == np.round(col.to_numpy()))):
            frame[c.name] = col.round().astype(np.int64)
    return frame
