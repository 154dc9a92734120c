"""Attribute inference on tabular models: model-assisted vs a baseline that never queries it.

Papers: M. Fredrikson, E. Lantz, S. Jha, S. Lin, D. Page, T. Ristenpart, "Privacy in
Pharmacogenetics", USENIX Security 2014 (https://www.usenix.org/node/184490); S. Yeom et al.,
CSF 2018 (https://arxiv.org/abs/1709.01604).

The adversary knows a record's other features and its label ``y`` and wants one sensitive
feature (``feature``, a flat index) whose possible ``values`` are few. It first fits, on its own
auxiliary data, a **baseline** that predicts the sensitive value from the other features and the
label (``baseline="imputer"``, a logistic regression) or from nothing but the marginal
(``baseline="prior"``); the baseline never queries the model. The **model-assisted** attack then
tries every candidate value, queries the target on each completed record and picks

    argmax_v  log p_model(y | x with x[feature] = v) + log p_baseline(v | rest)

so it can only add the model's evidence to the baseline's. The gap between the two accuracies is
what the model leaks, and it is largest on the model's training members.

Queries: ``n · len(values)``. Needs scores.

Example
-------
>>> from bastion.attacks.inference import AttributeInference
>>> AttributeInference(feature=3, values=[0.0, 1.0])
AttributeInference(baseline='imputer', batch_size=512, feature=3, values=[0.0, 1.0])
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from bastion._params import ParamsRepr
from bastion.attacks.inference._common import log_probs, query_logits
from bastion.attacks.inference.base import check_positive
from bastion.audit.findings import Finding, Severity
from bastion.errors import CapabilityError, ConfigurationError, InputError, QueryBudgetExceeded
from bastion.models.base import Capability, Classifier, check_bounds, check_labels
from bastion.threat import ATLAS, OWASP

__all__ = ["AttributeInference", "AttributeResult"]


@dataclass(frozen=True)
class AttributeResult:
    """Inferred values of the sensitive feature, by the model-assisted attack and the baseline."""

    feature: int
    values: list[float]
    predicted: torch.Tensor
    baseline_predicted: torch.Tensor
    truth: torch.Tensor | None
    queries: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def _acc(self, pred: torch.Tensor) -> float:
        if self.truth is None:
            raise InputError("this result has no ground truth: pass truth= to infer()")
        return float((pred == self.truth).float().mean())

    @property
    def accuracy(self) -> float:
        return self._acc(self.predicted)

    @property
    def baseline_accuracy(self) -> float:
        return self._acc(self.baseline_predicted)

    @property
    def advantage(self) -> float:
        """Model-assisted accuracy minus the baseline's."""
        return self.accuracy - self.baseline_accuracy

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "feature": self.feature,
            "values": self.values,
            "n": int(self.predicted.shape[0]),
            "queries": self.queries,
            "seconds": self.seconds,
        }
        if self.truth is not None:
            out.update(
                accuracy=self.accuracy,
                baseline_accuracy=self.baseline_accuracy,
                advantage=self.advantage,
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.summary(),
            "predicted": self.predicted.tolist(),
            "baseline_predicted": self.baseline_predicted.tolist(),
            "truth": None if self.truth is None else self.truth.tolist(),
            "extra": self.extra,
        }

    def finding(self) -> Finding:
        adv = self.summary().get("advantage", 0.0)
        sev = Severity.HIGH if adv >= 0.2 else Severity.MEDIUM if adv >= 0.05 else Severity.LOW
        if adv <= 0.01:
            sev = Severity.INFO
        return Finding(
            id="inversion.attribute-inference",
            location=f"feature:{self.feature}",
            title=f"Attribute inference of feature {self.feature}: {adv:+.1%} accuracy over a "
            "baseline that never queries the model",
            severity=sev,
            threat="attribute inference",
            atlas=(ATLAS["model_inversion"],),
            owasp=(OWASP["model_inversion"],),
            evidence=self.summary(),
            remediation="Reduce overfitting or train with DP-SGD; return labels or rounded "
            "scores; drop the sensitive feature if the task allows.",
        )


class AttributeInference(ParamsRepr):
    """Model-assisted attribute inference (see the module docstring).

    Parameters
    ----------
    feature:
        Flat index of the sensitive feature in each input.
    values:
        Its candidate values (default: the distinct values in :meth:`fit`'s data, at most 32).
    baseline:
        ``"imputer"`` (logistic regression on the other features and the label) or ``"prior"``.
    batch_size:
        Query batch size.
    """

    name: ClassVar[str] = "attribute"

    def __init__(
        self,
        *,
        feature: int,
        values: Sequence[float] | None = None,
        baseline: str = "imputer",
        batch_size: int = 512,
    ) -> None:
        if isinstance(feature, bool) or not isinstance(feature, int) or feature < 0:
            raise ConfigurationError(f"feature must be a flat index >= 0, got {feature!r}")
        if values is not None:
            vals = [float(v) for v in values]
            if len(vals) < 2 or len(set(vals)) != len(vals) or not all(map(math.isfinite, vals)):
                raise ConfigurationError("values must be at least two distinct finite numbers")
        if baseline not in ("imputer", "prior"):
            raise ConfigurationError(f"baseline must be 'imputer' or 'prior', got {baseline!r}")
        check_positive(batch_size, "batch_size", integer=True)
        self.feature = feature
        self.values = None if values is None else vals
        self.baseline = baseline
        self.batch_size = int(batch_size)
        self.values_: list[float] | None = None
        self.prior_: np.ndarray | None = None
        self.imputer_: Any = None
        self.num_classes_ = 0

    def _index(self, col: torch.Tensor) -> torch.Tensor:
        """Index of the nearest candidate value for each entry of ``col``."""
        vals = torch.tensor(self.values_ or [], dtype=torch.float64)
        return (col.double()[:, None] - vals[None, :]).abs().argmin(1)

    def _rest(self, flat: torch.Tensor, y: torch.Tensor) -> np.ndarray:
        rest = torch.cat([flat[:, : self.feature], flat[:, self.feature + 1 :]], 1).double()
        onehot = torch.nn.functional.one_hot(y, self.num_classes_).double()
        return torch.cat([rest, onehot], 1).numpy()

    def fit(self, classifier: Classifier, x: torch.Tensor, y: torch.Tensor) -> AttributeInference:
        """Fit the baseline on the adversary's auxiliary ``(x, y)`` (never queries the model)."""
        flat = self._check(classifier, x, y)
        col = flat[:, self.feature]
        if self.values is None:
            uniq = torch.unique(col).tolist()
            if len(uniq) > 32 or len(uniq) < 2:
                raise InputError(
                    f"feature {self.feature} takes {len(uniq)} distinct values in the auxiliary "
                    "data; pass values= (2 to 32 candidates)"
                )
            self.values_ = [float(v) for v in uniq]
        else:
            self.values_ = list(self.values)
        self.num_classes_ = classifier.num_classes
        idx = self._index(col).numpy()
        k = len(self.values_)
        counts = np.bincount(idx, minlength=k).astype(np.float64) + 1.0
        self.prior_ = counts / counts.sum()
        self.imputer_ = None
        if self.baseline == "imputer" and len(np.unique(idx)) > 1:
            from sklearn.linear_model import LogisticRegression
            from sklearn.pipeline import make_pipeline
            from sklearn.preprocessing import StandardScaler

            # scaled: a table's raw columns (ages, amounts, ids) differ by orders of magnitude
            self.imputer_ = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
            self.imputer_.fit(self._rest(flat, y), idx)
        return self

    def _check(self, classifier: Classifier, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise InputError("x and y must be torch tensors")
        if x.dim() < 2 or tuple(x.shape[1:]) != tuple(classifier.input_shape) or not len(x):
            raise InputError(
                f"x has shape {tuple(x.shape)}; the model expects (n, "
                f"{', '.join(map(str, classifier.input_shape))}) with n >= 1"
            )
        check_bounds(x.float(), classifier.bounds)
        check_labels(y, classifier.num_classes, x.shape[0])
        if self.feature >= math.prod(classifier.input_shape):
            raise ConfigurationError(
                f"feature {self.feature} is out of range for inputs of "
                f"{math.prod(classifier.input_shape)} features"
            )
        return x.detach().flatten(1).float()

    def _baseline_logp(self, flat: torch.Tensor, y: torch.Tensor) -> np.ndarray:
        if self.prior_ is None:  # pragma: no cover - checked by infer
            raise ConfigurationError("call fit() first")
        k = len(self.prior_)
        if self.imputer_ is None:
            return np.tile(np.log(self.prior_), (flat.shape[0], 1))
        proba = np.full((flat.shape[0], k), 1e-12)
        proba[:, self.imputer_.classes_] = self.imputer_.predict_proba(self._rest(flat, y.long()))
        return np.log(np.clip(proba, 1e-12, None))

    def infer(
        self,
        classifier: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        truth: torch.Tensor | None = None,
    ) -> AttributeResult:
        """Infer the sensitive feature of each record ``x`` (its value in ``x`` is ignored)."""
        if self.values_ is None:
            raise ConfigurationError("AttributeInference needs auxiliary data: call fit() first")
        if Capability.SCORES not in classifier.capabilities:
            raise CapabilityError(
                f"attribute inference needs scores, which {type(classifier).__name__} "
                "does not offer"
            )
        flat = self._check(classifier, x, y)
        y = y.long()
        k, n = len(self.values_), flat.shape[0]
        planned = n * k
        budget = getattr(classifier, "query_budget", None)
        if budget is not None and classifier.queries + planned > budget:
            raise QueryBudgetExceeded(
                f"attribute inference needs {planned} queries ({n} records x {k} values) but "
                f"only {budget - classifier.queries} of the budget of {budget} remain"
            )
        start, before = time.perf_counter(), classifier.queries
        base = self._baseline_logp(flat, y)
        with classifier.evaluation():
            filled = flat[None].repeat(k, 1, 1)
            filled[:, :, self.feature] = torch.tensor(self.values_, dtype=flat.dtype)[:, None]
            batch = filled.reshape(k * n, *classifier.input_shape)
            logits = query_logits(classifier, batch, self.batch_size)
        lp = log_probs(logits).gather(1, y.repeat(k)[:, None]).view(k, n).T
        combined = lp + torch.from_numpy(base)
        return AttributeResult(
            feature=self.feature,
            values=list(self.values_),
            predicted=combined.argmax(1),
            baseline_predicted=torch.from_numpy(base.argmax(1)),
            truth=None if truth is None else self._truth(truth, n),
            queries=classifier.queries - before,
            seconds=time.perf_counter() - start,
        )

    def _truth(self, truth: torch.Tensor, n: int) -> torch.Tensor:
        """Ground truth as candidate indices (given as feature values)."""
        if not isinstance(truth, torch.Tensor) or truth.shape != (n,):
            raise InputError("truth must be a 1-d tensor of the feature's true values")
        return self._index(truth)
