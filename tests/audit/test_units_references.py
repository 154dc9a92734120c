"""Reference and shadow models as units of work: trained on workers, they give the same scores."""

from __future__ import annotations

import pytest
import torch

from bastion.attacks.inference import DefaultTrainer, LiRA, ShadowModelAttack
from bastion.attacks.inference._common import REFERENCE_BLOCK, train_references
from bastion.audit.executor import InProcessExecutor, ProcessPoolExecutor, RayExecutor
from bastion.data import load_digits
from bastion.errors import ConfigurationError
from bastion.models import TorchClassifier


@pytest.fixture(scope="module")
def setting(digits_mlp):
    net, x_test, y_test = digits_mlp
    clf = TorchClassifier(net, input_shape=(1, 8, 8), num_classes=10)
    data = load_digits()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    x, y = data.x[perm], data.y[perm]
    # members: the target's training rows; non-members: held out; population: the rest
    xs, ys = torch.cat([x[:60], x_test[:60]]), torch.cat([y[:60], y_test[:60]])
    truth = torch.cat([torch.ones(60, dtype=torch.bool), torch.zeros(60, dtype=torch.bool)])
    return clf, (x[1700:], y[1700:]), (xs, ys, truth)


def _lira(executor) -> LiRA:
    trainer = DefaultTrainer((1, 8, 8), 10, epochs=3)
    seeds = [11 * k + 5 for k in range(2 * REFERENCE_BLOCK)]
    return LiRA(
        n_reference=len(seeds),
        online=False,
        train_fn=trainer,
        reference_seeds=seeds,
        executor=executor,
    )


def test_lira_references_trained_on_ray_workers_give_the_in_process_scores(
    setting, ray_cluster
) -> None:
    clf, (xp, yp), (xs, ys, truth) = setting
    scores = []
    for executor in (InProcessExecutor(), RayExecutor()):
        attack = _lira(executor)
        attack.fit(clf, xp, yp)
        scores.append(attack.infer(clf, xs, ys, membership=truth).scores)
    # bit-identical: each block of models is the same batched training run wherever it runs
    assert torch.equal(scores[0], scores[1])
    # and the attack is informative: members score higher on average
    assert float(scores[0][truth].mean()) > float(scores[0][~truth].mean())


def test_shadow_models_trained_on_workers_give_the_in_process_scores(setting) -> None:
    clf, (xp, yp), (xs, ys, truth) = setting
    scores = []
    for executor in (InProcessExecutor(), ProcessPoolExecutor(workers=2)):
        attack = ShadowModelAttack(
            n_shadows=2, train_fn=DefaultTrainer((1, 8, 8), 10, epochs=3), executor=executor
        )
        attack.fit(clf, xp, yp)
        scores.append(attack.infer(clf, xs, ys, membership=truth).scores)
    assert torch.equal(scores[0], scores[1])


def test_models_do_not_depend_on_the_blocks_they_were_trained_in(setting) -> None:
    _, (xp, yp), _ = setting
    trainer = DefaultTrainer((1, 8, 8), 10, epochs=2)
    g = torch.Generator().manual_seed(1)
    subsets = [torch.randperm(len(xp), generator=g)[:100] for _ in range(REFERENCE_BLOCK + 1)]
    seeds = list(range(REFERENCE_BLOCK + 1))
    models = train_references(trainer, xp, yp, subsets, seeds)
    alone = trainer.train_many(xp, yp, subsets[-1:], seeds[-1:])[0]
    assert len(models) == REFERENCE_BLOCK + 1
    for p, q in zip(models[-1].state_dict().values(), alone.state_dict().values(), strict=True):
        assert torch.equal(p, q)
    with pytest.raises(ConfigurationError, match="seeds"):
        train_references(trainer, xp, yp, subsets, seeds[:-1])
