"""Square attack: success on a real small model, exact per-sample query metering, score-only use."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from bastion.attacks.evasion._square import (
    centre_pattern,
    l2_init,
    p_schedule,
    side_l2,
    side_linf,
    split_pattern,
)
from bastion.attacks.evasion.pgd import PGD
from bastion.attacks.evasion.square import Square
from bastion.errors import CapabilityError, ConfigurationError, QueryBudgetExceeded
from bastion.models import BaseClassifier, Capability, TorchClassifier


class ScoreOnly(BaseClassifier):
    """Scores (log-probabilities) of a torch net, no gradients; records how it was called."""

    def __init__(self, net: nn.Module, *, query_budget: int | None = None) -> None:
        super().__init__(
            input_shape=(1, 8, 8),
            num_classes=10,
            capabilities=Capability.score_only(),
            query_budget=query_budget,
        )
        self.net = net
        self.grad_seen = False

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.log_softmax(self.net(x), dim=1)
        self.grad_seen |= torch.is_grad_enabled() or x.requires_grad or out.requires_grad
        return out.detach()


class LabelsOnly(ScoreOnly):
    def __init__(self, net: nn.Module) -> None:
        super().__init__(net)
        self._capabilities = Capability.LABELS


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models run fastest single-threaded, above all on a shared, busy CPU."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture()
def batch(digits_split: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    _, _, x_test, y_test = digits_split
    return x_test[:100], y_test[:100]


def test_linf_robust_accuracy_far_below_clean(digits_model: TorchClassifier, batch) -> None:
    x, y = batch
    res = Square(norm="linf", eps=0.3, max_queries=500).generate(digits_model, x, y)
    assert res.clean_accuracy >= 0.85
    assert res.robust_accuracy <= 0.15
    assert float(res.distances.max()) <= 0.3 + 1e-6
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0


def test_l2_robust_accuracy_far_below_clean(digits_model: TorchClassifier, batch) -> None:
    x, y = batch
    res = Square(norm="l2", eps=1.5, max_queries=500).generate(digits_model, x, y)
    assert res.robust_accuracy <= res.clean_accuracy - 0.6
    assert float(res.distances.max()) <= 1.5 + 1e-5


def test_matches_white_box_pgd_at_small_eps(digits_model: TorchClassifier, batch) -> None:
    """At eps 0.1 a score-only search with 500 queries comes within 0.15 of 50-step PGD."""
    x, y = batch
    square = Square(norm="linf", eps=0.1, max_queries=500).generate(digits_model, x, y)
    pgd = PGD(norm="linf", eps=0.1, steps=50, step_size=0.01).generate(digits_model, x, y)
    assert square.robust_accuracy < square.clean_accuracy - 0.3
    assert square.robust_accuracy <= pgd.robust_accuracy + 0.15


def test_ce_loss_and_targeted(digits_model: TorchClassifier, batch) -> None:
    x, y = batch
    ce = Square(norm="linf", eps=0.3, max_queries=300, loss="ce").generate(digits_model, x, y)
    assert ce.robust_accuracy <= 0.2
    target = (y + 1) % 10
    res = Square(norm="linf", eps=0.3, max_queries=500, targeted=True).generate(
        digits_model, x, y, target=target
    )
    assert res.success_rate >= 0.6
    assert bool((res.adv_pred[res.success] == target[res.success]).all())


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 0.5)])
def test_queries_are_metered_per_sample(
    digits_net: nn.Module, batch, norm: str, eps: float
) -> None:
    x, y = batch
    clf = ScoreOnly(digits_net)
    attack = Square(norm=norm, eps=eps, max_queries=40)
    res = attack.generate(clf, x, y)
    per_sample = attack.queries_
    assert per_sample is not None and per_sample.shape == (100,)
    # exact accounting: the classifier's own counter agrees with the per-sample record
    assert int(per_sample.sum()) == res.queries == clf.queries
    assert int(per_sample.max()) == 40  # some samples resisted the whole budget...
    assert int(per_sample.min()) >= 1
    # ...and samples stop being queried once fooled (fooled early -> fewer queries)
    fooled = res.success & res.clean_correct
    assert bool(fooled.any())
    assert float(per_sample[fooled].float().mean()) < 40


def test_never_exceeds_budget_on_any_single_sample(digits_net: nn.Module, batch) -> None:
    """One sample at a time on a classifier whose hard budget equals max_queries: the attack
    would raise QueryBudgetExceeded if it went over by a single query."""
    x, y = batch
    resisted = []
    for i in range(8):
        clf = ScoreOnly(digits_net, query_budget=25)
        attack = Square(norm="linf", eps=0.02, max_queries=25, seed=i)
        res = attack.generate(clf, x[i : i + 1], y[i : i + 1])
        assert res.queries == clf.queries == int(attack.queries_.sum()) <= 25
        if res.queries == 25:
            resisted.append(i)
    assert resisted
    # the same budget is really enforced: one query more than it allows is refused
    i = resisted[0]
    with pytest.raises(QueryBudgetExceeded):
        Square(norm="linf", eps=0.02, max_queries=26, seed=i).generate(
            ScoreOnly(digits_net, query_budget=25), x[i : i + 1], y[i : i + 1]
        )


def test_score_only_classifier_without_gradients(digits_net: nn.Module, batch) -> None:
    x, y = batch
    clf = ScoreOnly(digits_net)
    with pytest.raises(CapabilityError):
        PGD(norm="linf", eps=0.3).generate(clf, x, y)  # the wrapper really hides gradients
    res = Square(norm="linf", eps=0.3, max_queries=300).generate(clf, x, y)
    assert res.robust_accuracy <= 0.15
    assert not clf.grad_seen  # every query ran under no_grad on inputs without requires_grad


def test_label_only_classifier_is_refused(digits_net: nn.Module, batch) -> None:
    x, y = batch
    with pytest.raises(CapabilityError):
        Square(norm="linf", eps=0.3).generate(LabelsOnly(digits_net), x, y)


def test_deterministic_under_seed(digits_model: TorchClassifier, batch) -> None:
    x, y = batch[0][:30], batch[1][:30]
    for norm, eps in (("linf", 0.1), ("l2", 0.8)):
        a = Square(norm=norm, eps=eps, max_queries=60, seed=3)
        r1, q1 = a.generate(digits_model, x, y), a.queries_
        b = Square(norm=norm, eps=eps, max_queries=60, seed=3)
        r2, q2 = b.generate(digits_model, x, y), b.queries_
        r3 = Square(norm=norm, eps=eps, max_queries=60, seed=4).generate(digits_model, x, y)
        assert torch.equal(r1.x_adv, r2.x_adv)
        assert torch.equal(q1, q2)
        assert not torch.equal(r1.x_adv, r3.x_adv)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"eps": -0.1},
        {"eps": float("nan")},
        {"eps": 0.1, "max_queries": 0},
        {"eps": 0.1, "max_queries": 2.5},
        {"eps": 0.1, "p_init": 0.0},
        {"eps": 0.1, "p_init": 1.5},
        {"eps": 0.1, "loss": "hinge"},
        {"eps": 0.1, "norm": "l1"},
        {"eps": 0.1, "batch_size": 0},
        {"eps": 0.1, "seed": "zero"},
    ],
)
def test_bad_parameters_raise(kwargs: dict) -> None:
    with pytest.raises(ConfigurationError):
        Square(**kwargs)


def test_p_init_default_per_norm() -> None:
    assert Square(norm="linf", eps=0.1).p_init == 0.8
    assert Square(norm="l2", eps=0.5).p_init == 0.1
    assert Square(norm="l2", eps=0.5, p_init=0.3).p_init == 0.3
    assert "p_init" in Square(eps=0.1).get_params()


def test_feature_vectors_are_refused() -> None:
    clf = TorchClassifier(nn.Linear(5, 3), input_shape=(5,), num_classes=3)
    with pytest.raises(ConfigurationError, match="hopskipjump"):
        Square(eps=0.1, max_queries=10).generate(clf, torch.rand(4, 5))


def test_two_dimensional_inputs_are_one_channel_images() -> None:
    torch.manual_seed(0)
    clf = TorchClassifier(
        nn.Sequential(nn.Flatten(), nn.Linear(36, 3)), input_shape=(6, 6), num_classes=3
    )
    x = torch.rand(10, 6, 6)
    attack = Square(norm="l2", eps=0.5, max_queries=20)
    res = attack.generate(clf, x)
    assert res.x_adv.shape == x.shape
    assert int(attack.queries_.max()) <= 20


def test_p_schedule_halves_at_the_papers_iterations() -> None:
    assert p_schedule(0.8, 0, 10_000) == 0.8
    assert p_schedule(0.8, 10, 10_000) == 0.8
    assert p_schedule(0.8, 11, 10_000) == 0.4
    assert p_schedule(0.8, 51, 10_000) == 0.2
    assert p_schedule(0.8, 9_999, 10_000) == pytest.approx(0.8 / 512)
    assert p_schedule(0.8, 6, 5_000) == 0.4  # rescaled to the budget: 6/5000 ~ 12/10000


def test_square_sides() -> None:
    assert side_linf(0.8, 28, 28) == 25  # round(sqrt(0.8 * 784))
    assert side_linf(0.8, 8, 8) == 7  # capped below the image side
    assert side_linf(1e-4, 8, 8) == 1
    assert side_l2(0.1, 8, 8) == 3  # at least 3
    assert side_l2(0.1, 32, 32) == 11  # round(sqrt(102.4)) = 10, made odd


def test_l2_patterns() -> None:
    bump = centre_pattern(5, 5)
    assert float(bump.norm()) == pytest.approx(1.0)
    assert int(bump.argmax()) == 12  # the centre
    assert torch.allclose(bump, bump.T) and torch.allclose(bump, bump.flip(0))
    split = split_pattern(6)
    assert float(split.norm()) == pytest.approx(1.0)
    assert bool((split[:3] > 0).all()) and bool((split[3:] < 0).all())
    x = torch.full((4, 3, 8, 8), 0.5)
    delta = l2_init(x, 2.0, torch.Generator().manual_seed(0))
    assert torch.allclose(delta.reshape(4, -1).norm(dim=1), torch.full((4,), 2.0))


def test_params_rebuild_the_attack() -> None:
    attack = Square(norm="l2", eps=0.7, max_queries=123, loss="ce", seed=9)
    params = attack.get_params()
    assert params["norm"] == "l2" and params["max_queries"] == 123 and params["p_init"] == 0.1
    assert repr(Square(**params)) == repr(attack)
    assert "queries_" not in params


def test_zero_eps_returns_the_input_without_queries(digits_model: TorchClassifier, batch) -> None:
    x, y = batch
    attack = Square(norm="linf", eps=0.0, max_queries=50)
    res = attack.generate(digits_model, x[:10], y[:10])
    assert torch.equal(res.x_adv, x[:10])
    assert res.queries == 0 and int(attack.queries_.sum()) == 0
