"""Query strategies of learning-based extraction: which inputs the adversary sends next.

- :class:`PoolStrategy` — a natural data pool, sampled at random without replacement (Knockoff
  Nets' "random" policy; Copycat CNN's non-problem-domain images). It stops when the pool is
  exhausted: a deterministic victim answers a repeated query the same way.
- :class:`NoiseStrategy` — uniform random inputs in the victim's bounds (no data at all).
- :class:`JacobianStrategy` — Jacobian-based dataset augmentation (Papernot et al., "Practical
  Black-Box Attacks against Machine Learning", AsiaCCS 2017, https://arxiv.org/abs/1602.02697):
  a small seed from the pool, then new points ``x + λ · sign(∇ₓ F_y(x))`` where ``F`` is the
  current surrogate and ``y`` the victim's label of ``x``; the sign of ``λ`` flips every ``tau``
  rounds (periodic step size).
- :class:`~bastion.attacks.extraction.AdaptiveStrategy` (``"adaptive"``) — Knockoff Nets'
  gradient-bandit policy over clusters of the pool (in :mod:`._adaptive`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import nn

from bastion.attacks.extraction.base import check_float, check_int
from bastion.errors import ConfigurationError

__all__ = ["JacobianStrategy", "NoiseStrategy", "PoolStrategy", "QueryStrategy", "make_strategy"]


class QueryStrategy(ABC):
    """Chooses the next inputs to query. :meth:`reset` is called at the start of each attack."""

    name: ClassVar[str] = "strategy"
    needs_pool: ClassVar[bool] = False

    def reset(
        self,
        *,
        pool: torch.Tensor | None,
        input_shape: tuple[int, ...],
        bounds: tuple[float, float],
        generator: torch.Generator,
    ) -> None:
        self._pool = pool
        self._shape = input_shape
        self._bounds = bounds

    @abstractmethod
    def propose(
        self,
        n: int,
        *,
        surrogate: nn.Module,
        queried_x: torch.Tensor,
        queried_y: torch.Tensor,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """At most ``n`` new inputs (CPU, float32); an empty batch ends the attack.

        ``queried_x`` / ``queried_y`` are the inputs sent in the previous rounds and the
        victim's labels (all inputs sent so far, unless :attr:`query_step` splits a round).
        """

    @property
    def query_step(self) -> int | None:
        """Inputs proposed per :meth:`propose` call within a round (``None``: the whole slice).

        A strategy that learns from each answer (see :meth:`observe`) asks for small steps.
        """
        return None

    def observe(self, x: torch.Tensor, answers: torch.Tensor, *, surrogate: nn.Module) -> None:
        """The victim's answers to the last proposed inputs: probabilities ``(n, k)`` or labels
        ``(n,)``; ``surrogate`` is the copy as trained so far. Does nothing by default."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class PoolStrategy(QueryStrategy):
    """Random samples of a natural pool, without replacement."""

    name = "pool"
    needs_pool = True

    def reset(
        self,
        *,
        pool: torch.Tensor | None,
        input_shape: tuple[int, ...],
        bounds: tuple[float, float],
        generator: torch.Generator,
    ) -> None:
        super().reset(pool=pool, input_shape=input_shape, bounds=bounds, generator=generator)
        size = 0 if pool is None else pool.shape[0]
        self._order = torch.randperm(size, generator=generator)
        self._next = 0

    def propose(
        self,
        n: int,
        *,
        surrogate: nn.Module,
        queried_x: torch.Tensor,
        queried_y: torch.Tensor,
        generator: torch.Generator,
    ) -> torch.Tensor:
        if self._pool is None:
            raise ConfigurationError("the pool strategy needs x_pool")
        idx = self._order[self._next : self._next + n]
        self._next += idx.numel()
        return self._pool[idx]


class NoiseStrategy(QueryStrategy):
    """Uniform random inputs in the victim's bounds."""

    name = "noise"

    def propose(
        self,
        n: int,
        *,
        surrogate: nn.Module,
        queried_x: torch.Tensor,
        queried_y: torch.Tensor,
        generator: torch.Generator,
    ) -> torch.Tensor:
        lo, hi = self._bounds
        return lo + (hi - lo) * torch.rand((n, *self._shape), generator=generator)


class JacobianStrategy(QueryStrategy):
    """Papernot's Jacobian-based augmentation from a seed drawn out of the pool.

    Parameters: ``seed_size`` (pool samples in the first round, default 100), ``step`` (λ, in
    units of the bounds' width, default 0.1), ``tau`` (rounds between sign flips of λ, default 3).
    """

    name = "jacobian"
    needs_pool = True

    def __init__(self, *, seed_size: int = 100, step: float = 0.1, tau: int = 3) -> None:
        check_int(seed_size, "seed_size", minimum=1)
        self.seed_size = seed_size
        self.step = check_float(step, "step")
        check_int(tau, "tau", minimum=1)
        self.tau = tau

    def reset(
        self,
        *,
        pool: torch.Tensor | None,
        input_shape: tuple[int, ...],
        bounds: tuple[float, float],
        generator: torch.Generator,
    ) -> None:
        super().reset(pool=pool, input_shape=input_shape, bounds=bounds, generator=generator)
        self._round = 0

    def propose(
        self,
        n: int,
        *,
        surrogate: nn.Module,
        queried_x: torch.Tensor,
        queried_y: torch.Tensor,
        generator: torch.Generator,
    ) -> torch.Tensor:
        if self._pool is None:
            raise ConfigurationError("the jacobian strategy needs x_pool for its seed set")
        self._round += 1
        if queried_x.shape[0] == 0:
            idx = torch.randperm(self._pool.shape[0], generator=generator)[: self.seed_size]
            return self._pool[idx[:n]]
        pick = torch.randperm(queried_x.shape[0], generator=generator)[:n]
        x, y = queried_x[pick], queried_y[pick]
        lo, hi = self._bounds
        sign = -1.0 if ((self._round - 2) // self.tau) % 2 else 1.0
        lam = sign * self.step * (hi - lo)
        was_training = surrogate.training
        surrogate.eval()
        try:
            with torch.enable_grad():
                xg = x.detach().clone().requires_grad_(True)
                out = surrogate(xg)
                picked = out.gather(1, y.view(-1, 1)).sum()
                (grad,) = torch.autograd.grad(picked, xg)
        finally:
            surrogate.train(was_training)
        return (x + lam * grad.sign()).clamp(lo, hi).detach()

    def __repr__(self) -> str:
        return f"JacobianStrategy(seed_size={self.seed_size}, step={self.step}, tau={self.tau})"


_STRATEGIES: dict[str, type[QueryStrategy]] = {
    "pool": PoolStrategy,
    "natural": PoolStrategy,
    "noise": NoiseStrategy,
    "random": NoiseStrategy,
    "jacobian": JacobianStrategy,
}


def make_strategy(strategy: str | QueryStrategy) -> QueryStrategy:
    """A :class:`QueryStrategy` from a name (pool, noise, jacobian, adaptive) or an instance."""
    if isinstance(strategy, QueryStrategy):
        return strategy
    if isinstance(strategy, str) and strategy.lower() in _STRATEGIES:
        return _STRATEGIES[strategy.lower()]()
    if isinstance(strategy, str) and strategy.lower() == "adaptive":
        from bastion.attacks.extraction._adaptive import AdaptiveStrategy

        return AdaptiveStrategy()
    raise ConfigurationError(
        f"unknown query strategy {strategy!r}; use 'pool', 'noise', 'jacobian' or 'adaptive' "
        "(or a QueryStrategy instance)"
    )
