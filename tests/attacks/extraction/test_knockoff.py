"""Learning-based extraction (Knockoff Nets, Copycat CNN) against a digits MLP."""

from __future__ import annotations

import pytest
import torch

from bastion.attacks.extraction import (
    CopycatCNN,
    JacobianStrategy,
    KnockoffNets,
    LearningExtraction,
    black_box,
    fidelity,
    transfer_rate,
)
from bastion.errors import CapabilityError, ConfigurationError, InputError
from bastion.models import TorchClassifier
from bastion.models.zoo import small_mlp


def test_knockoff_pool_above_90_percent_fidelity(mlp_victim, digits_split) -> None:
    x, y = digits_split
    res = KnockoffNets(query_budget=10_000).extract(
        mlp_victim, x_pool=x[:1400], x_eval=x[1400:1700], y_eval=y[1400:1700]
    )
    assert res.queries <= 10_000
    assert res.queries == mlp_victim.queries == 1400  # the pool is used once, then it stops
    assert res.fidelity is not None and res.fidelity > 0.9
    assert res.accuracy is not None and res.accuracy > 0.85
    assert [q for q, _ in res.history] == [1400]  # one slice of 2,000 holds the whole pool
    assert fidelity(res, mlp_victim.base, x[1400:1700]) == pytest.approx(res.fidelity)


def test_copycat_label_only_and_rounds(mlp_victim, digits_split) -> None:
    x, y = digits_split
    labels_only = black_box(mlp_victim.base, access="labels")
    res = CopycatCNN(query_budget=1400, rounds=4).extract(
        labels_only, x_pool=x[:1400], x_eval=x[1400:1700], y_eval=y[1400:1700]
    )
    assert res.queries == 1400
    assert [q for q, _ in res.history] == [350, 700, 1050, 1400]
    assert res.fidelity is not None and res.fidelity > 0.9
    assert res.history[-1][1] > res.history[0][1] - 0.02
    with pytest.raises(CapabilityError, match="scores"):
        KnockoffNets(query_budget=100).extract(labels_only, x_pool=x[:100])


def test_jacobian_augmentation_from_a_small_seed(mlp_victim, digits_split) -> None:
    x, y = digits_split
    res = KnockoffNets(
        query_budget=1600, strategy=JacobianStrategy(seed_size=100), rounds=4
    ).extract(mlp_victim, x_pool=x[:1400], x_eval=x[1400:1700], y_eval=y[1400:1700])
    assert res.queries == 1600
    # the seed round, then the queried set doubles each round until the 400-query slices cap it
    assert [q for q, _ in res.history] == [100, 200, 400, 800, 1200, 1600]
    assert res.fidelity is not None and res.fidelity > 0.85
    # augmented points are not pool points: they lie off the data the attacker started with
    assert res.fidelity > res.history[0][1]


def test_noise_is_weaker_than_the_natural_pool(mlp_victim, digits_split) -> None:
    x, _ = digits_split
    kw = {"query_budget": 1000, "rounds": 2}
    pool = KnockoffNets(**kw).extract(mlp_victim, x_pool=x[:1400], x_eval=x[1400:1700])
    noise = KnockoffNets(strategy="noise", **kw).extract(mlp_victim, x_eval=x[1400:1700])
    assert noise.queries == 1000
    assert pool.fidelity is not None and noise.fidelity is not None
    assert pool.fidelity > noise.fidelity + 0.1
    assert noise.fidelity > 0.15  # still better than chance (0.1)


@pytest.mark.parametrize("strategy", ["pool", "noise", "jacobian"])
def test_query_budget_is_never_exceeded(mlp_victim, digits_split, strategy) -> None:
    x, _ = digits_split
    strict = black_box(mlp_victim.base, query_budget=997)  # raises past 997 queries
    res = LearningExtraction(query_budget=997, strategy=strategy, rounds=3, epochs=2).extract(
        strict, x_pool=x[:1400]
    )
    assert res.queries == strict.queries == 997


def test_deterministic_under_a_seed(mlp_victim, digits_split) -> None:
    x, _ = digits_split
    runs = [
        KnockoffNets(query_budget=300, rounds=2, epochs=3, seed=5).extract(
            mlp_victim, x_pool=x[:1400], x_eval=x[1400:1500]
        )
        for _ in range(2)
    ]
    assert runs[0].history == runs[1].history
    for a, b in zip(runs[0].surrogate.parameters(), runs[1].surrogate.parameters(), strict=True):
        assert torch.equal(a, b)
    other = KnockoffNets(query_budget=300, rounds=2, epochs=3, seed=6).extract(
        mlp_victim, x_pool=x[:1400]
    )
    assert not torch.equal(next(other.surrogate.parameters()), next(runs[0].surrogate.parameters()))


def test_stolen_copy_transfers_adversarial_examples(mlp_victim, digits_split) -> None:
    x, y = digits_split
    res = KnockoffNets(query_budget=1400, rounds=2).extract(mlp_victim, x_pool=x[:1400])
    stolen = transfer_rate(res, mlp_victim.base, x[1400:1600], y[1400:1600], eps=0.2)
    torch.manual_seed(0)
    untrained = transfer_rate(
        small_mlp(64, 10), mlp_victim.base, x[1400:1600], y[1400:1600], eps=0.2
    )
    assert stolen.victim_correct > 150
    assert stolen.surrogate_success_rate > 0.9
    assert stolen.transfer_rate > 0.5
    assert stolen.transfer_rate > untrained.transfer_rate + 0.2


def test_parameters_are_validated(mlp_victim) -> None:
    with pytest.raises(ConfigurationError, match="query_budget"):
        KnockoffNets(query_budget=0)
    with pytest.raises(ConfigurationError, match="strategy"):
        KnockoffNets(query_budget=10, strategy="bandit")
    with pytest.raises(ConfigurationError, match="labels"):
        KnockoffNets(query_budget=10, labels="probs")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="surrogate"):
        KnockoffNets(query_budget=10, surrogate="resnet")
    with pytest.raises(ConfigurationError, match="rounds"):
        KnockoffNets(query_budget=10, rounds=0)
    with pytest.raises(ConfigurationError, match="lr"):
        KnockoffNets(query_budget=10, lr=-1.0)
    with pytest.raises(ConfigurationError, match="seed_size"):
        JacobianStrategy(seed_size=0)
    with pytest.raises(InputError, match="x_pool"):
        KnockoffNets(query_budget=10).extract(mlp_victim)
    with pytest.raises(InputError, match="x_pool"):
        KnockoffNets(query_budget=10).extract(mlp_victim, x_pool=torch.rand(5, 64))
    with pytest.raises(InputError, match="bounds"):
        KnockoffNets(query_budget=10).extract(mlp_victim, x_pool=torch.rand(5, 1, 8, 8) + 2)
    assert mlp_victim.queries == 0


def test_cnn_surrogate_and_custom_factory(mlp_victim, digits_split) -> None:
    x, _ = digits_split
    res = CopycatCNN(query_budget=200, surrogate="cnn", rounds=1, epochs=2).extract(
        mlp_victim, x_pool=x[:1400]
    )
    assert isinstance(res.surrogate[0], torch.nn.Conv2d)
    res = CopycatCNN(
        query_budget=200, rounds=1, epochs=1, surrogate=lambda shape, k: small_mlp(64, k, hidden=8)
    ).extract(mlp_victim, x_pool=x[:1400])
    assert res.surrogate[1].out_features == 8
    assert res.params["surrogate"] == "custom"
    clf = res.surrogate_classifier()
    assert isinstance(clf, TorchClassifier) and clf.num_classes == 10


def test_min_steps_and_cosine_schedule(mlp_victim, digits_split) -> None:
    x, _ = digits_split
    kw = {"query_budget": 200, "rounds": 1, "epochs": 1}
    short = KnockoffNets(**kw).extract(mlp_victim, x_pool=x[:1400], x_eval=x[1400:1700])
    # 200 samples are 4 batches of 64: min_steps=200 trains 50 epochs instead of one
    longer = KnockoffNets(min_steps=200, schedule="cosine", **kw).extract(
        mlp_victim, x_pool=x[:1400], x_eval=x[1400:1700]
    )
    assert short.fidelity is not None and longer.fidelity is not None
    assert longer.fidelity > short.fidelity + 0.2
    assert longer.params["schedule"] == "cosine" and longer.params["min_steps"] == 200
    with pytest.raises(ConfigurationError, match="schedule"):
        KnockoffNets(query_budget=10, schedule="step")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="min_steps"):
        KnockoffNets(query_budget=10, min_steps=-1)
