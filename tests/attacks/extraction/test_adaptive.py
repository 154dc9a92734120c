"""Knockoff Nets' adaptive (gradient-bandit) sampling policy against the digits MLP."""

from __future__ import annotations

import pytest
import torch

from bastion.attacks.extraction import (
    AdaptiveStrategy,
    CopycatCNN,
    KnockoffNets,
    LearningExtraction,
    black_box,
    kmeans,
)
from bastion.errors import ConfigurationError, InputError


def _junk_pool(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """700 digits (group 0) and 700 blank images (group 1): the victim says the same of all."""
    pool = torch.cat([x[:700], torch.zeros(700, *x.shape[1:])])
    groups = torch.cat([torch.zeros(700), torch.ones(700)]).long()
    return pool, groups


def test_bandit_learns_to_avoid_an_uninformative_group(mlp_victim, digits_split) -> None:
    x, _ = digits_split
    pool, groups = _junk_pool(x)
    strategy = AdaptiveStrategy(clusters=groups)
    res = KnockoffNets(query_budget=600, strategy=strategy, rounds=3).extract(
        mlp_victim, x_pool=pool, x_eval=x[1400:1700]
    )
    assert res.queries == 600
    counts = strategy.group_counts_
    assert int(counts.sum()) == 600
    # random sampling would spend about half the budget on blank images
    assert int(counts[1]) < 60
    assert strategy.policy()[0] > 0.9
    assert res.fidelity is not None and res.fidelity > 0.9


def test_adaptive_by_name_with_kmeans_clusters(mlp_victim, digits_split) -> None:
    x, _ = digits_split
    pool, _ = _junk_pool(x)
    attack = KnockoffNets(query_budget=600, strategy="adaptive", rounds=3)
    assert isinstance(attack.strategy, AdaptiveStrategy)
    res = attack.extract(mlp_victim, x_pool=pool, x_eval=x[1400:1700])
    assert res.params["strategy"] == "adaptive"
    blank = pool.reshape(1400, -1).abs().sum(1) == 0
    ids = kmeans(pool, 10, generator=torch.Generator().manual_seed(0))
    assert ids[blank].unique().numel() == 1  # the blank images form one cluster
    assert res.fidelity is not None and res.fidelity > 0.9


def test_kmeans_separates_two_blobs() -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.randn(50, 3, generator=g) * 0.1
    b = torch.randn(40, 3, generator=g) * 0.1 + 5.0
    ids = kmeans(torch.cat([a, b]), 2, generator=torch.Generator().manual_seed(0))
    assert ids[:50].unique().numel() == 1 and ids[50:].unique().numel() == 1
    assert ids[0] != ids[50]
    assert kmeans(a[:3], 10, generator=g).max() <= 2  # k capped at the number of rows


def test_budget_pool_exhaustion_and_seed(mlp_victim, digits_split) -> None:
    x, _ = digits_split
    strict = black_box(mlp_victim.base, query_budget=333)
    res = LearningExtraction(query_budget=333, strategy="adaptive", rounds=2, epochs=2).extract(
        strict, x_pool=x[:1400]
    )
    assert res.queries == strict.queries == 333
    small = KnockoffNets(query_budget=500, strategy="adaptive", rounds=2, epochs=2).extract(
        mlp_victim, x_pool=x[:100]
    )
    assert small.queries == 100  # every pool sample once, then it stops
    runs = [
        KnockoffNets(query_budget=200, strategy="adaptive", rounds=2, epochs=2, seed=3).extract(
            mlp_victim, x_pool=x[:1400], x_eval=x[1400:1500]
        )
        for _ in range(2)
    ]
    assert runs[0].history == runs[1].history
    for a, b in zip(runs[0].surrogate.parameters(), runs[1].surrogate.parameters(), strict=True):
        assert torch.equal(a, b)


def test_label_only_victim(mlp_victim, digits_split) -> None:
    x, _ = digits_split
    pool, groups = _junk_pool(x)
    strategy = AdaptiveStrategy(clusters=groups, rewards=("diversity",))
    labels_only = black_box(mlp_victim.base, access="labels")
    res = CopycatCNN(query_budget=400, strategy=strategy, rounds=2).extract(
        labels_only, x_pool=pool, x_eval=x[1400:1700]
    )
    assert res.queries == 400
    assert int(strategy.group_counts_[1]) < 100
    assert res.fidelity is not None and res.fidelity > 0.85


def test_parameters_are_validated(mlp_victim, digits_split) -> None:
    x, _ = digits_split
    with pytest.raises(ConfigurationError, match="rewards"):
        AdaptiveStrategy(rewards=("certainty", "novelty"))
    with pytest.raises(ConfigurationError, match="rewards"):
        AdaptiveStrategy(rewards=())
    with pytest.raises(ConfigurationError, match="clusters"):
        AdaptiveStrategy(clusters=0)
    with pytest.raises(ConfigurationError, match="clusters"):
        AdaptiveStrategy(clusters=torch.rand(10))
    with pytest.raises(ConfigurationError, match="alpha"):
        AdaptiveStrategy(alpha=0.0)
    with pytest.raises(ConfigurationError, match="step"):
        AdaptiveStrategy(step=0)
    with pytest.raises(InputError, match="one id per pool sample"):
        KnockoffNets(
            query_budget=10, strategy=AdaptiveStrategy(clusters=torch.zeros(5).long())
        ).extract(mlp_victim, x_pool=x[:20])
    assert mlp_victim.queries == 0


def test_catalog_builds_the_adaptive_attack() -> None:
    from bastion.attacks.extraction.catalog import STRATEGIES, build_extraction_attack

    assert "adaptive" in STRATEGIES
    attack = build_extraction_attack("adaptive", query_budget=100, labels="hard")
    assert isinstance(attack, KnockoffNets) and isinstance(attack.strategy, AdaptiveStrategy)
    assert attack.labels == "hard"
