"""Activation clustering and spectral signatures on a real backdoored digits CNN."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from bastion.attacks.poisoning import attack_success_rate
from bastion.defences.data import (
    ActivationClustering,
    SpectralSignatures,
    detection_score,
    extract_activations,
    penultimate_layer,
    repair,
)
from bastion.defences.data._activations import default_layer
from bastion.defences.data._split import best_1d_split
from bastion.errors import ConfigurationError, InputError
from bastion.models import TorchClassifier
from bastion.models.zoo import small_cnn

# The default layer: the penultimate activations, before the ReLU feeding the last linear layer.
LAYER = None
DETECTORS: list[Any] = [ActivationClustering, SpectralSignatures]


def test_the_backdoor_works(backdoored: Any) -> None:
    b = backdoored
    nontarget = b.x_test[b.y_test != 0]
    assert attack_success_rate(b.net, nontarget, b.attack.apply_trigger, 0) > 0.9


def test_the_10_percent_backdoor_works(backdoored10: Any) -> None:
    b = backdoored10
    nontarget = b.x_test[b.y_test != 0]
    assert attack_success_rate(b.net, nontarget, b.attack.apply_trigger, 0) > 0.9


@pytest.mark.parametrize("case", ["backdoored", "backdoored10"])
@pytest.mark.parametrize("detector", DETECTORS)
def test_detector_finds_the_badnets_poison_at_defaults(
    request: pytest.FixtureRequest, case: str, detector: Any
) -> None:
    b = request.getfixturevalue(case)
    det = detector(b.net).fit(b.poisoned.x, b.poisoned.y)
    score = detection_score(det.flags_, b.poisoned.mask)
    assert score.recall >= 0.9
    assert score.precision >= 0.8
    assert det.splits_[0].suspicious
    assert sum(sp.suspicious for sp in det.splits_.values()) == 1


@pytest.mark.parametrize("detector", DETECTORS)
def test_detector_flags_the_larger_part_when_it_is_the_poison(
    backdoored10: Any, detector: Any
) -> None:
    b = backdoored10
    det = detector(b.net).fit(b.poisoned.x, b.poisoned.y)
    sp = det.splits_[0]
    assert sp.minority_size == b.poisoned.n_poisoned  # the flagged part is exactly the poison
    assert sp.mixing_ratio > 2.0


@pytest.mark.parametrize("detector", DETECTORS)
def test_detector_on_convolutional_features(backdoored: Any, detector: Any) -> None:
    b = backdoored
    det = detector(b.net, layer="5").fit(b.poisoned.x, b.poisoned.y)
    score = detection_score(det.flags_, b.poisoned.mask)
    assert score.recall >= 0.9
    assert score.precision >= 0.8


@pytest.mark.parametrize("detector", DETECTORS)
def test_without_whitening_the_default_layer_misses_the_backdoor(
    backdoored: Any, detector: Any
) -> None:
    b = backdoored
    plain = detector(b.net, whiten=False).fit(b.poisoned.x, b.poisoned.y)
    white = detector(b.net).fit(b.poisoned.x, b.poisoned.y)
    assert white.splits_[0].statistic > 2 * plain.splits_[0].statistic


def test_mixing_picks_the_part_made_of_other_classes() -> None:
    # class 0 = 60 genuine samples + 100 samples of classes 1..4 pushed along a trigger axis
    g = torch.Generator().manual_seed(0)
    centres = 6.0 * torch.eye(6)[:5]
    xs = [torch.randn(60, 6, generator=g) * 0.5 + centres[0]]
    ys = [torch.zeros(60, dtype=torch.long)]
    poison = torch.cat([torch.randn(25, 6, generator=g) * 0.5 + centres[k] for k in range(1, 5)])
    poison[:, 5] += 6.0
    xs.append(poison)
    ys.append(torch.zeros(100, dtype=torch.long))
    for k in range(1, 5):
        xs.append(torch.randn(80, 6, generator=g) * 0.5 + centres[k])
        ys.append(torch.full((80,), k))
    x, y = torch.cat(xs), torch.cat(ys)
    head = nn.Sequential(nn.Identity(), nn.Linear(6, 5))
    for detector in DETECTORS:
        det = detector(head).fit(x, y)
        assert torch.equal(det.flags_.nonzero().flatten(), torch.arange(60, 160))
        assert det.splits_[0].minority_size == 100


@pytest.mark.parametrize("detector", DETECTORS)
def test_detector_predicts_on_new_samples(backdoored: Any, detector: Any) -> None:
    b = backdoored
    det = detector(b.net, layer=LAYER).fit(b.poisoned.x, b.poisoned.y)
    x_new = b.attack.apply_trigger(b.x_test[b.y_test != 0][:50])
    flagged = det.predict(x_new, torch.zeros(50, dtype=torch.long))
    assert float(flagged.float().mean()) >= 0.9
    clean = det.predict(b.x_test, b.y_test)
    assert float(clean.float().mean()) <= 0.05


@pytest.mark.parametrize("detector", DETECTORS)
def test_calibrate_bounds_false_alarms_on_clean_data(backdoored: Any, detector: Any) -> None:
    b = backdoored
    det = detector(b.net, layer=LAYER).fit(b.poisoned.x, b.poisoned.y)
    det.calibrate(b.x_test, b.y_test, fpr=0.01)
    assert float(det.predict(b.x_test, b.y_test).float().mean()) <= 0.01


def test_detectors_accept_a_torch_classifier(backdoored: Any) -> None:
    b = backdoored
    clf = TorchClassifier(b.net, input_shape=(1, 8, 8), num_classes=10)
    det = SpectralSignatures(clf, layer=LAYER).fit(b.poisoned.x, b.poisoned.y)
    assert detection_score(det.flags_, b.poisoned.mask).recall >= 0.9
    assert clf.queries == 0


def test_repair_removes_the_backdoor(backdoored: Any) -> None:
    b = backdoored
    det = SpectralSignatures(b.net, layer=LAYER).fit(b.poisoned.x, b.poisoned.y)
    res = repair(
        b.poisoned.x,
        b.poisoned.y,
        det.flags_,
        factory=lambda: small_cnn((1, 8, 8), 10),
        x_test=b.x_test,
        y_test=b.y_test,
        model_before=b.net,
        trigger=b.attack.apply_trigger,
        target_class=0,
        mask=b.poisoned.mask,
    )
    assert res.attack_success_before is not None and res.attack_success_before > 0.9
    assert res.attack_success_after is not None and res.attack_success_after < 0.1
    assert res.clean_accuracy_after > 0.9
    assert res.n_poison_removed == res.n_removed == b.poisoned.n_poisoned
    assert res.to_dict()["n_removed"] == res.n_removed


def test_activations_of_named_and_default_layers() -> None:
    net = small_cnn((1, 8, 8), 10)
    x = torch.rand(7, 1, 8, 8)
    assert penultimate_layer(net) == "8"
    assert default_layer(net) == "7"  # the input of the ReLU before the last linear layer
    assert extract_activations(net, x).shape == (7, 64)
    assert extract_activations(net, x, layer="5").shape == (7, 32 * 4 * 4)
    net.train()
    extract_activations(net, x)
    assert net.training
    with pytest.raises(ConfigurationError, match="no layer named"):
        extract_activations(net, x, layer="nope")
    with pytest.raises(ConfigurationError, match="torch model"):
        extract_activations(object(), x)
    with pytest.raises(ConfigurationError, match=r"no nn\.Linear"):
        extract_activations(nn.Sequential(nn.Flatten()), x)


def test_best_1d_split_closed_form() -> None:
    u = torch.tensor([0.0, 0.0, 1.0, 1.0, 10.0, 10.0, 11.0, 11.0])
    cut, sep = best_1d_split(u)
    assert cut == pytest.approx(5.5)
    # means 0.5 and 10.5, pooled within sd sqrt(4 * 0.25 * 2 / 6) = sqrt(1/3)
    assert sep == pytest.approx(10.0 / (1.0 / 3.0) ** 0.5)


@pytest.mark.parametrize(
    "make",
    [
        lambda: ActivationClustering(nn.Linear(2, 2), n_components=0),
        lambda: ActivationClustering(nn.Linear(2, 2), max_fraction=1.0),
        lambda: ActivationClustering(nn.Linear(2, 2), shrinkage=1.5),
        lambda: SpectralSignatures(nn.Linear(2, 2), threshold=-1.0),
        lambda: SpectralSignatures(nn.Linear(2, 2), min_class_size=1),
    ],
)
def test_bad_parameters_are_rejected(make: Any) -> None:
    with pytest.raises(ConfigurationError):
        make()


def test_unfitted_and_bad_inputs_are_rejected() -> None:
    det = SpectralSignatures(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))
    with pytest.raises(ConfigurationError, match="not fitted"):
        det.score(torch.rand(3, 4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(InputError):
        det.fit(torch.rand(3, 4), torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("detector", DETECTORS)
def test_detectors_are_deterministic_with_a_stable_repr(backdoored: Any, detector: Any) -> None:
    b = backdoored
    first = detector(b.net, layer=LAYER).fit(b.poisoned.x, b.poisoned.y)
    second = detector(b.net, layer=LAYER).fit(b.poisoned.x, b.poisoned.y)
    assert torch.equal(first.scores_, second.scores_)
    assert repr(first) == repr(second)
    assert "layer=None" in repr(first) and "Sequential" not in repr(first)


def test_scan_poison_collects_findings(backdoored: Any) -> None:
    from bastion.defences.data import scan_poison

    b = backdoored
    scan = scan_poison(b.net, b.poisoned.x, b.poisoned.y, methods=["ac", "spectral"], layer=LAYER)
    assert scan.suspicious
    assert detection_score(scan.flagged_by_any(), b.poisoned.mask).recall >= 0.9
    doc = scan.to_dict()
    assert [f["id"] for f in doc["findings"]] == [
        "poison.activation_clustering",
        "poison.spectral_signatures",
    ]
    assert doc["findings"][0]["evidence"]["suspicious_classes"] == [0]


def test_top_components_randomized_matches_exact_svd() -> None:
    from bastion.defences.data._split import top_components

    g = torch.Generator().manual_seed(0)
    low_rank = torch.randn(600, 5, generator=g) @ torch.randn(5, 4000, generator=g)
    noisy = low_rank + 0.01 * torch.randn(600, 4000, generator=g)
    centred = noisy - noisy.mean(0)
    fast = top_components(centred, 3)  # 2.4M entries: the randomized path
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    exact = vh[:3].T
    # the same subspace: projections onto it agree
    assert torch.allclose(fast @ fast.T @ exact, exact, atol=1e-3)


def _mixed_cnn() -> nn.Sequential:
    """A Sequential CNN with the modules the oneDNN path handles, and some it hands back."""
    torch.manual_seed(0)
    norm = nn.BatchNorm2d(6)
    norm.running_mean = torch.empty(6).uniform_(-1.0, 1.0)
    norm.running_var = torch.empty(6).uniform_(0.5, 2.0)
    return nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1, bias=False),  # 0
        nn.ReLU(),  # 1
        nn.Dropout(0.5),  # 2: identity in eval mode
        nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=3),  # 3
        nn.ReLU(),  # 4: followed by the pool, so run after it
        nn.MaxPool2d(3, stride=2, padding=1),  # 5
        norm,  # 6: dense from here on
        nn.Flatten(),  # 7
        nn.Linear(6 * 3 * 3, 8),  # 8
        nn.ReLU(),  # 9
        nn.Linear(8, 3),  # 10
    )


@pytest.mark.parametrize("layer", [None, "0", "1", "2", "4", "5", "6", "7", "8"])
def test_onednn_path_gives_the_plain_forward_activations(layer: str | None) -> None:
    from bastion.defences.data._activations import _fast_prefix

    net = _mixed_cnn()
    x = torch.randn(45, 2, 12, 12, generator=torch.Generator().manual_seed(1))
    name = default_layer(net) if layer is None else layer
    stop = int(name) if layer is None else int(name) + 1  # the input of the default layer
    net.train()  # extraction runs in eval mode and restores the mode
    assert _fast_prefix(net, net, name, layer is None, x) is not None
    got = extract_activations(net, x, layer=layer, batch_size=16)
    assert net.training
    net.eval()
    with torch.no_grad():
        want = net[:stop](x).flatten(1)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)


def test_onednn_path_gives_way_to_hooks_and_preprocessing() -> None:
    from bastion.defences.data._activations import _fast_prefix

    net = _mixed_cnn().eval()
    x = torch.randn(10, 2, 12, 12, generator=torch.Generator().manual_seed(2))
    seen: list[int] = []
    handle = net[3].register_forward_hook(lambda _m, _i, out: seen.append(out.shape[0]))
    try:
        extract_activations(net, x, layer="8", batch_size=4)
    finally:
        handle.remove()
    assert seen == [4, 4, 2]  # the user's hook ran: the plain (hooked) pass was used
    assert _fast_prefix(net, net, "8", False, x.double()) is None
    plain = TorchClassifier(net, input_shape=(2, 12, 12), num_classes=3)
    scaled = TorchClassifier(net, input_shape=(2, 12, 12), num_classes=3, preprocessing=(0.5, 2.0))
    assert _fast_prefix(plain, net, "8", False, x) is not None
    assert _fast_prefix(scaled, net, "8", False, x) is None
    with torch.no_grad():
        want = net[:9]((x - 0.5) / 2.0)
    got = extract_activations(scaled, x, layer="8")
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    assert torch.allclose(extract_activations(plain, x, layer="8"), net[:9](x), atol=1e-5)


def test_top_eigvecs_subspace_iteration_matches_full_eigh() -> None:
    from bastion.defences.data._whiten import _top_eigvecs

    g = torch.Generator().manual_seed(1)
    # a spectrum with a clear gap after 20 components, as a wide layer's scatter has
    basis, _ = torch.linalg.qr(torch.randn(300, 300, generator=g, dtype=torch.float64))
    spectrum = torch.cat([torch.linspace(100.0, 20.0, 20), torch.linspace(1.0, 0.01, 280)])
    scatter = (basis * spectrum.double()) @ basis.T
    fast = _top_eigvecs(scatter, 20)
    exact = basis[:, :20]
    assert fast.shape == (300, 20)
    assert torch.allclose(fast.T @ fast, torch.eye(20, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(fast @ fast.T @ exact, exact, atol=1e-4)


def test_batched_whitening_maps_whiten_and_fall_back() -> None:
    from bastion.defences.data._whiten import _whitening_maps

    g = torch.Generator().manual_seed(2)
    m = torch.randn(3, 6, 6, generator=g, dtype=torch.float64)
    covs = m @ m.transpose(1, 2) + 0.1 * torch.eye(6, dtype=torch.float64)
    covs[2] = 0.0  # a degenerate class: no within-class spread at all
    maps = _whitening_maps(covs, 0.1)
    for i in range(2):
        scale = float(covs[i].trace()) / 6
        reg = 0.9 * covs[i] + (0.1 + 1e-9) * scale * torch.eye(6, dtype=torch.float64)
        assert torch.allclose(maps[i].T @ reg @ maps[i], torch.eye(6, dtype=torch.float64))
    assert torch.equal(maps[2], torch.eye(6, dtype=torch.float64))


def test_two_means_is_a_lloyd_fixed_point() -> None:
    from bastion.defences.data._split import two_means

    g = torch.Generator().manual_seed(3)
    z = torch.cat([torch.randn(50, 3, generator=g), torch.randn(30, 3, generator=g) + 2.0]).double()
    parts = two_means(z)
    centres = torch.stack([z[parts == 0].mean(0), z[parts == 1].mean(0)])
    assert torch.equal(torch.cdist(z, centres).argmin(1), parts)
    assert 20 <= int(parts.sum()) <= 60  # two real groups, not a degenerate split


def test_geometry_coords_match_the_lifted_map() -> None:
    from bastion.defences.data._whiten import class_geometry

    g = torch.Generator().manual_seed(4)
    for d in (12, 300):  # identity reduction, and a wide layer reduced to 128 components
        acts = torch.randn(400, d, generator=g)
        y = torch.arange(400) % 4
        geo = class_geometry(acts, y, [0, 1, 2, 3])
        for c in (0, 3):
            basis = torch.eye(geo.coords(c).shape[1], dtype=torch.float64)[:, :5]
            lifted = (acts[y == c].double() - geo.means[c]) @ geo.lift(c, basis)
            assert torch.allclose(lifted, geo.coords(c) @ basis, atol=1e-3)
