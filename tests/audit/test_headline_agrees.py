"""With one attack, the headline worst-case robust accuracy is that attack's own number, for
every attack in the catalogue; a sample the model already misclassifies is never robust."""

from __future__ import annotations

import pytest
import torch

from bastion.attacks.evasion.base import EvasionResult
from bastion.attacks.evasion.catalog import attack_names, build_attack
from bastion.audit.evasion import evaluate_evasion
from bastion.data import load_digits
from bastion.models import TorchClassifier
from bastion.models.zoo import small_mlp, train_classifier
from bastion.threat import Norm

# small budgets: the point is the bookkeeping, not the attack's strength
BUDGET = {
    "pgd": {"steps": 5}, "apgd-ce": {"steps": 5}, "apgd-dlr": {"steps": 5},
    "apgd-t": {"steps": 5}, "cw": {"steps": 10, "binary_search_steps": 2},
    "deepfool": {"steps": 10}, "square": {"max_queries": 30},
    "hopskipjump": {"max_queries": 60}, "autoattack": {"steps": 5, "square_queries": 30},
}  # fmt: skip


@pytest.fixture(scope="module")
def clf_xy() -> tuple[TorchClassifier, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    data = load_digits()
    net = small_mlp(64, 10)
    # one short epoch: a model that misclassifies a fair share, as the bug needs
    train_classifier(net, data.x[:300], data.y[:300], epochs=1, seed=0)
    clf = TorchClassifier(net, input_shape=(1, 8, 8), num_classes=10, bounds=(0.0, 1.0))
    return clf, data.x[1500:1560], data.y[1500:1560]


@pytest.mark.parametrize("name", attack_names())
def test_single_attack_headline_equals_the_attacks_number(
    name: str, clf_xy: tuple[TorchClassifier, torch.Tensor, torch.Tensor]
) -> None:
    clf, x, y = clf_xy
    norm, eps = ("l2", 0.5) if name == "cw" else ("linf", 0.05)  # C&W is an L2 attack
    attack = build_attack(name, norm=norm, eps=eps, seed=0, **BUDGET.get(name, {}))
    ev = evaluate_evasion(clf, x, y, [attack], curve_points=0, reliability_checks=False,
                          progress=False)
    assert ev.clean_accuracy < 1.0  # some samples are misclassified to begin with
    assert ev.robust_accuracy == ev.results[attack.name].robust_accuracy
    assert ev.to_dict()["attacks"][attack.name]["robust_accuracy"] == ev.robust_accuracy


def test_an_attack_that_fixes_a_wrong_prediction_does_not_make_it_robust() -> None:
    y = torch.tensor([0, 1, 2, 3])
    res = EvasionResult(
        attack="x", params={}, norm=Norm.LINF, eps=0.1, targeted=False,
        x_adv=torch.zeros(4, 2), y=y,
        clean_pred=torch.tensor([0, 1, 0, 0]),  # samples 2 and 3 misclassified
        adv_pred=torch.tensor([0, 0, 2, 0]),  # sample 2 "corrected" by the perturbation
        success=torch.tensor([False, True, False, True]), distances=torch.zeros(4),
        queries=4, seconds=0.0,
    )  # fmt: skip
    assert res.robust_accuracy == 0.25
