"""The contract every model-extraction attack follows.

A subclass writes only the algorithm, in :meth:`ExtractionAttack._run`. The public
:meth:`ExtractionAttack.extract` is final: it checks the victim offers what the attack needs,
validates the attacker's data, puts the victim in evaluation mode (restored even when the attack
raises), seeds a generator and hands the algorithm a :class:`QueryOracle` — the attacker's only
view of the victim. The oracle answers through the victim's own ``logits()`` / ``predict()``
(so the victim's query counter and ``query_budget`` apply) and refuses, before querying, any
batch that would take the attack past its own ``query_budget``: no attack can overspend.

Held-out evaluation data (``x_eval``) is never the adversary's: the victim's answers on it are
taken unmetered, once, and used to measure fidelity after each training round (the fidelity vs
queries curve) and at the end.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, final

import torch
from torch import nn

from bastion.errors import CapabilityError, ConfigurationError, InputError, QueryBudgetExceeded
from bastion.models.base import Capability, Classifier, check_bounds, check_labels
from bastion.models.base import unmetered as _unmetered
from bastion.models.torch_model import TorchClassifier

__all__ = ["ExtractionAttack", "ExtractionResult", "QueryOracle", "module_predict"]

Recorder = Callable[[nn.Module], None]


@dataclass(frozen=True)
class ExtractionResult:
    """What an extraction attack produced: the surrogate, its fidelity and the queries it cost.

    ``fidelity`` is the agreement of the surrogate's labels with the victim's on the held-out
    ``x_eval``; ``accuracy`` is the surrogate's accuracy on ``y_eval``; both are ``None`` when no
    evaluation data was given. ``history`` holds ``(queries, fidelity)`` after each round.
    """

    attack: str
    params: dict[str, Any]
    queries: int
    query_budget: int
    seconds: float
    input_shape: tuple[int, ...]
    num_classes: int
    bounds: tuple[float, float]
    fidelity: float | None = None
    accuracy: float | None = None
    victim_accuracy: float | None = None
    n_eval: int = 0
    history: tuple[tuple[int, float], ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    surrogate: nn.Module | None = field(default=None, compare=False, repr=False)

    def surrogate_classifier(self) -> TorchClassifier:
        """The surrogate as a white-box classifier (for transfer attacks)."""
        if self.surrogate is None:
            raise ConfigurationError(
                "this result holds no surrogate (it was read back from JSON); rerun the attack"
            )
        return TorchClassifier(
            self.surrogate,
            input_shape=self.input_shape,
            num_classes=self.num_classes,
            bounds=self.bounds,
        )

    def summary(self) -> dict[str, Any]:
        """The headline metrics as plain JSON-ready values."""
        return {
            "attack": self.attack,
            "queries": self.queries,
            "query_budget": self.query_budget,
            "fidelity": self.fidelity,
            "accuracy": self.accuracy,
            "victim_accuracy": self.victim_accuracy,
            "n_eval": self.n_eval,
            "seconds": self.seconds,
        }

    def to_dict(self) -> dict[str, Any]:
        """Serialise to JSON-ready values (the surrogate's weights are not included)."""
        return {
            **self.summary(),
            "params": self.params,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "bounds": list(self.bounds),
            "history": [list(p) for p in self.history],
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExtractionResult:
        """Inverse of :meth:`to_dict` (without the surrogate)."""
        lo, hi = data["bounds"]
        return cls(
            attack=data["attack"],
            params=dict(data["params"]),
            queries=int(data["queries"]),
            query_budget=int(data["query_budget"]),
            seconds=float(data["seconds"]),
            input_shape=tuple(int(s) for s in data["input_shape"]),
            num_classes=int(data["num_classes"]),
            bounds=(float(lo), float(hi)),
            fidelity=data.get("fidelity"),
            accuracy=data.get("accuracy"),
            victim_accuracy=data.get("victim_accuracy"),
            n_eval=int(data.get("n_eval", 0)),
            history=tuple((int(q), float(f)) for q, f in data.get("history", [])),
            extra=dict(data.get("extra", {})),
        )


class QueryOracle:
    """The attacker's metered view of a victim, with a hard query budget.

    Every row sent counts once. A call that would take :attr:`used` past :attr:`budget` raises
    :class:`~bastion.errors.QueryBudgetExceeded` before anything is sent; attacks size their
    batches with :attr:`remaining`.
    """

    def __init__(self, victim: Classifier, budget: int, *, batch_size: int = 1024) -> None:
        self.victim = victim
        self.budget = int(budget)
        self.batch_size = int(batch_size)
        self.used = 0

    @property
    def remaining(self) -> int:
        return self.budget - self.used

    def _reserve(self, n: int) -> None:
        if n > self.remaining:
            raise QueryBudgetExceeded(
                f"extraction query budget of {self.budget} would be exceeded: {self.used} used, "
                f"{n} more requested; raise query_budget"
            )

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The victim's scores (log-probabilities up to a per-row constant), float64, on CPU."""
        self._reserve(x.shape[0])
        out = []
        for i in range(0, x.shape[0], self.batch_size):
            xb = x[i : i + self.batch_size]
            out.append(self.victim.logits(xb.to(self.victim.device)).detach().cpu().double())
            self.used += xb.shape[0]
        return torch.cat(out) if out else torch.empty(0, self.victim.num_classes)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """The victim's class probabilities (softmax of its scores), float32, on CPU."""
        return torch.softmax(self.logits(x), dim=1).float()

    @torch.no_grad()
    def labels(self, x: torch.Tensor) -> torch.Tensor:
        """The victim's predicted labels, on CPU."""
        self._reserve(x.shape[0])
        out = []
        for i in range(0, x.shape[0], self.batch_size):
            xb = x[i : i + self.batch_size]
            out.append(self.victim.predict(xb.to(self.victim.device)).cpu().long())
            self.used += xb.shape[0]
        return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


@torch.no_grad()
def module_predict(module: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Labels a torch module predicts for ``x`` (eval mode, restored after), on CPU."""
    was_training = module.training
    module.eval()
    try:
        device = next(iter(module.parameters()), torch.empty(0)).device
        chunks = [
            module(x[i : i + batch_size].to(device)).argmax(1).cpu()
            for i in range(0, x.shape[0], batch_size)
        ]
        return torch.cat(chunks) if chunks else torch.empty(0, dtype=torch.long)
    finally:
        module.train(was_training)


def _victim_labels(victim: Classifier, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    with torch.no_grad(), _unmetered(victim):
        chunks = [
            victim.predict(x[i : i + batch_size].to(victim.device)).cpu().long()
            for i in range(0, x.shape[0], batch_size)
        ]
    return torch.cat(chunks) if chunks else torch.empty(0, dtype=torch.long)


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a == b).float().mean()) if a.numel() else 0.0


class ExtractionAttack(ABC):
    """Base class of extraction attacks (see the module docstring).

    Subclasses set :attr:`name`, implement :meth:`_run` (and :meth:`_requires` when what they
    need depends on their parameters); their constructors are keyword-only, call
    ``super().__init__`` and validate their own parameters eagerly.
    """

    #: short name used by the CLI and in reports
    name: ClassVar[str] = "extraction"

    def __init__(self, *, query_budget: int, batch_size: int = 256, seed: int | None = 0) -> None:
        check_int(query_budget, "query_budget", minimum=1)
        check_int(batch_size, "batch_size", minimum=1)
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ConfigurationError(f"seed must be an int or None, got {seed!r}")
        self.query_budget = int(query_budget)
        self.batch_size = int(batch_size)
        self.seed = seed

    # -- the public call --------------------------------------------------------------------
    @final
    def extract(
        self,
        victim: Classifier,
        *,
        x_pool: torch.Tensor | None = None,
        x_eval: torch.Tensor | None = None,
        y_eval: torch.Tensor | None = None,
    ) -> ExtractionResult:
        """Steal ``victim`` within ``query_budget`` queries and return the surrogate.

        ``x_pool`` is the attacker's unlabelled data (required by pool-based strategies);
        ``x_eval`` / ``y_eval`` are held-out data used only to measure fidelity and accuracy.
        """
        x_pool, x_eval, y_eval = self._validate(victim, x_pool, x_eval, y_eval)
        generator = torch.Generator()
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(self.seed)
        history: list[tuple[int, float]] = []
        start = time.perf_counter()
        with victim.evaluation():
            ref = None if x_eval is None else _victim_labels(victim, x_eval)
            oracle = QueryOracle(victim, self.query_budget, batch_size=max(self.batch_size, 1))

            def record(module: nn.Module) -> None:
                if ref is not None and x_eval is not None:
                    history.append((oracle.used, _agreement(module_predict(module, x_eval), ref)))

            surrogate = self._run(oracle, x_pool, generator, record)
        seconds = time.perf_counter() - start
        if oracle.used > self.query_budget:  # pragma: no cover - the oracle refuses first
            raise RuntimeError("query budget overspent")
        surrogate.eval()
        fidelity = accuracy = victim_accuracy = None
        if x_eval is not None and ref is not None:
            pred = module_predict(surrogate, x_eval)
            fidelity = _agreement(pred, ref)
            if not history or history[-1][0] != oracle.used:
                history.append((oracle.used, fidelity))
            if y_eval is not None:
                accuracy = _agreement(pred, y_eval)
                victim_accuracy = _agreement(ref, y_eval)
        return ExtractionResult(
            attack=self.name,
            params=self.get_params(),
            queries=oracle.used,
            query_budget=self.query_budget,
            seconds=seconds,
            input_shape=tuple(victim.input_shape),
            num_classes=victim.num_classes,
            bounds=victim.bounds,
            fidelity=fidelity,
            accuracy=accuracy,
            victim_accuracy=victim_accuracy,
            n_eval=0 if x_eval is None else int(x_eval.shape[0]),
            history=tuple(history),
            extra=self._result_extra(),
            surrogate=surrogate,
        )

    # -- for subclasses ---------------------------------------------------------------------
    @abstractmethod
    def _run(
        self,
        oracle: QueryOracle,
        x_pool: torch.Tensor | None,
        generator: torch.Generator,
        record: Recorder,
    ) -> nn.Module:
        """Query ``oracle`` and return the trained surrogate (a CPU torch module).

        Call ``record(surrogate)`` after each training round to add a point to the fidelity vs
        queries curve. Use ``generator`` for all randomness.
        """

    def _requires(self) -> Capability:
        """What the victim must offer; label-only by default."""
        return Capability.LABELS

    def _needs_pool(self) -> bool:
        """Whether the attack needs attacker data (a natural pool) passed as ``x_pool``."""
        return False

    def _result_extra(self) -> dict[str, Any]:
        """Attack-specific, JSON-ready figures for :attr:`ExtractionResult.extra`."""
        return {}

    def get_params(self) -> dict[str, Any]:
        """The constructor parameters as JSON-ready values (not ``_private`` or ``fitted_``)."""
        out: dict[str, Any] = {}
        for key, value in vars(self).items():
            if key.startswith("_") or key.endswith("_"):
                continue
            if isinstance(value, str | int | float | bool) or value is None:
                out[key] = value
            else:
                out[key] = getattr(value, "name", type(value).__name__)
        return out

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in sorted(self.get_params().items()))
        return f"{type(self).__name__}({params})"

    # -- validation -------------------------------------------------------------------------
    def _validate(
        self,
        victim: Classifier,
        x_pool: torch.Tensor | None,
        x_eval: torch.Tensor | None,
        y_eval: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        missing = self._requires() & ~victim.capabilities
        if missing:
            raise CapabilityError(
                f"{type(self).__name__} needs the victim's scores, which "
                f"{type(victim).__name__} does not offer (label-only); use a label-only attack "
                "such as CopycatCNN or KnockoffNets(labels='hard')"
            )
        x_pool = _check_x(x_pool, victim, "x_pool")
        if self._needs_pool() and x_pool is None:
            raise InputError(
                f"{type(self).__name__} needs x_pool, the attacker's unlabelled data; pass "
                "x_pool= or use the 'noise' strategy"
            )
        x_eval = _check_x(x_eval, victim, "x_eval")
        if y_eval is not None:
            if x_eval is None:
                raise InputError("y_eval was given without x_eval")
            if not isinstance(y_eval, torch.Tensor):
                raise InputError(f"y_eval must be a torch.Tensor, got {type(y_eval).__name__}")
            check_labels(y_eval, victim.num_classes, x_eval.shape[0], name="y_eval")
            y_eval = y_eval.long().cpu()
        return x_pool, x_eval, y_eval


def _check_x(x: torch.Tensor | None, victim: Classifier, name: str) -> torch.Tensor | None:
    if x is None:
        return None
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2 or tuple(x.shape[1:]) != tuple(victim.input_shape):
        raise InputError(
            f"{name} has shape {tuple(x.shape)}; the victim expects (n, "
            f"{', '.join(map(str, victim.input_shape))})"
        )
    if x.shape[0] == 0:
        raise InputError(f"{name} is empty: give at least one input")
    x = x.detach().cpu().float()
    check_bounds(x, victim.bounds, name=name)
    return x


def check_int(value: object, name: str, *, minimum: int = 1) -> None:
    """Raise :class:`ConfigurationError` unless ``value`` is an int ``>= minimum``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigurationError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_float(value: object, name: str, *, minimum: float = 0.0, strict: bool = True) -> float:
    """Return ``value`` as a float, raising :class:`ConfigurationError` unless it is finite and
    above ``minimum`` (or at least ``minimum`` when ``strict`` is false)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < minimum or (strict and v == minimum):
        op = ">" if strict else ">="
        raise ConfigurationError(f"{name} must be a finite number {op} {minimum:g}, got {value!r}")
    return v
