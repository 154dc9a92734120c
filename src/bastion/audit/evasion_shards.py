"""Evasion attacks split into sample shards that give the same per-sample results however split.

The samples are cut into fixed-size *blocks*; block ``b`` is attacked by copies of the attacks
seeded from the attack's own seed and ``b`` alone (:func:`block_seed`), on exactly the block's
samples. A *shard* (one unit of work for an :class:`~bastion.audit.executor.Executor`) is a run
of whole blocks, so 1 shard or 7 shards compute the same blocks with the same seeds and the
same batch shapes, and the merged per-sample results are bit-identical. The model and the data
travel once to each worker (the executor's ``shared``); a unit carries only block bounds.

>>> import torch
>>> from torch import nn
>>> from bastion.models import TorchClassifier
>>> from bastion.attacks.evasion import PGD
>>> _ = torch.manual_seed(0)
>>> clf = TorchClassifier(nn.Sequential(nn.Linear(4, 3)), input_shape=(4,), num_classes=3)
>>> x = torch.rand(10, 4); y = clf.predict(x)
>>> one = run_sharded(clf, x, y, [PGD(eps=0.3, steps=3)], block_size=4, shards=1)
>>> three = run_sharded(clf, x, y, [PGD(eps=0.3, steps=3)], block_size=4, shards=3)
>>> bool(torch.equal(one.results["pgd"].x_adv, three.results["pgd"].x_adv))
True
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from bastion.attacks.evasion.base import EvasionAttack, EvasionResult
from bastion.attacks.evasion.catalog import with_eps
from bastion.errors import ConfigurationError
from bastion.models.base import Classifier

__all__ = ["ShardedRun", "block_seed", "run_sharded", "shard_blocks"]


@dataclass(frozen=True)
class ShardedRun:
    """The attacks' merged results (per sample, in the samples' order) and the robust
    accuracy at each extra radius of the curve (``curve[eps]``)."""

    results: dict[str, EvasionResult]
    curve: dict[float, float]
    blocks: int
    shards: int


@dataclass(frozen=True)
class _Shared:
    """What every shard needs, sent once per worker."""

    classifier: Classifier
    x: torch.Tensor
    y: torch.Tensor
    attacks: tuple[EvasionAttack, ...]
    curve_attack: EvasionAttack | None
    radii: tuple[float, ...]
    constraints: Any = None


def block_seed(seed: int | None, block: int) -> int | None:
    """The seed of an attack's copy on block ``block`` (``None`` stays unseeded).

    >>> block_seed(0, 3) == block_seed(0, 3) != block_seed(0, 4)
    True
    """
    if seed is None:
        return None
    digest = hashlib.sha256(f"{seed}\0block\0{block}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def shard_blocks(
    n: int, block_size: int, shards: int | None
) -> list[tuple[tuple[int, int, int], ...]]:
    """``n`` samples as blocks ``(index, start, stop)`` grouped into ``shards`` runs of
    consecutive blocks (``None``: one shard per block; never more shards than blocks).

    >>> shard_blocks(10, 4, 2)
    [((0, 0, 4), (1, 4, 8)), ((2, 8, 10),)]
    """
    if block_size < 1:
        raise ConfigurationError(f"the evasion block size must be at least 1, got {block_size}")
    if shards is not None and shards < 1:
        raise ConfigurationError(f"the number of evasion shards must be at least 1, got {shards}")
    blocks = [(b, s, min(s + block_size, n)) for b, s in enumerate(range(0, n, block_size))]
    k = len(blocks) if shards is None else min(shards, len(blocks))
    per, extra = divmod(len(blocks), k)
    out, at = [], 0
    for i in range(k):
        size = per + (i < extra)
        out.append(tuple(blocks[at : at + size]))
        at += size
    return out


def _seeded(attack: EvasionAttack, block: int) -> EvasionAttack:
    out = copy.deepcopy(attack)
    out.seed = block_seed(attack.seed, block)
    return out


def _attack_shard(
    shared: _Shared, blocks: tuple[tuple[int, int, int], ...]
) -> list[tuple[dict[str, EvasionResult], list[torch.Tensor]]]:
    """One unit: every attack (and every extra radius of the curve) on each of its blocks."""
    out = []
    rules = shared.constraints
    for b, start, stop in blocks:
        xb, yb = shared.x[start:stop], shared.y[start:stop]
        results = {
            a.name: _seeded(a, b).generate(shared.classifier, xb, yb, constraints=rules)
            for a in shared.attacks
        }
        robust = []
        if shared.curve_attack is not None:
            base = _seeded(shared.curve_attack, b)
            for e in shared.radii:
                r = with_eps(base, e).generate(shared.classifier, xb, yb, constraints=rules)
                robust.append(r.clean_correct & (r.adv_pred == r.y))
        out.append((results, robust))
    return out


def run_sharded(
    classifier: Classifier,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: Sequence[EvasionAttack],
    *,
    block_size: int = 64,
    shards: int | None = None,
    curve_attack: EvasionAttack | None = None,
    radii: Sequence[float] = (),
    executor: Any = None,
    constraints: Any = None,
) -> ShardedRun:
    """Run ``attacks`` (and ``curve_attack`` at each of ``radii``) on ``(x, y)`` in blocks of
    ``block_size`` samples, ``shards`` units of work through ``executor`` (default in-process),
    and merge the per-sample results exactly (see the module docstring). ``constraints`` (a
    :class:`~bastion.data.tabular.FeatureSchema`) holds every attack to a table's rules."""
    from bastion.audit.units import map_units

    units = shard_blocks(int(x.shape[0]), int(block_size), shards)
    shared = _Shared(classifier, x, y, tuple(attacks), curve_attack, tuple(radii), constraints)
    shards_out = map_units(executor, _attack_shard, units, shared)
    parts = [block for shard in shards_out for block in shard]
    results = {a.name: _merge([p[0][a.name] for p in parts], a) for a in attacks}
    curve = {
        e: float(torch.cat([p[1][i] for p in parts]).float().mean()) for i, e in enumerate(radii)
    }
    return ShardedRun(results, curve, blocks=len(parts), shards=len(units))


def _merge(parts: list[EvasionResult], attack: EvasionAttack) -> EvasionResult:
    """The blocks' results of one attack as one result over all samples, in order."""

    def cat(name: str) -> Any:
        values = [getattr(p, name) for p in parts]
        return None if any(v is None for v in values) else torch.cat(values)

    return EvasionResult(
        attack=attack.name,
        params=attack.get_params(),
        norm=attack.norm,
        eps=attack.eps,
        targeted=attack.targeted,
        x_adv=cat("x_adv"),
        y=cat("y"),
        clean_pred=cat("clean_pred"),
        adv_pred=cat("adv_pred"),
        success=cat("success"),
        distances=cat("distances"),
        queries=sum(p.queries for p in parts),
        seconds=sum(p.seconds for p in parts),
        target=cat("target"),
        sample_queries=cat("sample_queries"),
        extra=_merge_extra([p.extra for p in parts], [p.n for p in parts]),
    )


def _merge_extra(extras: list[Any], weights: list[int]) -> Any:
    """Blocks' attack-specific figures combined: counts summed, fractions averaged by block
    size, per-sample lists (one value per sample of each block) joined in order, other lists
    joined without repeats, mappings merged key by key."""
    first = extras[0]
    if isinstance(first, bool):
        return first
    if isinstance(first, int):
        return sum(extras)
    if isinstance(first, float):
        total = sum(weights) or 1
        return sum(e * w for e, w in zip(extras, weights, strict=True)) / total
    if (isinstance(first, list) and len(extras) > 1
            and all(isinstance(e, list) and len(e) == w for e, w in zip(extras, weights,
                                                                        strict=True))
            and not all(isinstance(v, str) for e in extras for v in e)):
        return [v for e in extras for v in e]  # per-sample figures (tree distances): in order
    if isinstance(first, list) and all(isinstance(v, str | int) for e in extras for v in e):
        return list(dict.fromkeys(v for e in extras for v in e))
    if isinstance(first, dict):
        keys = list(dict.fromkeys(k for e in extras for k in e))
        out = {}
        for k in keys:
            have = [(e[k], w) for e, w in zip(extras, weights, strict=True) if k in e]
            out[k] = _merge_extra([v for v, _ in have], [w for _, w in have])
        return out
    return first
