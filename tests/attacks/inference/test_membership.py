"""Membership inference on real digits models: leakage tracks overfitting; LiRA wins at low FPR."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import torch
from torch import nn

from bastion.attacks.inference import (
    DefaultTrainer,
    LabelOnlyAttack,
    LiRA,
    MembershipResult,
    ShadowModelAttack,
    ThresholdAttack,
)
from bastion.data import load_digits
from bastion.errors import CapabilityError, ConfigurationError, InputError, QueryBudgetExceeded
from bastion.models import BaseClassifier, Capability, TorchClassifier, from_sklearn

Data = tuple[torch.Tensor, torch.Tensor]
FitMLP = Callable[..., nn.Module]


@pytest.fixture(scope="module")
def digits() -> Data:
    data = load_digits()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    return data.x[perm], data.y[perm]


def _targets(
    x: torch.Tensor, y: torch.Tensor, m: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Members ``[:m]`` and as many non-members ``[m:2m]``, with the membership flags."""
    return x[: 2 * m], y[: 2 * m], torch.arange(2 * m) < m


def _clf(net: nn.Module, budget: int | None = None) -> TorchClassifier:
    return TorchClassifier(net, input_shape=(1, 8, 8), num_classes=10, query_budget=budget)


# the target's recipe (an MLP of 256 units, 60 epochs at lr 1e-2); DefaultTrainer trains an
# attack's reference models in one batched loop (equal to one-by-one training up to rounding)
_lira_trainer = DefaultTrainer((1, 8, 8), 10, arch="mlp", hidden=256, epochs=60, lr=1e-2)


@pytest.fixture(scope="module")
def lira_setup(digits: Data) -> tuple[TorchClassifier, torch.Tensor, torch.Tensor, torch.Tensor]:
    """An overfit MLP on 250 digits; targets: its 250 members and 250 non-members."""
    x, y = digits
    net = _lira_trainer(x[:250], y[:250], 0)
    xt, yt, mem = _targets(x, y, 250)
    return _clf(net), xt, yt, mem


def test_loss_attack_auc_tracks_overfitting(digits: Data, fit_mlp: FitMLP) -> None:
    x, y = digits
    overfit = fit_mlp(x[:100], y[:100], hidden=256, epochs=100, lr=3e-3)
    xt, yt, mem = _targets(x, y, 100)
    auc_overfit = ThresholdAttack().infer(_clf(overfit), xt, yt, membership=mem).auc
    regular = fit_mlp(x[:600], y[:600], epochs=10, lr=3e-3, weight_decay=0.1)
    xt, yt, mem = _targets(x, y, 600)
    auc_regular = ThresholdAttack().infer(_clf(regular), xt, yt, membership=mem).auc
    assert auc_overfit > 0.62
    assert abs(auc_regular - 0.5) < 0.05
    assert auc_overfit - auc_regular > 0.08


def test_lira_beats_loss_attack_at_1pct_fpr(
    digits: Data, lira_setup: tuple[TorchClassifier, torch.Tensor, torch.Tensor, torch.Tensor]
) -> None:
    clf, xt, yt, mem = lira_setup
    x, y = digits
    loss = ThresholdAttack().infer(clf, xt, yt, membership=mem)
    offline = LiRA(n_reference=8, online=False, train_fn=_lira_trainer).fit(clf, x[500:], y[500:])
    res = offline.infer(clf, xt, yt, membership=mem)
    assert res.queries == len(xt)
    assert res.tpr_at(0.01) > loss.tpr_at(0.01) + 0.02
    assert res.auc > loss.auc
    # the reference models are reused: a second call trains nothing and gives the same scores
    again = offline.infer(clf, xt, yt, membership=mem)
    assert torch.equal(again.scores, res.scores)


@pytest.mark.slow
def test_online_lira_beats_loss_attack(
    digits: Data, lira_setup: tuple[TorchClassifier, torch.Tensor, torch.Tensor, torch.Tensor]
) -> None:
    clf, xt, yt, mem = lira_setup
    x, y = digits
    loss = ThresholdAttack().infer(clf, xt, yt, membership=mem)
    online = LiRA(n_reference=8, online=True, train_fn=_lira_trainer).fit(clf, x[500:], y[500:])
    res = online.infer(clf, xt, yt, membership=mem)
    assert res.tpr_at(0.01) > loss.tpr_at(0.01) + 0.02
    assert res.auc > loss.auc + 0.02


def test_online_lira_mechanics(
    digits: Data,
    fit_mlp: FitMLP,
    lira_setup: tuple[TorchClassifier, torch.Tensor, torch.Tensor, torch.Tensor],
) -> None:
    clf, xt, yt, mem = lira_setup
    x, y = digits
    calls: list[int] = []

    def cheap(xs: torch.Tensor, ys: torch.Tensor, seed: int) -> nn.Module:
        calls.append(len(xs))
        return fit_mlp(xs, ys, hidden=16, epochs=2, seed=seed)

    attack = LiRA(n_reference=2, online=True, train_fn=cheap).fit(clf, x[500:600], y[500:600])
    assert calls == []  # online: nothing is trained before the targets are known
    res = attack.infer(clf, xt[:40], yt[:40], membership=mem[:40])
    # each model: half the population; each target is a member of exactly one of the two
    assert sum(calls) == 2 * 50 + 40 and min(calls) >= 50
    assert res.queries == 40 and torch.isfinite(res.scores).all()


def test_shadow_attack_detects_membership(
    digits: Data, lira_setup: tuple[TorchClassifier, torch.Tensor, torch.Tensor, torch.Tensor]
) -> None:
    clf, xt, yt, mem = lira_setup
    x, y = digits
    attack = ShadowModelAttack(n_shadows=4, train_fn=_lira_trainer).fit(clf, x[500:], y[500:])
    res = attack.infer(clf, xt, yt, membership=mem)
    assert res.auc > 0.6
    assert res.auc > ThresholdAttack().infer(clf, xt, yt, membership=mem).auc


class _LabelsOnly(BaseClassifier):
    """A label-only view of a torch module (as a deployed API answering labels)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__(input_shape=(1, 8, 8), num_classes=10, capabilities=Capability.LABELS)
        self.module = module

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        raise CapabilityError("labels only")

    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x).argmax(1)


def test_label_only_attack_on_a_label_only_model(digits: Data, fit_mlp: FitMLP) -> None:
    x, y = digits
    net = fit_mlp(x[:100], y[:100], hidden=256, epochs=100, lr=3e-3)
    clf = _LabelsOnly(net)
    xt, yt, mem = _targets(x, y, 100)
    with pytest.raises(CapabilityError, match="label-only"):
        ThresholdAttack().infer(clf, xt, yt, membership=mem)
    attack = LabelOnlyAttack(n_noise=20, noise_std=0.15)
    res = attack.infer(clf, xt, yt, membership=mem)
    assert res.queries == attack.planned_queries(clf, len(xt)) == len(xt) * 25
    assert res.auc > 0.6
    # deterministic under the seed
    assert torch.equal(attack.infer(clf, xt, yt).scores, res.scores)


def test_query_budget_is_never_exceeded(
    lira_setup: tuple[TorchClassifier, torch.Tensor, torch.Tensor, torch.Tensor],
) -> None:
    _, xt, yt, mem = lira_setup
    net = _clf(lira_setup[0].module).module
    attack = LabelOnlyAttack(n_noise=3)
    planned = attack.planned_queries(_clf(net), len(xt))
    assert planned == len(xt) * (1 + 4 + 3)  # images get four one-pixel shifts
    short = _clf(net, budget=planned - 1)
    with pytest.raises(QueryBudgetExceeded, match="budget"):
        attack.infer(short, xt, yt)
    assert short.queries == 0  # refused before any query
    exact = _clf(net, budget=planned)
    assert attack.infer(exact, xt, yt, membership=mem).queries == planned
    assert exact.queries <= planned
    with pytest.raises(QueryBudgetExceeded):
        ThresholdAttack().infer(exact, xt[:1], yt[:1])
    assert exact.queries == planned


def test_model_mode_restored_and_result_round_trip(
    lira_setup: tuple[TorchClassifier, torch.Tensor, torch.Tensor, torch.Tensor],
) -> None:
    clf, xt, yt, mem = lira_setup
    clf.module.train()
    try:
        res = ThresholdAttack(signal="scaled_logit").infer(clf, xt, yt, membership=mem)
        assert clf.module.training
    finally:
        clf.module.eval()
    back = MembershipResult.from_dict(json.loads(json.dumps(res.to_dict())))
    assert torch.equal(back.scores, res.scores) and back.auc == res.auc
    assert back.labels is not None and torch.equal(back.labels, mem)
    summary = res.summary()
    assert summary["n_members"] == 250 and 0 <= summary["tpr_at_0_1pct_fpr"] <= 1
    eps = res.epsilon()
    assert 0.0 <= eps.lower <= eps.point
    finding = res.finding()
    assert finding.atlas == ("AML.T0024.000",) and finding.owasp == ("ML04",)
    unlabelled = ThresholdAttack().infer(clf, xt, yt)
    with pytest.raises(InputError, match="ground truth"):
        _ = unlabelled.auc


def test_signals_are_monotone_in_each_other(
    lira_setup: tuple[TorchClassifier, torch.Tensor, torch.Tensor, torch.Tensor],
) -> None:
    clf, xt, yt, mem = lira_setup
    aucs = {
        s: ThresholdAttack(signal=s).infer(clf, xt, yt, membership=mem).auc
        for s in ("loss", "confidence", "scaled_logit")
    }
    # -loss, p_y and the scaled logit are increasing functions of each other
    assert aucs["loss"] == pytest.approx(aucs["confidence"], abs=1e-3)
    assert aucs["loss"] == pytest.approx(aucs["scaled_logit"], abs=1e-3)


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: ThresholdAttack(signal="entropy"), "signal"),
        (lambda: ThresholdAttack(batch_size=0), "batch_size"),
        (lambda: LiRA(n_reference=3, online=True), "even"),
        (lambda: LiRA(n_reference=1, online=False), "at least 2"),
        (lambda: LiRA(train_fn="mlp"), "callable"),  # type: ignore[arg-type]
        (lambda: ShadowModelAttack(n_shadows=0), "n_shadows"),
        (lambda: LabelOnlyAttack(n_noise=-1), "n_noise"),
        (lambda: LabelOnlyAttack(noise_std=0.0), "noise_std"),
        (lambda: ThresholdAttack(seed=1.5), "seed"),  # type: ignore[arg-type]
    ],
)
def test_bad_parameters_rejected(factory: object, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        factory()  # type: ignore[operator]


def test_bad_inputs_rejected(
    lira_setup: tuple[TorchClassifier, torch.Tensor, torch.Tensor, torch.Tensor],
) -> None:
    clf, xt, yt, _ = lira_setup
    with pytest.raises(ConfigurationError, match="fit"):
        LiRA(n_reference=2).infer(clf, xt, yt)
    with pytest.raises(InputError, match="shape"):
        ThresholdAttack().infer(clf, xt.flatten(1), yt)
    with pytest.raises(InputError, match="bounds"):
        ThresholdAttack().infer(clf, xt * 3, yt)
    with pytest.raises(InputError, match="membership"):
        ThresholdAttack().infer(clf, xt, yt, membership=torch.ones(3, dtype=torch.bool))
    with pytest.raises(InputError, match="population"):
        LiRA(n_reference=2).fit(clf, xt[:2], yt[:2])


def test_score_only_sklearn_model(digits: Data) -> None:
    from sklearn.tree import DecisionTreeClassifier

    x, y = digits
    tree = DecisionTreeClassifier(random_state=0).fit(x[:300].flatten(1).numpy(), y[:300].numpy())
    clf = from_sklearn(tree, input_shape=(1, 8, 8), access="scores", query_budget=600)
    xt, yt, mem = _targets(x, y, 300)
    res = ThresholdAttack().infer(clf, xt, yt, membership=mem)
    # a fully grown tree gives probability 1 to its prediction: members (all right) tie with
    # the non-members it gets right, and outrank those it gets wrong: AUC = 1/2 + error/2
    error = float(
        (torch.from_numpy(tree.predict(xt[300:].flatten(1).numpy())) != yt[300:]).float().mean()
    )
    assert error > 0.1
    assert res.auc == pytest.approx(0.5 + error / 2)
    assert res.queries == clf.queries == 600


def test_signals_keep_ties_whatever_the_true_class() -> None:
    from bastion.attacks.inference.threshold import signal_from_logits

    # every row: the true class at 0, the nine others at log(1e-12), but in different positions
    logits = torch.full((10, 10), -27.631021)
    logits[torch.arange(10), torch.arange(10)] = 0.0
    y = torch.arange(10)
    for signal in ("loss", "confidence", "scaled_logit"):
        values = signal_from_logits(logits, y, signal)
        assert torch.unique(values).numel() == 1, signal
    loss = signal_from_logits(logits, y, "loss")
    assert float(loss[0]) == pytest.approx(-9 * 1e-12, rel=1e-5)
    phi = signal_from_logits(logits, y, "scaled_logit")
    assert float(phi[0]) == pytest.approx(-torch.log(torch.tensor(9e-12, dtype=torch.float64)))


def test_lira_reference_seeds_give_each_model_its_own_unit() -> None:
    with pytest.raises(ConfigurationError, match="reference_seeds"):
        LiRA(n_reference=2, online=False, reference_seeds=[1])
    a = LiRA(n_reference=2, online=False, reference_seeds=[11, 12])
    b = LiRA(n_reference=2, online=False, reference_seeds=[12, 11])
    g = torch.Generator().manual_seed(0)
    # model k's half of the population depends on its own seed alone, not on its position
    assert torch.equal(a._half(50, 0, g), b._half(50, 1, g))
    assert a._seed(1) == b._seed(0) == 12
