"""APGD-CE / APGD-DLR / APGD-T on closed-form linear models and a small digits MLP."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from bastion.attacks.evasion._apgd_core import checkpoints, halve_step
from bastion.attacks.evasion.apgd import APGD, APGDCE, APGDDLR, APGDT
from bastion.attacks.evasion.pgd import PGD
from bastion.errors import ConfigurationError
from bastion.models import TorchClassifier

N = 100  # digits test samples attacked



@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models run fastest single-threaded, above all on a shared, busy CPU."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)

@pytest.fixture(scope="module")
def batch(digits_split: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    _, _, x_test, y_test = digits_split
    return x_test[:N], y_test[:N]


def _linear(
    num_classes: int, n_features: int = 6, seed: int = 0
) -> tuple[TorchClassifier, torch.Tensor]:
    """A fixed linear model with wide bounds (so clipping never binds) and its weights."""
    torch.manual_seed(seed)
    net = nn.Linear(n_features, num_classes)
    for p in net.parameters():
        p.requires_grad_(False)
    clf = TorchClassifier(
        net, input_shape=(n_features,), num_classes=num_classes, bounds=(-10, 10)
    )
    return clf, net.weight


# -- the schedule ---------------------------------------------------------------------------
def test_checkpoints_follow_the_paper() -> None:
    # p = 0, .22, .41, .57, .70, .80, .87, .93, .99 (then 1.05 > 1)
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(10) == [3, 5, 6, 7, 8, 9, 10]
    assert checkpoints(1) == [1]


def test_step_size_halving_conditions() -> None:
    t, f = True, False
    n_up = torch.tensor([7, 8, 8, 8, 3])
    reduced_before = torch.tensor([f, f, f, t, t])
    f_max = torch.tensor([2.0, 2.0, 1.0, 1.0, 2.0])
    f_max_before = torch.ones(5)
    halve = halve_step(n_up, 10, 0.75, reduced_before, f_max, f_max_before)
    # 7 < 7.5 increases; 8 with progress; no progress since last check; no progress but halved
    # at the last check already; too few increases even though halved last time
    assert halve.tolist() == [t, f, t, f, t]


# -- closed form on linear models -------------------------------------------------------------
def test_linf_two_class_linear_reaches_the_optimal_corner() -> None:
    clf, w = _linear(2)
    x = torch.rand(32, 6)
    y = clf.predict(x)
    eps = 0.01
    res = APGD(norm="linf", eps=eps, steps=20).generate(clf, x, y)
    # the loss-maximising point moves every coordinate by eps towards the other class
    direction = (w[1 - y] - w[y]).sign()
    not_fooled = ~res.success
    assert int(not_fooled.sum()) >= 24
    torch.testing.assert_close(
        res.x_adv[not_fooled], (x + eps * direction)[not_fooled], atol=1e-6, rtol=0
    )


def test_l2_two_class_linear_aligns_with_the_weight_difference() -> None:
    clf, w = _linear(2)
    x = torch.rand(32, 6)
    y = clf.predict(x)
    eps = 0.02
    res = APGD(norm="l2", eps=eps, steps=50, loss="dlr").generate(clf, x, y)
    keep = ~res.success
    delta = (res.x_adv - x)[keep]
    u = w[1 - y] - w[y]
    u = (u / u.norm(dim=1, keepdim=True))[keep]
    assert int(keep.sum()) >= 24
    assert bool((delta.norm(dim=1) > 0.99 * eps).all())
    assert float(nn.functional.cosine_similarity(delta, u).min()) > 0.99


class _Bowl(nn.Module):
    """Two classes, logits ``(0, -||x - c||^2)``: the loss peaks at ``c`` and never flips."""

    c: torch.Tensor

    def __init__(self, c: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("c", c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = -((x - self.c) ** 2).sum(1)
        return torch.stack([torch.zeros_like(g), g], 1)


@pytest.mark.parametrize(("norm", "eps", "tol"), [("linf", 1.0, 0.15), ("l2", 2.0, 0.1)])
def test_step_schedule_settles_on_an_interior_maximum(norm: str, eps: float, tol: float) -> None:
    # fixed steps of 2*eps would oscillate around c forever; halving and restarting from the
    # best point bring the iterate onto it
    gen = torch.Generator().manual_seed(0)
    c = (torch.rand(8, generator=gen) * 2 - 1) * 0.5
    clf = TorchClassifier(_Bowl(c), input_shape=(8,), num_classes=2, bounds=(-10, 10))
    x = torch.zeros(16, 8)
    res = APGD(norm=norm, eps=eps, steps=20).generate(clf, x, torch.zeros(16, dtype=torch.long))
    assert not bool(res.success.any())
    assert float((res.x_adv - c).abs().amax()) < tol
    longer = APGD(norm=norm, eps=eps, steps=100).generate(clf, x, torch.zeros(16, dtype=torch.long))
    assert float((longer.x_adv - c).abs().amax()) < tol / 5


def test_one_forward_backward_per_step() -> None:
    clf, _ = _linear(4)
    x = torch.rand(16, 6)
    y = clf.predict(x)
    # eps far too small to fool anything: every sample runs all steps (+1 final forward)
    res = APGD(norm="linf", eps=1e-6, steps=30).generate(clf, x, y)
    assert not bool(res.success.any())
    assert res.queries == 16 * 31
    # APGD-T: one ranking forward, then one full run per target class (capped at 3 for 4 classes)
    res_t = APGDT(norm="linf", eps=1e-6, steps=30).generate(clf, x, y)
    assert res_t.queries == 16 + 3 * 16 * 31
    # a fooled sample leaves the run: with a budget that fools everything quickly, far fewer
    big = APGD(norm="linf", eps=5.0, steps=30).generate(clf, x, y)
    assert bool(big.success.all())
    assert big.queries < 16 * 31 / 4


# -- digits MLP -------------------------------------------------------------------------------
@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.08), ("l2", 0.6)])
@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_output_in_ball_and_bounds(
    digits_model: TorchClassifier, batch: tuple[torch.Tensor, torch.Tensor],
    norm: str, eps: float, loss: str,
) -> None:
    x, y = batch
    res = APGD(norm=norm, eps=eps, steps=20, loss=loss).generate(digits_model, x, y)
    assert res.attack == f"apgd-{loss}"
    assert float(res.distances.max()) <= eps + 1e-5
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    assert res.robust_accuracy < res.clean_accuracy - 0.2


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.06), ("l2", 0.5)])
def test_apgd_not_weaker_than_pgd_at_equal_budget(
    digits_model: TorchClassifier, batch: tuple[torch.Tensor, torch.Tensor], norm: str, eps: float
) -> None:
    x, y = batch
    steps = 40
    pgd = PGD(norm=norm, eps=eps, steps=steps).generate(digits_model, x, y)
    apgd = APGD(norm=norm, eps=eps, steps=steps).generate(digits_model, x, y)
    assert apgd.robust_accuracy < apgd.clean_accuracy - 0.15
    assert apgd.robust_accuracy <= pgd.robust_accuracy + 0.02


def test_apgd_t_breaks_the_model(
    digits_model: TorchClassifier, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = batch
    res = APGDT(norm="linf", eps=0.08, steps=30, n_target_classes=3).generate(digits_model, x, y)
    assert res.attack == "apgd-t"
    assert float(res.distances.max()) <= 0.08 + 1e-6
    assert res.robust_accuracy < res.clean_accuracy - 0.25


class _Scale(nn.Module):
    """Multiplies the logits: same predictions, a saturated softmax (vanishing CE gradients)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.factor


def test_dlr_loss_is_immune_to_logit_scaling(
    digits_net: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = batch
    plain = TorchClassifier(digits_net, input_shape=(1, 8, 8), num_classes=10)
    scaled = TorchClassifier(
        nn.Sequential(digits_net, _Scale(1000.0)), input_shape=(1, 8, 8), num_classes=10
    )
    dlr_plain = APGD(eps=0.08, steps=25, loss="dlr").generate(plain, x, y)
    dlr_scaled = APGD(eps=0.08, steps=25, loss="dlr").generate(scaled, x, y)
    ce_scaled = APGD(eps=0.08, steps=25, loss="ce").generate(scaled, x, y)
    assert dlr_scaled.clean_accuracy == dlr_plain.clean_accuracy
    assert abs(dlr_scaled.robust_accuracy - dlr_plain.robust_accuracy) <= 0.03
    assert dlr_scaled.robust_accuracy < dlr_scaled.clean_accuracy - 0.25
    # cross-entropy gradients vanish on the saturated model: CE-based attacks are fooled
    assert ce_scaled.robust_accuracy > dlr_scaled.robust_accuracy + 0.2


@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_targeted_reaches_the_target_at_large_eps(
    digits_model: TorchClassifier, batch: tuple[torch.Tensor, torch.Tensor], loss: str
) -> None:
    x, y = batch
    target = (y + 1) % 10
    res = APGD(eps=0.3, steps=30, loss=loss, targeted=True).generate(
        digits_model, x, y, target=target
    )
    assert res.targeted
    assert float(res.success.float().mean()) >= 0.9
    assert bool((res.success == (res.adv_pred == target)).all())


def test_more_restarts_never_hurt(
    digits_model: TorchClassifier, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = batch
    # the first restart draws the same random start, so a second one can only add successes
    one = APGD(eps=0.04, steps=15, restarts=1).generate(digits_model, x, y)
    two = APGD(eps=0.04, steps=15, restarts=2).generate(digits_model, x, y)
    assert bool((two.success | ~one.success).all())
    assert two.robust_accuracy <= one.robust_accuracy


@pytest.mark.parametrize("attack_cls", [APGDCE, APGDDLR, APGDT])
def test_deterministic_under_a_seed(
    digits_model: TorchClassifier, batch: tuple[torch.Tensor, torch.Tensor], attack_cls: type
) -> None:
    x, y = batch
    kwargs = {"n_target_classes": 2} if attack_cls is APGDT else {}
    a = attack_cls(norm="l2", eps=0.4, steps=10, seed=3, **kwargs).generate(digits_model, x, y)
    b = attack_cls(norm="l2", eps=0.4, steps=10, seed=3, **kwargs).generate(digits_model, x, y)
    assert torch.equal(a.x_adv, b.x_adv)


def test_names_params_and_model_mode(digits_model: TorchClassifier) -> None:
    attack = APGD(eps=0.1, loss="dlr")
    assert attack.name == "apgd-dlr" and APGDCE(eps=0.1).name == "apgd-ce"
    assert "name" not in attack.get_params()
    assert attack.get_params()["loss"] == "dlr"
    assert repr(attack).startswith("APGD(")
    digits_model.module.train()
    x = torch.rand(4, 1, 8, 8)
    attack.generate(digits_model, x)
    assert digits_model.module.training


def test_zero_eps_returns_the_input(
    digits_model: TorchClassifier, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = batch
    res = APGD(eps=0.0, steps=5).generate(digits_model, x[:10], y[:10])
    assert torch.equal(res.x_adv, x[:10])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"eps": -0.1},
        {"eps": 0.1, "steps": 0},
        {"eps": 0.1, "restarts": 0},
        {"eps": 0.1, "loss": "hinge"},
        {"eps": 0.1, "rho": 1.0},
        {"eps": 0.1, "rho": 0},
        {"eps": 0.1, "norm": "l1"},
        {"eps": 0.1, "batch_size": 0},
    ],
)
def test_apgd_rejects_bad_parameters(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        APGD(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"eps": 0.1, "n_target_classes": 0},
        {"eps": 0.1, "steps": -1},
        {"eps": 0.1, "rho": 1.5},
        {"eps": None},
    ],
)
def test_apgd_t_rejects_bad_parameters(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        APGDT(**kwargs)  # type: ignore[arg-type]
