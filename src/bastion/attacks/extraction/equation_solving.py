"""Equation-solving extraction of linear softmax (logistic) models.

Tramèr, Zhang, Juels, Reiter & Ristenpart, "Stealing Machine Learning Models via Prediction
APIs", USENIX Security 2016. https://arxiv.org/abs/1609.02943

A multinomial logistic model answers ``p = softmax(W x + b)``, so its log-probabilities are
``log p = W x + b - c(x)`` with one unknown per-row constant ``c(x)``. Centering the
log-probabilities across classes removes it: ``log p - mean(log p) = (W - W̄) x + (b - b̄)``, a
linear system in the ``k (d + 1)`` unknowns ``(W - W̄, b - b̄)``. Each query yields ``k``
equations, so ``d + 1`` queries in general position determine the model (far fewer than the
``(d + 1) k`` of the one-class-at-a-time scheme); more queries give a least-squares fit. The
recovered model is the victim exactly, up to the softmax's invariance to adding the same vector
to every class: its probabilities, and so its labels, are the victim's.

Needs scores (a score-only or white-box victim); queries are uniform in the victim's bounds,
or in the per-feature box ``low``/``high`` when given (a table's columns have ranges of their
own: querying inside them keeps the scores away from the censoring floor).

Censored scores. Score APIs clamp small probabilities (bastion's sklearn, ONNX and remote
adapters at ``1e-12``); a clamped log-probability is not an equation, only an upper bound, and
on a confident victim many are clamped. The solver asks the adapter which outputs are censored
(:meth:`~bastion.models.base.BaseClassifier.censored`; non-finite scores, and a minimum value
repeated bit for bit, count as censored too) and never uses them: class by class it writes
``log p_j - c(x) = W_j x + b_j`` only where ``p_j`` is uncensored, estimating the per-row
constant ``c(x)`` from the classes already solved that are uncensored in the same row,
starting from the class uncensored most often. A class with too few such rows to determine
its ``d + 1`` unknowns gets more queries, in batches of ``d + 1``, while the budget lasts.

``extra["status"]`` says what came back: ``"exact"`` (every class determined and every answer
consistent: uncensored scores fitted, censored ones at or below the floor), ``"underdetermined"``
(some classes were censored too often within the budget; ``extra["undetermined_classes"]``
lists them and their rows of the surrogate only respect the censoring bound) or
``"inconsistent"`` (the answers are not those of a linear softmax model, e.g. rounded or noised
scores). Anything but ``"exact"`` is also logged as a warning. ``extra["residual"]`` is the
relative residual over the uncensored scores (near 0 for exact scores); with exactly ``d + 1``
usable rows per class the system is square and the residual cannot reveal a wrong model, so
more ``queries`` give a check as well as a least-squares fit.

Defaults: ``queries = d + 1`` (``d`` the number of input features), capped by ``query_budget``.

Example
-------
>>> import torch
>>> from torch import nn
>>> from bastion.models import TorchClassifier
>>> from bastion.attacks.extraction import EquationSolving
>>> _ = torch.manual_seed(0)
>>> victim = TorchClassifier(nn.Linear(4, 3).double(), input_shape=(4,), num_classes=3)
>>> res = EquationSolving(query_budget=15).extract(victim)
>>> res.queries
5
>>> w = victim.module.weight.detach()
>>> bool(torch.allclose(res.surrogate.weight, w - w.mean(0), atol=1e-6))
True
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bastion.attacks.extraction.base import ExtractionAttack, QueryOracle, Recorder, check_int
from bastion.errors import ConfigurationError, QueryBudgetExceeded
from bastion.models.base import Capability, censored_outputs

__all__ = ["EquationSolving", "LinearSoftmaxModel"]

log = logging.getLogger(__name__)


class LinearSoftmaxModel(nn.Module):
    """``x ↦ W flatten(x) + b`` in float64, returned in the input's floating dtype."""

    weight: torch.Tensor
    bias: torch.Tensor

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().double().clone(), requires_grad=False)
        self.bias = nn.Parameter(bias.detach().double().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_dtype = x.dtype if torch.is_floating_point(x) else torch.float32
        h = x.reshape(x.shape[0], -1).to(torch.float64)
        return (h @ self.weight.T + self.bias).to(out_dtype)


class EquationSolving(ExtractionAttack):
    """Recover a linear softmax model from ``d + 1`` (or ``queries``) score queries.

    Parameters
    ----------
    query_budget: the most queries the attack may send.
    queries: how many to send (default ``d + 1``, the fewest that determine the model); more
        give a least-squares fit that tolerates rounding in the victim's scores.
    seed: seeds the query points.
    low, high: per-feature bounds of the query box (flattened input order; default the
        victim's scalar bounds), e.g. a table's column ranges.
    """

    name = "equation"

    def __init__(
        self,
        *,
        query_budget: int,
        queries: int | None = None,
        batch_size: int = 1024,
        seed: int | None = 0,
        low: Any = None,
        high: Any = None,
    ) -> None:
        super().__init__(query_budget=query_budget, batch_size=batch_size, seed=seed)
        box = [None if v is None else torch.as_tensor(v, dtype=torch.float64).reshape(-1)
               for v in (low, high)]
        if (box[0] is None) != (box[1] is None):
            raise ConfigurationError("give both low and high, or neither")
        if box[0] is not None and box[1] is not None and (
            box[0].shape != box[1].shape or not bool(torch.isfinite(box[0]).all())
            or not bool(torch.isfinite(box[1]).all()) or bool((box[0] > box[1]).any())
        ):
            raise ConfigurationError("low and high must be finite, of one length, low <= high")
        self._low, self._high = box
        if queries is not None:
            check_int(queries, "queries", minimum=2)
            if queries > query_budget:
                raise ConfigurationError(
                    f"queries ({queries}) exceeds query_budget ({query_budget})"
                )
        self.queries = queries
        self._fit: _Fit | None = None

    def _requires(self) -> Capability:
        return Capability.SCORES

    def _run(
        self,
        oracle: QueryOracle,
        x_pool: torch.Tensor | None,
        generator: torch.Generator,
        record: Recorder,
    ) -> nn.Module:
        victim = oracle.victim
        shape = tuple(victim.input_shape)
        d = math.prod(shape)
        n = self.queries if self.queries is not None else min(d + 1, oracle.remaining)
        if n < d + 1:
            raise QueryBudgetExceeded(
                f"equation solving needs at least d + 1 = {d + 1} queries for {d} input features, "
                f"but the budget allows {oracle.remaining}; raise query_budget"
            )
        lo: Any
        hi: Any
        lo, hi = victim.bounds
        if self._low is not None and self._high is not None:
            if self._low.numel() != d:
                raise ConfigurationError(
                    f"low/high give {self._low.numel()} features but the victim takes {d}")
            lo, hi = self._low.reshape(shape), self._high.reshape(shape)
        xs: list[torch.Tensor] = []
        scores: list[torch.Tensor] = []
        while True:
            x = lo + (hi - lo) * torch.rand((n, *shape), generator=generator, dtype=torch.float64)
            if _wants_float32(victim):
                x = x.float()
            scores.append(oracle.logits(x))
            xs.append(x.reshape(n, d).double())
            fit = _solve(torch.cat(xs), torch.cat(scores), victim)
            n = min(d + 1, oracle.remaining)
            if not fit.undetermined or n == 0:
                break
        self._fit = fit
        model = LinearSoftmaxModel(fit.weight, fit.bias)
        record(model)
        if fit.status != "exact":
            log.warning("equation solving could not recover the model exactly: %s", fit.why)
        return model

    def _result_extra(self) -> dict[str, Any]:
        fit = self._fit
        if fit is None:
            return {}
        return {
            "status": fit.status,
            "why": fit.why,
            "residual": fit.residual,
            "rows_used": fit.rows_used,
            "censored": fit.censored,
            "undetermined_classes": list(fit.undetermined),
            "undeclared_floor": fit.undeclared_floor,
        }


@dataclass(frozen=True)
class _Fit:
    weight: torch.Tensor
    bias: torch.Tensor
    status: str
    why: str
    residual: float
    rows_used: int
    censored: int
    undetermined: tuple[int, ...]
    undeclared_floor: bool


def _censoring(scores: torch.Tensor, victim: object) -> tuple[torch.Tensor, bool]:
    """The adapter's censored outputs; without a declared floor, a minimum value repeated bit
    for bit is taken for an undeclared clamp."""
    mask = censored_outputs(victim, scores)  # type: ignore[arg-type]
    finite = scores[torch.isfinite(scores)]
    undeclared = False
    if getattr(victim, "score_floor", None) is None and finite.numel() > 1:
        low = finite.min()
        ties = (scores == low) & ~mask
        if int(ties.sum()) >= 2 and bool((finite != low).any()):
            mask = mask | (scores == low)
            undeclared = True
    return mask, undeclared


def _solve(x: torch.Tensor, scores: torch.Tensor, victim: object) -> _Fit:
    """Fit ``W, b`` class by class on the uncensored scores only (see the module docstring)."""
    n, d = x.shape
    k = scores.shape[1]
    censored, undeclared = _censoring(scores, victim)
    ok = ~censored
    z = torch.cat([x, torch.ones(n, 1, dtype=torch.float64)], dim=1)
    s = torch.where(ok, scores, torch.zeros_like(scores))
    theta = torch.zeros(k, d + 1, dtype=torch.float64)
    known = torch.zeros(k, dtype=torch.bool)
    if bool(ok.any()):
        known[int(ok.sum(0).argmax())] = True
    progress = True
    while progress:
        progress = False
        # the per-row constant, estimated from the solved classes uncensored in that row
        pred = z @ theta.T
        weight = (ok & known).double()
        count = weight.sum(1)
        const = ((s - pred) * weight).sum(1) / count.clamp_min(1)
        for j in range(k):
            if known[j]:
                continue
            rows = ok[:, j] & (count > 0)
            if int(rows.sum()) < d + 1 or int(torch.linalg.matrix_rank(z[rows])) < d + 1:
                continue
            target = s[rows, j] - const[rows]
            theta[j] = torch.linalg.lstsq(z[rows], target[:, None], driver="gelsd").solution[:, 0]
            known[j] = True
            progress = True
    pred = z @ theta.T
    weight = (ok & known).double()
    count = weight.sum(1)
    const = ((s - pred) * weight).sum(1) / count.clamp_min(1)
    floor = getattr(victim, "score_floor", None)
    undetermined = tuple(int(j) for j in torch.nonzero(~known).flatten())
    for j in undetermined:
        # only bounds are known: keep the class at (or below) the lowest score seen for it
        seen = scores[:, j][torch.isfinite(scores[:, j])] - const[torch.isfinite(scores[:, j])]
        theta[j] = 0.0
        theta[j, d] = float(seen.min()) if seen.numel() else -1e3
    fitted = z @ theta.T + const[:, None]
    used = ok & known[None, :] & (count[:, None] > 0)
    resid = torch.where(used, fitted - s, torch.zeros_like(s))
    centered = torch.where(used, s - const[:, None], torch.zeros_like(s))
    denom = float(torch.linalg.norm(centered)) or 1.0
    residual = float(torch.linalg.norm(resid)) / denom
    violated = 0
    if floor is not None:
        logp = torch.log_softmax(z @ theta.T, dim=1)
        violated = int((censored & known[None, :] & (logp > floor + 1e-3 * abs(floor))).sum())
    if undetermined:
        status = "underdetermined"
        why = (f"classes {list(undetermined)} had too few uncensored scores (fewer than d + 1 = "
               f"{d + 1} rows in general position) within the query budget; raise query_budget")
    elif residual > 1e-3 or violated:
        status = "inconsistent"
        why = (f"the answers are not those of a linear softmax model (relative residual "
               f"{residual:.3g}, {violated} censored scores the fit puts above the floor)")
    else:
        status, why = "exact", ""
    theta = theta - theta.mean(dim=0, keepdim=True)
    return _Fit(
        weight=theta[:, :d].contiguous(),
        bias=theta[:, d].contiguous(),
        status=status,
        why=why,
        residual=residual,
        rows_used=int((used.any(dim=1)).sum()),
        censored=int(censored.sum()),
        undetermined=undetermined,
        undeclared_floor=undeclared,
    )


def _wants_float32(victim: object) -> bool:
    """Score-only adapters take float32; a white-box float64 module keeps float64 precision."""
    inner = getattr(victim, "base", None)
    if inner is not None:
        return _wants_float32(inner)
    module = getattr(victim, "module", None)
    if not isinstance(module, nn.Module):
        return True
    return not any(p.dtype == torch.float64 for p in module.parameters())
