"""The contract every membership-inference attack follows.

A subclass writes only the algorithm, in :meth:`MembershipAttack._score`: per-sample scores,
higher meaning "more likely a training member". The public :meth:`MembershipAttack.infer` is
final: it validates the inputs, checks that the model offers what the attack needs, refuses to
start when the attack's planned queries would overrun the model's ``query_budget`` (so no
budget is half spent), puts the model in evaluation mode, seeds a generator, and packages the
scores with the ground truth (when given) into a :class:`MembershipResult`.

Attacks that need the adversary's own data (shadow models, LiRA) take it in
:meth:`MembershipAttack.fit` first; ``fit`` never queries the target.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, final

import torch

from bastion.attacks.inference._common import check_population
from bastion.attacks.inference.metrics import EpsilonBound, RocCurve, empirical_epsilon, roc_curve
from bastion.audit.findings import Finding, Severity
from bastion.errors import CapabilityError, ConfigurationError, InputError, QueryBudgetExceeded
from bastion.models.base import Capability, Classifier, check_bounds, check_labels
from bastion.threat import ATLAS, OWASP

__all__ = ["MembershipAttack", "MembershipResult", "membership_severity"]


@dataclass(frozen=True)
class MembershipResult:
    """Per-sample membership scores (higher = member) and, when known, the true membership."""

    attack: str
    params: dict[str, Any]
    scores: torch.Tensor
    membership: torch.Tensor | None
    queries: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.scores.shape[0])

    @property
    def labels(self) -> torch.Tensor | None:
        """The true membership flags (``membership``), when known."""
        return self.membership

    def _truth(self) -> torch.Tensor:
        if self.membership is None:
            raise InputError(
                "this result has no ground truth: pass membership= to infer() to get metrics"
            )
        return self.membership

    def roc(self) -> RocCurve:
        """The exact ROC curve of the scores against the true membership."""
        return roc_curve(self.scores, self._truth())

    @property
    def auc(self) -> float:
        return self.roc().auc

    def tpr_at(self, fpr: float) -> float:
        """Largest TPR at an FPR of at most ``fpr`` (e.g. 0.01, 0.001)."""
        return self.roc().tpr_at(fpr)

    @property
    def advantage(self) -> float:
        """Yeom et al.'s membership advantage: ``max TPR - FPR`` over thresholds."""
        r = self.roc()
        return float((r.tpr - r.fpr).max())

    def epsilon(self, *, delta: float = 0.0, confidence: float = 0.95) -> EpsilonBound:
        """Audit mode: the empirical ε lower bound the scores imply (see ``empirical_epsilon``)."""
        r = self.roc()
        return empirical_epsilon(r.tpr, r.fpr, r.n_pos, r.n_neg, delta, confidence)

    def summary(self) -> dict[str, Any]:
        """The headline metrics as plain JSON-ready values (metrics need ground truth)."""
        out: dict[str, Any] = {
            "attack": self.attack,
            "n": self.n,
            "queries": self.queries,
            "seconds": self.seconds,
        }
        if self.membership is not None:
            r = self.roc()
            out.update(
                n_members=r.n_pos,
                n_non_members=r.n_neg,
                auc=r.auc,
                advantage=float((r.tpr - r.fpr).max()),
                tpr_at_1pct_fpr=r.tpr_at(0.01),
                tpr_at_0_1pct_fpr=r.tpr_at(0.001),
                epsilon=self.epsilon().to_dict(),
            )
        return out

    @property
    def kind(self) -> str:
        """The finding kind of this attack: ``loss-threshold`` for the loss attack,
        ``confidence-threshold``, ``lira``, ``shadow``, ``label-only``, ..."""
        if self.attack == "threshold":
            signal = str(self.params.get("signal", "loss")).replace("_", "-")
            return f"{signal}-threshold"
        return self.attack.replace("_", "-")

    def finding(self) -> Finding:
        """A :class:`~bastion.audit.Finding` (id ``membership.<kind>``) rated by
        :func:`membership_severity` on the TPR at low FPR, the AUC and the ε lower bound."""
        s = self.summary()
        tpr1, tpr01, auc_ = (
            s.get("tpr_at_1pct_fpr", 0.0),
            s.get("tpr_at_0_1pct_fpr", 0.0),
            s.get("auc", 0.5),
        )
        eps = self.epsilon() if self.membership is not None else None
        sev = membership_severity(
            tpr_at_1pct=tpr1,
            tpr_at_0_1pct=tpr01,
            auc=auc_,
            epsilon_lower=0.0 if eps is None else eps.lower,
        )
        title = f"Membership inference ({self.kind}): AUC {auc_:.3f}, TPR {tpr1:.3f} at 1% FPR"
        if eps is not None and eps.lower > 0:
            title += f", ε ≥ {eps.lower:.2f} ({eps.explain()})"
        return Finding(
            id=f"membership.{self.kind}",
            title=title,
            severity=sev,
            threat="membership inference",
            atlas=(ATLAS["membership_inference"],),
            owasp=(OWASP["membership_inference"],),
            evidence=s,
            remediation=(
                f"No measurable leak with the {self.attack} attack at this sample size; "
                "stronger attacks with reference models (lira, shadow) may still find one."
                if sev is Severity.INFO
                else "Reduce overfitting (regularisation, early stopping), train with DP-SGD, "
                "and return labels or rounded scores instead of full confidence vectors."
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        """Serialise without loss to JSON-ready values."""
        return {
            "attack": self.attack,
            "params": self.params,
            "scores": self.scores.tolist(),
            "membership": None if self.membership is None else self.membership.tolist(),
            "queries": self.queries,
            "seconds": self.seconds,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MembershipResult:
        """Inverse of :meth:`to_dict`."""
        m = data.get("membership")
        return cls(
            attack=data["attack"],
            params=dict(data["params"]),
            scores=torch.tensor(data["scores"], dtype=torch.float64),
            membership=None if m is None else torch.tensor(m, dtype=torch.bool),
            queries=int(data["queries"]),
            seconds=float(data["seconds"]),
            extra=dict(data.get("extra", {})),
        )


class MembershipAttack(ABC):
    """Base class of membership-inference attacks (see the module docstring).

    Subclasses set the class attributes, implement :meth:`_score` and :meth:`planned_queries`,
    and (when ``needs_fit``) :meth:`_fit`. Constructors are keyword-only and validate eagerly.
    """

    #: short name used by the CLI and in reports
    name: ClassVar[str] = "membership"
    #: what the target must offer
    requires: ClassVar[Capability] = Capability.SCORES
    #: whether :meth:`fit` must be called with population data before :meth:`infer`
    needs_fit: ClassVar[bool] = False

    def __init__(self, *, batch_size: int = 512, seed: int | None = 0) -> None:
        check_positive(batch_size, "batch_size", integer=True)
        self.batch_size = int(batch_size)
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ConfigurationError(f"seed must be an int or None, got {seed!r}")
        self.seed = seed
        self.population_: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- the public calls -------------------------------------------------------------------
    @final
    def fit(self, classifier: Classifier, x: torch.Tensor, y: torch.Tensor) -> MembershipAttack:
        """Give the attack its population data ``(x, y)`` (never queries ``classifier``).

        ``classifier`` is read only for its input shape, bounds and number of classes.
        Returns ``self``.
        """
        x, y = check_population(classifier, x, y)
        self.population_ = (x, y)
        self._fit(classifier, x, y, self._generator(offset=1))
        return self

    @final
    def infer(
        self,
        classifier: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        membership: torch.Tensor | None = None,
    ) -> MembershipResult:
        """Score each ``(x, y)`` for membership in ``classifier``'s training set.

        ``membership`` (bool, one per sample) is the ground truth, used only for the result's
        metrics. Raises :class:`~bastion.errors.QueryBudgetExceeded` before any query when the
        attack would need more queries than the model's remaining ``query_budget``.
        """
        x, y, membership = self._validate(classifier, x, y, membership)
        planned = self.planned_queries(classifier, x.shape[0])
        budget = getattr(classifier, "query_budget", None)
        if budget is not None and classifier.queries + planned > budget:
            raise QueryBudgetExceeded(
                f"{type(self).__name__} needs {planned} queries for {x.shape[0]} samples but "
                f"only {budget - classifier.queries} of the budget of {budget} remain; "
                "raise query_budget or score fewer samples"
            )
        start = time.perf_counter()
        before = classifier.queries
        with classifier.evaluation():
            scores = self._score(classifier, x, y, self._generator())
        if not isinstance(scores, torch.Tensor) or scores.shape != (x.shape[0],):
            raise RuntimeError(
                f"{type(self).__name__}._score returned {getattr(scores, 'shape', scores)!r} "
                f"for {x.shape[0]} samples"
            )
        scores = scores.detach().double().cpu()
        scores = torch.nan_to_num(scores, nan=-math.inf).clamp(-1e12, 1e12)
        return MembershipResult(
            attack=self.name,
            params=self.get_params(),
            scores=scores,
            membership=membership,
            queries=classifier.queries - before,
            seconds=time.perf_counter() - start,
            extra=self._result_extra(),
        )

    # -- for subclasses ---------------------------------------------------------------------
    @abstractmethod
    def _score(
        self,
        classifier: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Per-sample membership scores ``(n,)``, higher = member (query only the target)."""

    @abstractmethod
    def planned_queries(self, classifier: Classifier, n: int) -> int:
        """How many queries to ``classifier`` scoring ``n`` samples takes."""

    def _fit(
        self,
        classifier: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator,
    ) -> None:
        """Prepare from population data (train shadow/reference models); default: nothing."""
        return None

    def _result_extra(self) -> dict[str, Any]:
        return {}

    def get_params(self) -> dict[str, Any]:
        """The constructor parameters as JSON-ready values (not ``_private`` or fitted ``_``)."""
        out: dict[str, Any] = {}
        for key, value in vars(self).items():
            if key.startswith("_") or key.endswith("_"):
                continue
            out[key] = value if isinstance(value, int | float | str | bool | None) else repr(value)
        return out

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in sorted(self.get_params().items()))
        return f"{type(self).__name__}({params})"

    # -- helpers ----------------------------------------------------------------------------
    def _generator(self, offset: int = 0) -> torch.Generator:
        g = torch.Generator()
        if self.seed is None:
            g.seed()
        else:
            g.manual_seed(self.seed + offset)
        return g

    def _validate(
        self,
        classifier: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        membership: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        missing = self.requires & ~classifier.capabilities
        if missing:
            need = "gradients" if Capability.GRADIENTS in missing else "scores"
            raise CapabilityError(
                f"{type(self).__name__} needs {need}, which {type(classifier).__name__} does "
                "not offer; use the label-only attack for models that return labels only"
            )
        if self.needs_fit and self.population_ is None:
            raise ConfigurationError(
                f"{type(self).__name__} needs population data: call fit(classifier, x, y) first"
            )
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise InputError("x and y must be torch tensors")
        if x.dim() < 2 or tuple(x.shape[1:]) != tuple(classifier.input_shape):
            raise InputError(
                f"x has shape {tuple(x.shape)}; the model expects (n, "
                f"{', '.join(map(str, classifier.input_shape))})"
            )
        if x.shape[0] == 0:
            raise InputError("x is empty: give at least one sample to score")
        x = x.detach().float()
        check_bounds(x, classifier.bounds)
        check_labels(y, classifier.num_classes, x.shape[0])
        if membership is not None:
            if not isinstance(membership, torch.Tensor) or membership.shape != (x.shape[0],):
                raise InputError("membership must be a 1-d tensor with one flag per sample")
            membership = membership.detach().bool().cpu()
        return x, y.long(), membership


def membership_severity(
    *, tpr_at_1pct: float, tpr_at_0_1pct: float, auc: float, epsilon_lower: float
) -> Severity:
    """How bad a membership leak is, from every piece of its evidence.

    The attack's success where it matters (TPR at 0.1% and 1% FPR: members it picks out
    with almost no false alarm) and its AUC rate it; the empirical ε lower bound raises the
    rating too, since it is the one number that holds at 95% confidence and it also counts
    the low-score tail (non-members picked out), which TPR at low FPR does not see: ε ≥ 0.5 is
    at least ``low`` and ε ≥ 3 at least ``medium``. So an AUC near 0.5 beside a large ε bound
    is never rated ``info``.

    >>> membership_severity(tpr_at_1pct=0.0025, tpr_at_0_1pct=0.0, auc=0.545, epsilon_lower=2.26)
    <Severity.LOW: 'low'>
    """
    if tpr_at_0_1pct >= 0.1 or tpr_at_1pct >= 0.2 or auc >= 0.8:
        return Severity.HIGH
    if tpr_at_1pct >= 0.05 or auc >= 0.6 or epsilon_lower >= 3.0:
        return Severity.MEDIUM
    if tpr_at_1pct > 0.02 or auc > 0.55 or epsilon_lower >= 0.5:
        return Severity.LOW
    return Severity.INFO


def check_positive(value: object, name: str, *, integer: bool = False) -> None:
    """Raise :class:`ConfigurationError` unless ``value`` is a positive (integer) number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{name} must be a positive number, got {value!r}")
    if integer and not isinstance(value, int):
        raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ConfigurationError(f"{name} must be positive, got {value!r}")
