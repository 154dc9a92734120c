"""Knockoff Nets' adaptive sampling policy: a gradient bandit over clusters of the pool.

Orekondy, Schiele & Fritz, "Knockoff Nets: Stealing Functionality of Black-Box Models",
CVPR 2019, section 4.1.2 ("adaptive" strategy). https://arxiv.org/abs/1812.02766

The pool is split into groups (the actions of the bandit): the attacker's own coarse labels when
given (``clusters=`` a tensor of group ids), otherwise k-means clusters of the flattened pool.
At each step the policy ``π = softmax(H)`` picks a group, a not-yet-queried pool sample of that
group is sent to the victim, and the group's preference ``H`` moves by the gradient-bandit rule

    H(z) += α (r − r̄) (1[z = chosen] − π(z)),

where ``r̄`` is the mean reward so far (the baseline). The reward is the sum of the paper's
three signals, each rescaled to ``[0, 1]`` by the smallest and largest value seen so far:

- ``certainty`` — the victim's margin between its two most likely classes;
- ``diversity`` — ``Σₖ max(0, yₖ − ȳₖ)``, how far the answer rises above the mean of the last
  ``window`` answers (rewards groups that bring new classes);
- ``loss`` — the surrogate's cross-entropy to the victim's answer (rewards what the copy has not
  learnt yet; the surrogate is the one trained after the previous round).

This is the paper's policy over a one-level hierarchy (groups → samples); the paper's deeper
label hierarchies are not modelled. Queries are drawn in steps of ``step`` samples (default 16)
between bandit updates, so the policy adapts within a round.

Example
-------
>>> import torch
>>> from torch import nn
>>> from bastion.models import TorchClassifier
>>> from bastion.attacks.extraction import AdaptiveStrategy, KnockoffNets
>>> _ = torch.manual_seed(0)
>>> victim = TorchClassifier(nn.Linear(4, 3), input_shape=(4,), num_classes=3)
>>> x = torch.rand(600, 4)
>>> res = KnockoffNets(query_budget=300, strategy=AdaptiveStrategy(clusters=4),
...                    surrogate="linear", rounds=2).extract(victim, x_pool=x[:500])
>>> res.queries
300
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bastion.attacks.extraction._strategies import QueryStrategy
from bastion.attacks.extraction.base import check_float, check_int
from bastion.errors import ConfigurationError, InputError

__all__ = ["AdaptiveStrategy", "kmeans"]

_REWARDS = ("certainty", "diversity", "loss")


@torch.no_grad()
def kmeans(x: torch.Tensor, k: int, *, generator: torch.Generator, iters: int = 15) -> torch.Tensor:
    """Cluster ids ``(n,)`` of the rows of ``x`` (flattened) by Lloyd's k-means.

    Centres start at ``k`` distinct rows drawn with ``generator``; an empty cluster keeps its
    centre. ``k`` is capped at the number of rows.
    """
    flat = x.reshape(x.shape[0], -1).float()
    k = min(k, flat.shape[0])
    centres = flat[torch.randperm(flat.shape[0], generator=generator)[:k]].clone()
    assign = torch.zeros(flat.shape[0], dtype=torch.long)
    for _ in range(iters):
        assign = torch.cdist(flat, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, flat)
        counts = torch.bincount(assign, minlength=k).unsqueeze(1)
        moved = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
        if torch.allclose(moved, centres):
            break
        centres = moved
    return assign


class AdaptiveStrategy(QueryStrategy):
    """Knockoff Nets' adaptive policy (see the module docstring).

    Parameters
    ----------
    clusters: number of k-means groups of the pool (default 10), or a tensor of ``n_pool``
        integer group ids (e.g. the attacker's own coarse labels of its pool).
    rewards: which of ``"certainty"``, ``"diversity"``, ``"loss"`` make the reward (default all).
    alpha: the bandit's step size (default 0.5).
    window: answers averaged for the diversity reward (default 25).
    step: samples drawn between two bandit updates (default 16).
    """

    name = "adaptive"
    needs_pool = True

    def __init__(
        self,
        *,
        clusters: int | torch.Tensor = 10,
        rewards: Sequence[str] = _REWARDS,
        alpha: float = 0.5,
        window: int = 25,
        step: int = 16,
    ) -> None:
        if isinstance(clusters, torch.Tensor):
            if clusters.dim() != 1 or clusters.dtype.is_floating_point or clusters.numel() == 0:
                raise ConfigurationError(
                    "clusters must be an int or a 1-D integer tensor of group ids, one per pool "
                    f"sample; got a tensor of shape {tuple(clusters.shape)} and {clusters.dtype}"
                )
            if int(clusters.min()) < 0:
                raise ConfigurationError("cluster ids must be >= 0")
        else:
            check_int(clusters, "clusters", minimum=1)
        self.clusters = clusters
        chosen = tuple(rewards)
        unknown = [r for r in chosen if r not in _REWARDS]
        if not chosen or unknown:
            raise ConfigurationError(
                f"rewards must be a non-empty subset of {_REWARDS}, got {tuple(rewards)!r}"
            )
        self.rewards = chosen
        self.alpha = check_float(alpha, "alpha")
        check_int(window, "window", minimum=1)
        check_int(step, "step", minimum=1)
        self.window = window
        self.step = step

    # -- state ------------------------------------------------------------------------------
    def reset(
        self,
        *,
        pool: torch.Tensor | None,
        input_shape: tuple[int, ...],
        bounds: tuple[float, float],
        generator: torch.Generator,
    ) -> None:
        super().reset(pool=pool, input_shape=input_shape, bounds=bounds, generator=generator)
        if pool is None:
            raise ConfigurationError("the adaptive strategy needs x_pool")
        if isinstance(self.clusters, torch.Tensor):
            if self.clusters.numel() != pool.shape[0]:
                raise InputError(
                    f"clusters holds {self.clusters.numel()} group ids for a pool of "
                    f"{pool.shape[0]} samples; give one id per pool sample"
                )
            ids = torch.unique(self.clusters.cpu().long(), return_inverse=True)[1]
        else:
            ids = kmeans(pool, self.clusters, generator=generator)
        k = int(ids.max()) + 1
        # each group's members in a random order; drawing takes them front to back
        self._members = [
            members[torch.randperm(members.numel(), generator=generator)]
            for members in (torch.nonzero(ids == g).flatten() for g in range(k))
        ]
        self._taken = torch.zeros(k, dtype=torch.long)
        self._prefs = torch.zeros(k, dtype=torch.float64)
        self._pending: list[tuple[int, float]] = []  # (group, π(group)) of the last draws
        self._reward_sum = 0.0
        self._reward_count = 0
        self._lo = torch.full((len(_REWARDS),), float("inf"), dtype=torch.float64)
        self._hi = torch.full((len(_REWARDS),), float("-inf"), dtype=torch.float64)
        self._recent: torch.Tensor | None = None
        self.group_counts_ = torch.zeros(k, dtype=torch.long)

    @property
    def query_step(self) -> int:
        return self.step

    def policy(self) -> torch.Tensor:
        """The current probabilities of the groups that still hold unqueried samples."""
        sizes = torch.tensor([m.numel() for m in self._members])
        open_ = self._taken < sizes
        logits = self._prefs.masked_fill(~open_, float("-inf"))
        if not bool(open_.any()):
            return torch.zeros_like(self._prefs)
        return torch.softmax(logits, dim=0)

    # -- the protocol -----------------------------------------------------------------------
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
            raise ConfigurationError("the adaptive strategy needs x_pool")
        picks: list[int] = []
        self._pending = []
        for _ in range(n):
            pi = self.policy()
            if float(pi.sum()) == 0.0:
                break
            g = int(torch.multinomial(pi, 1, generator=generator))
            picks.append(int(self._members[g][self._taken[g]]))
            self._taken[g] += 1
            self.group_counts_[g] += 1
            self._pending.append((g, float(pi[g])))
        return self._pool[torch.tensor(picks, dtype=torch.long)]

    @torch.no_grad()
    def observe(self, x: torch.Tensor, answers: torch.Tensor, *, surrogate: nn.Module) -> None:
        if not self._pending:
            return
        was_training = surrogate.training
        surrogate.eval()
        try:
            out = surrogate(x).double()
        finally:
            surrogate.train(was_training)
        if answers.dim() == 1:  # labels only: one-hot answers
            y = F.one_hot(answers.long(), out.shape[1]).double()
        else:
            y = answers.double()
        k = y.shape[1]
        raw = torch.zeros((y.shape[0], len(_REWARDS)), dtype=torch.float64)
        top2 = y.topk(min(2, k), dim=1).values
        raw[:, 0] = top2[:, 0] - (top2[:, 1] if k > 1 else 0.0)
        for i in range(y.shape[0]):
            ref = y[i] if self._recent is None else self._recent.mean(0)
            raw[i, 1] = (y[i] - ref).clamp_min(0).sum()
            self._recent = (
                y[i : i + 1]
                if self._recent is None
                else torch.cat([self._recent, y[i : i + 1]])[-self.window :]
            )
        raw[:, 2] = -(y * F.log_softmax(out, dim=1)).sum(1)
        self._lo = torch.minimum(self._lo, raw.min(0).values)
        self._hi = torch.maximum(self._hi, raw.max(0).values)
        span = (self._hi - self._lo).clamp_min(1e-12)
        scaled = (raw - self._lo) / span
        use = torch.tensor([r in self.rewards for r in _REWARDS])
        reward = scaled[:, use].sum(1)
        for (g, _), r in zip(self._pending, reward.tolist(), strict=True):
            self._reward_count += 1
            self._reward_sum += r
            baseline = self._reward_sum / self._reward_count
            pi = self.policy()
            grad = -pi
            grad[g] += 1.0
            self._prefs += self.alpha * (r - baseline) * grad
        self._pending = []

    def __repr__(self) -> str:
        clusters = (
            f"<{self.clusters.numel()} ids>"
            if isinstance(self.clusters, torch.Tensor)
            else self.clusters
        )
        return (
            f"AdaptiveStrategy(clusters={clusters}, rewards={self.rewards}, alpha={self.alpha}, "
            f"window={self.window}, step={self.step})"
        )
