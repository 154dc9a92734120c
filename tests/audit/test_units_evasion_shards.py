"""Evasion sample shards: 7 shards on Ray workers give the per-sample results of 1 shard."""

from __future__ import annotations

import pytest
import torch

from bastion.attacks.evasion import APGD, Square
from bastion.audit.evasion import evaluate_evasion
from bastion.audit.evasion_shards import run_sharded, shard_blocks
from bastion.audit.executor import InProcessExecutor, ProcessPoolExecutor, RayExecutor
from bastion.errors import ConfigurationError
from bastion.models import TorchClassifier

_FIELDS = ("x_adv", "clean_pred", "adv_pred", "success", "distances")


@pytest.fixture(scope="module")
def target(digits_mlp):
    net, x, y = digits_mlp
    clf = TorchClassifier(net, input_shape=(1, 8, 8), num_classes=10)
    return clf, x[:52], y[:52]


def _attacks():
    return [
        APGD(eps=0.15, steps=8, seed=3),
        Square(eps=0.15, max_queries=40, seed=4),
    ]


def test_seven_shards_on_ray_workers_equal_one_shard_in_process(target, ray_cluster) -> None:
    clf, x, y = target
    one = run_sharded(clf, x, y, _attacks(), block_size=8, shards=1, executor=InProcessExecutor())
    seven = run_sharded(clf, x, y, _attacks(), block_size=8, shards=7, executor=RayExecutor())
    assert (one.shards, seven.shards, seven.blocks) == (1, 7, 7)
    for name in ("apgd-ce", "square"):
        a, b = one.results[name], seven.results[name]
        for field in _FIELDS:
            assert torch.equal(getattr(a, field), getattr(b, field)), (name, field)
        assert a.queries == b.queries
    assert torch.equal(one.results["square"].sample_queries, seven.results["square"].sample_queries)
    # the attacks did something: robust accuracy fell below clean accuracy
    res = one.results["apgd-ce"]
    assert res.robust_accuracy < res.clean_accuracy


def test_the_evaluation_and_its_curve_do_not_depend_on_the_shards(target) -> None:
    clf, x, y = target
    a = evaluate_evasion(clf, x, y, _attacks(), curve_points=3, progress=False, block_size=8)
    b = evaluate_evasion(
        clf, x, y, _attacks(), curve_points=3, progress=False, block_size=8, shards=3
    )
    assert a.robust_accuracy == b.robust_accuracy
    assert [p.robust_accuracy for p in a.curve] == [p.robust_accuracy for p in b.curve]
    assert len(a.curve) == 3 and a.curve[1].robust_accuracy >= a.curve[2].robust_accuracy


def test_bad_block_or_shard_counts_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="block size"):
        shard_blocks(10, 0, None)
    with pytest.raises(ConfigurationError, match="shards"):
        shard_blocks(10, 4, 0)
    assert shard_blocks(10, 4, 9) == [((0, 0, 4),), ((1, 4, 8),), ((2, 8, 10),)]


def test_a_model_that_cannot_be_pickled_runs_its_shards_here_with_the_same_results(
    target,
) -> None:
    import warnings

    clf, x, y = target
    with warnings.catch_warnings():  # TorchScript is deprecated upstream but still shipped
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.trace(clf.module, x[:2])
    jit = TorchClassifier(scripted, input_shape=(1, 8, 8), num_classes=10)
    attack = [APGD(eps=0.15, steps=4, seed=3)]
    here = run_sharded(jit, x, y, attack, block_size=8, shards=1)
    # a process pool cannot take a TorchScript module: the shards run in this process instead
    pooled = run_sharded(jit, x, y, attack, block_size=8, shards=7, executor=ProcessPoolExecutor(2))
    assert torch.equal(here.results["apgd-ce"].x_adv, pooled.results["apgd-ce"].x_adv)
