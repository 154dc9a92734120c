"""The MNIST variants (slow; skipped when the MNIST idx files are absent)."""

from __future__ import annotations

import pytest
import torch

from bastion.attacks.poisoning import LabelFlip
from bastion.data import load_mnist, shared_mnist_dir
from bastion.defences.data import ConfidentLearning, detection_score

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shared_mnist_dir() is None, reason="MNIST idx files not found"),
]


def test_confident_learning_finds_mnist_label_flips() -> None:
    data = load_mnist()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    x, y = data.x[perm][:2000], data.y[perm][:2000]
    flipped = LabelFlip(rate=0.1, seed=0).poison(x, y)
    cl = ConfidentLearning(epochs=5, seed=0).fit(flipped.x, flipped.y)
    score = detection_score(cl.flags_, flipped.mask)
    assert score.recall >= 0.8
    assert score.precision >= 0.6


def test_strip_rejects_triggered_mnist_inputs() -> None:
    from bastion.attacks.poisoning import BadNets, attack_success_rate
    from bastion.defences.data import STRIP
    from bastion.models.zoo import small_cnn, train_classifier

    data = load_mnist()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    x, y = data.x[perm], data.y[perm]
    attack = BadNets(target_class=0, rate=0.05, seed=0)
    poisoned = attack.poison(x[:6000], y[:6000])
    torch.manual_seed(0)
    net = train_classifier(
        small_cnn((1, 28, 28), 10), poisoned.x, poisoned.y, epochs=4, lr=3e-3, seed=0
    )
    x_test, y_test = x[6000:7000], y[6000:7000]
    held, y_held = x_test[600:], y_test[600:]
    triggered = attack.apply_trigger(held[y_held != 0])
    assert attack_success_rate(net, held[y_held != 0], attack.apply_trigger, 0) > 0.9
    strip = STRIP(net).fit(x_test[:300])
    strip.calibrate(x_test[300:600], fpr=0.05)
    assert int(strip.predict(x_test[300:600]).sum()) <= 15
    assert float(strip.predict(triggered).float().mean()) >= 0.9
    assert float(strip.predict(held).float().mean()) <= 0.1


@pytest.mark.parametrize("rate", [0.05, 0.10])
def test_activation_detectors_find_mnist_badnets_at_defaults(rate: float) -> None:
    from bastion.attacks.poisoning import BadNets, attack_success_rate
    from bastion.defences.data import ActivationClustering, SpectralSignatures
    from bastion.models.zoo import small_cnn, train_classifier

    data = load_mnist()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    x, y = data.x[perm], data.y[perm]
    attack = BadNets(target_class=0, rate=rate, seed=0)
    poisoned = attack.poison(x[:8000], y[:8000])
    torch.manual_seed(0)
    net = train_classifier(
        small_cnn((1, 28, 28), 10), poisoned.x, poisoned.y, epochs=4, lr=3e-3, seed=0
    )
    x_test, y_test = x[8000:9000], y[8000:9000]
    assert attack_success_rate(net, x_test[y_test != 0], attack.apply_trigger, 0) > 0.9
    for detector in (ActivationClustering, SpectralSignatures):
        det = detector(net).fit(poisoned.x, poisoned.y)
        score = detection_score(det.flags_, poisoned.mask)
        assert score.recall >= 0.9
        assert score.precision >= 0.8
        assert [c for c, sp in det.splits_.items() if sp.suspicious] == [0]
