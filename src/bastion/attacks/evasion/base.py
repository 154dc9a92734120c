"""The contract every evasion attack follows.

A subclass writes only the algorithm, in :meth:`EvasionAttack._run`, for one batch already on the
model's device. The public :meth:`EvasionAttack.generate` is final: it validates the inputs,
checks the model offers what the attack needs, puts the model in evaluation mode (restored even
when the attack raises), seeds a generator, runs the algorithm batch by batch, and then enforces
the threat model itself (projection onto the eps-ball, clipping to the bounds) before it measures
success. No attack can forget to clip.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, final

import numpy as np
import torch

from bastion.attacks.evasion._common import clip, flat_norm, project
from bastion.errors import CapabilityError, ConfigurationError, InputError
from bastion.models.base import Capability, Classifier, check_bounds, check_labels
from bastion.models.base import unmetered as _unmetered
from bastion.threat import Norm, parse_norm

if TYPE_CHECKING:
    from bastion.data.tabular import FeatureSchema

__all__ = ["EvasionAttack", "EvasionResult"]


@dataclass(frozen=True)
class EvasionResult:
    """What an evasion attack produced, per sample and in summary.

    ``success`` is ``adv_pred != y`` for untargeted attacks and ``adv_pred == target`` for
    targeted ones. ``distances`` are the per-sample norms of ``x_adv - x`` in the attack's norm.
    """

    attack: str
    params: dict[str, Any]
    norm: Norm
    eps: float | None
    targeted: bool
    x_adv: torch.Tensor
    y: torch.Tensor
    clean_pred: torch.Tensor
    adv_pred: torch.Tensor
    success: torch.Tensor
    distances: torch.Tensor
    queries: int
    seconds: float
    target: torch.Tensor | None = None
    sample_queries: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.y.shape[0])

    @property
    def clean_correct(self) -> torch.Tensor:
        return self.clean_pred == self.y

    @property
    def clean_accuracy(self) -> float:
        return _mean(self.clean_correct)

    @property
    def robust_accuracy(self) -> float:
        """Fraction of samples classified correctly both before and after the attack.

        A sample the model already gets wrong is not robust, whatever the attack's output
        does (the clean input is itself inside the eps-ball); this is the per-sample rule
        of the evaluation's worst case, so one attack's number and the headline agree.
        """
        return _mean(self.clean_correct & (self.adv_pred == self.y))

    @property
    def success_rate(self) -> float:
        """Fraction of the correctly classified samples that the attack turned into successes."""
        mask = self.clean_correct
        if not bool(mask.any()):
            return 0.0
        return _mean(self.success[mask])

    @property
    def median_norm(self) -> float | None:
        """Median perturbation norm over successful attacks on correctly classified samples."""
        mask = self.success & self.clean_correct
        if not bool(mask.any()):
            return None
        return float(self.distances[mask].median())

    def summary(self) -> dict[str, Any]:
        """The headline metrics as plain JSON-ready values."""
        return {
            "attack": self.attack,
            "norm": self.norm.value,
            "eps": self.eps,
            "targeted": self.targeted,
            "n": self.n,
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "success_rate": self.success_rate,
            "median_norm": self.median_norm,
            "queries": self.queries,
            "queries_per_sample": self.queries / self.n if self.n else 0.0,
            "median_queries_successful": self.median_queries,
            "seconds": self.seconds,
        }

    @property
    def median_queries(self) -> float | None:
        """Median queries spent on successfully attacked, correctly classified samples.

        Only attacks that meter queries per sample (score- and decision-based) report it.
        """
        if self.sample_queries is None:
            return None
        mask = self.success & self.clean_correct
        if not bool(mask.any()):
            return None
        return float(self.sample_queries[mask].float().median())

    def to_dict(self, *, include_inputs: bool = False) -> dict[str, Any]:
        """Serialise without loss to JSON-ready values (``x_adv`` only when asked)."""
        out: dict[str, Any] = {
            "attack": self.attack,
            "params": self.params,
            "norm": self.norm.value,
            "eps": self.eps,
            "targeted": self.targeted,
            "y": self.y.tolist(),
            "clean_pred": self.clean_pred.tolist(),
            "adv_pred": self.adv_pred.tolist(),
            "success": self.success.tolist(),
            "distances": self.distances.tolist(),
            "queries": self.queries,
            "seconds": self.seconds,
            "target": None if self.target is None else self.target.tolist(),
            "sample_queries": None if self.sample_queries is None else self.sample_queries.tolist(),
            "extra": self.extra,
            "x_shape": list(self.x_adv.shape),
        }
        if include_inputs:
            out["x_adv"] = self.x_adv.flatten().tolist()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvasionResult:
        """Inverse of :meth:`to_dict` (``x_adv`` is empty unless it was included)."""
        shape = tuple(data["x_shape"])
        if "x_adv" in data:
            x_adv = torch.tensor(data["x_adv"], dtype=torch.float32).reshape(shape)
        else:
            x_adv = torch.empty((0, *shape[1:]))
        return cls(
            attack=data["attack"],
            params=dict(data["params"]),
            norm=parse_norm(data["norm"]),
            eps=data["eps"],
            targeted=bool(data["targeted"]),
            x_adv=x_adv,
            y=torch.tensor(data["y"], dtype=torch.long),
            clean_pred=torch.tensor(data["clean_pred"], dtype=torch.long),
            adv_pred=torch.tensor(data["adv_pred"], dtype=torch.long),
            success=torch.tensor(data["success"], dtype=torch.bool),
            distances=torch.tensor(data["distances"], dtype=torch.float32),
            queries=int(data["queries"]),
            seconds=float(data["seconds"]),
            target=None if data["target"] is None else torch.tensor(data["target"]),
            sample_queries=None
            if data.get("sample_queries") is None
            else torch.tensor(data["sample_queries"], dtype=torch.long),
            extra=dict(data.get("extra", {})),
        )


def _mean(mask: torch.Tensor) -> float:
    return float(mask.float().mean()) if mask.numel() else 0.0


class EvasionAttack(ABC):
    """Base class of evasion attacks (see the module docstring).

    Subclasses set the class attributes and implement :meth:`_run`; their constructors are
    keyword-only, call ``super().__init__`` and validate their own parameters eagerly.
    """

    #: short name used by the CLI and in reports
    name: ClassVar[str] = "attack"
    #: what the model must offer
    requires: ClassVar[Capability] = Capability.GRADIENTS
    #: norms the algorithm supports
    norms: ClassVar[tuple[Norm, ...]] = (Norm.LINF, Norm.L2)
    #: True for minimum-norm attacks, whose ``eps`` is optional
    minimum_norm: ClassVar[bool] = False
    #: whether a targeted variant exists
    supports_targeted: ClassVar[bool] = True

    def __init__(
        self,
        *,
        norm: str | Norm = "linf",
        eps: float | None = None,
        targeted: bool = False,
        batch_size: int = 256,
        seed: int | None = 0,
    ) -> None:
        self.norm = parse_norm(norm)
        if self.norm not in self.norms:
            raise ConfigurationError(
                f"{type(self).__name__} supports norm "
                f"{' or '.join(repr(n.value) for n in self.norms)}, not {self.norm.value!r}"
            )
        if eps is None:
            if not self.minimum_norm:
                raise ConfigurationError(
                    f"{type(self).__name__} needs eps, the perturbation budget"
                )
        else:
            eps = float(eps)
            if not (math.isfinite(eps) and eps >= 0):
                raise ConfigurationError(f"eps must be a finite number >= 0, got {eps!r}")
        self.eps = eps
        if targeted and not self.supports_targeted:
            raise ConfigurationError(f"{type(self).__name__} has no targeted variant")
        self.targeted = bool(targeted)
        _check_positive_int(batch_size, "batch_size")
        self.batch_size = int(batch_size)
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ConfigurationError(f"seed must be an int or None, got {seed!r}")
        self.seed = seed

    # -- the public call --------------------------------------------------------------------
    @final
    def generate(
        self,
        classifier: Classifier,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        target: torch.Tensor | None = None,
        constraints: FeatureSchema | None = None,
    ) -> EvasionResult:
        """Attack ``classifier`` on inputs ``x`` with true labels ``y``.

        ``constraints`` (a :class:`~bastion.data.tabular.FeatureSchema`, for tabular inputs
        of shape ``(n, features)``) makes every returned row obey the data's rules: the
        algorithm may use it inside its iterations (:meth:`_constrain`), and the result is
        projected onto it in any case, each column moved only towards the original row.
        Inputs stay float64 then (thresholds of tree models need the precision).

        ``y`` defaults to the model's own predictions. ``target`` (the classes to reach) is
        required by targeted attacks and refused by untargeted ones. Returns an
        :class:`EvasionResult` whose ``x_adv`` lies inside the bounds and the eps-ball.
        """
        if constraints is not None:
            if tuple(classifier.input_shape) != (constraints.n_features,):
                raise InputError(
                    f"the schema has {constraints.n_features} columns but the model takes "
                    f"inputs of shape {tuple(classifier.input_shape)}"
                )
            bad = constraints.check(x.detach().cpu().double().numpy()) if x.dim() == 2 else None
            if bad is not None and bad.any():
                raise InputError(
                    f"{int((bad > 0).sum())} input row(s) already break the schema's rules "
                    f"(first: row {int(np.flatnonzero(bad)[0])}); attack rows the contract accepts"
                )
        self._constraints = constraints
        # Tabular rows and tree models keep float64: split thresholds need the precision.
        keep = constraints is not None or getattr(classifier, "ensemble", None) is not None
        x, y, target = self._validate(classifier, x, y, target, keep_double=keep)
        self._reset()
        n = x.shape[0]
        device = classifier.device
        generator = torch.Generator(device=device)
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(self.seed)
        lo, hi = classifier.bounds
        start = time.perf_counter()
        queries_before = classifier.queries
        chunks: list[torch.Tensor] = []
        with classifier.evaluation():
            for i in range(0, n, self.batch_size):
                xb = x[i : i + self.batch_size].to(device)
                yb = y[i : i + self.batch_size].to(device)
                tb = None if target is None else target[i : i + self.batch_size].to(device)
                x_adv = self._run(classifier, xb, yb, tb, generator)
                if not isinstance(x_adv, torch.Tensor) or x_adv.shape != xb.shape:
                    raise RuntimeError(
                        f"{type(self).__name__}._run returned {getattr(x_adv, 'shape', x_adv)!r}"
                        f" for a batch of shape {tuple(xb.shape)}"
                    )
                x_adv = x_adv.detach().to(xb.dtype)
                x_adv = torch.where(torch.isfinite(x_adv), x_adv, xb)
                if self.eps is not None:
                    x_adv = xb + project(x_adv - xb, self.norm, self.eps)
                chunks.append(self._constrain(clip(x_adv, (lo, hi)), xb))
            queries = classifier.queries - queries_before
            x_adv_all = torch.cat(chunks)
            with torch.no_grad(), _unmetered(classifier):
                clean_pred = self._predict(classifier, x.to(device))
                adv_pred = self._predict(classifier, x_adv_all)
        seconds = time.perf_counter() - start
        y_dev = y.to(device)
        if self.targeted and target is not None:
            success = adv_pred == target.to(device)
        else:
            success = adv_pred != y_dev
        distances = flat_norm(x_adv_all - x.to(device), self.norm)
        return EvasionResult(
            attack=self.name,
            params=self.get_params(),
            norm=self.norm,
            eps=self.eps,
            targeted=self.targeted,
            x_adv=x_adv_all.cpu(),
            y=y.cpu(),
            clean_pred=clean_pred.cpu(),
            adv_pred=adv_pred.cpu(),
            success=success.cpu(),
            distances=distances.cpu(),
            queries=queries,
            seconds=seconds,
            target=None if target is None else target.cpu(),
            sample_queries=self._sample_queries(),
            extra=self._result_extra(),
        )

    # -- for subclasses ---------------------------------------------------------------------
    @abstractmethod
    def _run(
        self,
        classifier: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Return adversarial examples for one batch (on the model's device).

        ``target`` is set exactly when ``self.targeted``. Use ``generator`` for all randomness.
        The base class projects and clips the result; the algorithm may rely on that.
        """

    def _reset(self) -> None:
        """Called at the start of every :meth:`generate`: clear per-run state (``*_``)."""
        return None

    def _constrain(
        self, x_adv: torch.Tensor, x: torch.Tensor, *, relaxed: bool = False
    ) -> torch.Tensor:
        """``x_adv`` projected onto the run's tabular rules (identity without a schema).

        ``relaxed=True`` (inside an attack's iterations) applies only the convex part, the
        ranges and immutable columns, so that small steps on integer or categorical columns
        can accumulate; the full projection is applied to every result.
        """
        schema: FeatureSchema | None = getattr(self, "_constraints", None)
        if schema is None:
            return x_adv
        if relaxed:
            xo = x.detach()
            low = torch.as_tensor(schema.low, dtype=x_adv.dtype, device=x_adv.device)
            high = torch.as_tensor(schema.high, dtype=x_adv.dtype, device=x_adv.device)
            fixed = torch.as_tensor(schema.immutable, device=x_adv.device)
            boxed = torch.maximum(
                torch.minimum(x_adv, torch.maximum(high, xo)), torch.minimum(low, xo)
            )
            return torch.where(fixed, xo, boxed)
        out = schema.project(
            x_adv.detach().cpu().double().numpy(),
            x.detach().cpu().double().numpy(),
            norm=self.norm.value,
            eps=self.eps,
        )
        return torch.as_tensor(out, dtype=x_adv.dtype, device=x_adv.device)

    def _rules(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
        """The full projection onto the run's tabular rules (``None`` without a schema).

        Attacks that project *in the loop* evaluate the model only on ``rules(x_iter, x0)``:
        every iterate the model sees, and every point kept or returned, obeys the schema,
        so a success is never one that the final projection would undo.
        """
        if getattr(self, "_constraints", None) is None:
            return None

        def rules(x_adv: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
            return self._constrain(x_adv, x0)

        return rules

    def _sample_queries(self) -> torch.Tensor | None:
        """Per-sample query counts of the run, for attacks that meter them (else ``None``)."""
        return None

    def _result_extra(self) -> dict[str, Any]:
        """Attack-specific, JSON-ready figures for :attr:`EvasionResult.extra`."""
        return {}

    def get_params(self) -> dict[str, Any]:
        """The constructor parameters, as JSON-ready values (not ``_private`` or ``result_``)."""
        out: dict[str, Any] = {}
        for key, value in vars(self).items():
            if key.startswith("_") or key.endswith("_"):
                continue
            out[key] = value.value if isinstance(value, Norm) else value
        return out

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in sorted(self.get_params().items()))
        return f"{type(self).__name__}({params})"

    # -- helpers ----------------------------------------------------------------------------
    @staticmethod
    def _predict(classifier: Classifier, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        return (
            torch.cat(
                [
                    classifier.predict(x[i : i + batch_size])
                    for i in range(0, x.shape[0], batch_size)
                ]
            )
            if x.shape[0]
            else torch.empty(0, dtype=torch.long, device=x.device)
        )

    def _validate(
        self,
        classifier: Classifier,
        x: torch.Tensor,
        y: torch.Tensor | None,
        target: torch.Tensor | None,
        *,
        keep_double: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        missing = self.requires & ~classifier.capabilities
        if missing:
            from bastion.attacks.evasion.catalog import runnable_attacks

            need = "gradients" if Capability.GRADIENTS in missing else "scores"
            runnable = runnable_attacks(classifier, self.norm)
            raise CapabilityError(
                f"{type(self).__name__} needs {need}, which {type(classifier).__name__} does "
                f"not offer; attacks that run on this model: {', '.join(runnable) or 'none'}"
            )
        if not isinstance(x, torch.Tensor):
            raise InputError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if tuple(x.shape[1:]) != tuple(classifier.input_shape) or x.dim() < 2:
            raise InputError(
                f"x has shape {tuple(x.shape)}; the model expects (n, "
                f"{', '.join(map(str, classifier.input_shape))})"
            )
        if x.shape[0] == 0:
            raise InputError("x is empty: give at least one input")
        x = x.detach().float() if x.dtype == torch.float64 and not keep_double else x.detach()
        if keep_double:
            x = x.double()
        check_bounds(x, classifier.bounds)
        if y is None:
            with torch.no_grad(), _unmetered(classifier):
                y = self._predict(classifier, x.to(classifier.device)).cpu()
        if not isinstance(y, torch.Tensor):
            raise InputError(f"y must be a torch.Tensor of labels, got {type(y).__name__}")
        check_labels(y, classifier.num_classes, x.shape[0])
        y = y.long()
        if self.targeted:
            if target is None:
                raise InputError(f"{type(self).__name__}(targeted=True) needs target= labels")
            check_labels(target, classifier.num_classes, x.shape[0], name="target")
            target = target.long()
        elif target is not None:
            raise InputError("target= was given to an untargeted attack; pass targeted=True")
        return x, y, target


def _check_positive_int(value: object, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")


def check_positive(value: object, name: str, *, integer: bool = False) -> None:
    """Raise :class:`ConfigurationError` unless ``value`` is a positive (integer) number."""
    if integer:
        _check_positive_int(value, name)
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (math.isfinite(value) and value > 0)
    ):
        raise ConfigurationError(f"{name} must be a positive number, got {value!r}")
