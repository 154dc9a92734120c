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

Needs scores (a score-only or white-box victim); queries are uniform in the victim's bounds.
Rows with non-finite scores are dropped. ``extra["residual"]`` is the relative residual of the
fit: near 0 for a linear softmax model answering exact scores, large when the victim is not
linear or its outputs are hardened (rounded, truncated, noised).

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
from typing import Any

import torch
from torch import nn

from bastion.attacks.extraction.base import ExtractionAttack, QueryOracle, Recorder, check_int
from bastion.errors import ConfigurationError, QueryBudgetExceeded
from bastion.models.base import Capability

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
    """

    name = "equation"

    def __init__(
        self,
        *,
        query_budget: int,
        queries: int | None = None,
        batch_size: int = 1024,
        seed: int | None = 0,
    ) -> None:
        super().__init__(query_budget=query_budget, batch_size=batch_size, seed=seed)
        if queries is not None:
            check_int(queries, "queries", minimum=2)
            if queries > query_budget:
                raise ConfigurationError(
                    f"queries ({queries}) exceeds query_budget ({query_budget})"
                )
        self.queries = queries
        self._residual: float | None = None
        self._used_rows = 0

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
        lo, hi = victim.bounds
        x = lo + (hi - lo) * torch.rand((n, *shape), generator=generator, dtype=torch.float64)
        if _wants_float32(victim):
            x = x.float()
        scores = oracle.logits(x)
        design = torch.cat([x.reshape(n, d).double(), torch.ones(n, 1, dtype=torch.float64)], dim=1)
        keep = torch.isfinite(scores).all(dim=1)
        if int(keep.sum()) < d + 1:
            log.warning(
                "only %d of %d answers are finite: the system is underdetermined",
                int(keep.sum()),
                n,
            )
        scores = torch.where(torch.isfinite(scores), scores, torch.full_like(scores, -1e3))
        centered = scores - scores.mean(dim=1, keepdim=True)
        theta = torch.linalg.lstsq(design[keep], centered[keep], driver="gelsd").solution
        fitted = design @ theta
        denom = float(torch.linalg.norm(centered)) or 1.0
        self._residual = float(torch.linalg.norm(fitted - centered)) / denom
        self._used_rows = int(keep.sum())
        model = LinearSoftmaxModel(theta[:d].T.contiguous(), theta[d].contiguous())
        record(model)
        return model

    def _result_extra(self) -> dict[str, Any]:
        return {"residual": self._residual, "rows_used": self._used_rows}


def _wants_float32(victim: object) -> bool:
    """Score-only adapters take float32; a white-box float64 module keeps float64 precision."""
    inner = getattr(victim, "base", None)
    if inner is not None:
        return _wants_float32(inner)
    module = getattr(victim, "module", None)
    if not isinstance(module, nn.Module):
        return True
    return not any(p.dtype == torch.float64 for p in module.parameters())
