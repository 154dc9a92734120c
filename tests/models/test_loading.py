"""load_model: every format from a tmp file, detection by content, safe-loading refusals."""

from __future__ import annotations

import io
import pickle
import sys
import textwrap
import warnings
from pathlib import Path

import joblib
import numpy as np
import pytest
import skops.io as sio
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

import bastion.models.loading as loading
from bastion.errors import ModelLoadError, UnsafeArtifactError
from bastion.models import Capability, TorchClassifier
from bastion.models.loading import ModelFormat, detect_format, load_model
from bastion.models.onnx_model import OnnxClassifier

FACTORY_MODULE = "bastion_test_factory"
FACTORY_SOURCE = textwrap.dedent(
    """
    from sklearn.linear_model import LogisticRegression
    from torch import nn


    def build():
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


    def build_other():
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


    def build_wide():
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


    def build_nothing():
        return 42


    def build_broken():
        raise RuntimeError("factory exploded")


    class HomemadeLR(LogisticRegression):
        pass
    """
)


@pytest.fixture
def factory(tmp_path, monkeypatch) -> str:
    """A factory module importable as 'bastion_test_factory'."""
    pkg = tmp_path / "factories"
    pkg.mkdir()
    (pkg / f"{FACTORY_MODULE}.py").write_text(FACTORY_SOURCE)
    monkeypatch.syspath_prepend(str(pkg))
    monkeypatch.delitem(sys.modules, FACTORY_MODULE, raising=False)
    yield f"{FACTORY_MODULE}:build"
    sys.modules.pop(FACTORY_MODULE, None)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)).eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def estimator() -> LogisticRegression:
    data, target = load_digits(return_X_y=True)
    return LogisticRegression(max_iter=200).fit(data[:200] / 16.0, target[:200])


def _same_logits(clf, net: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        torch.testing.assert_close(clf.logits(x), net(x), atol=1e-6, rtol=0)


# -- torch formats ------------------------------------------------------------------------
def test_torchscript_infers_classes_with_a_probe(tmp_path, x):
    net = _net()
    path = tmp_path / "model.pkl"  # misleading extension: detection is by content
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in 2.13
        torch.jit.trace(net, x[:1]).save(str(path))
    assert detect_format(path) == ModelFormat.TORCHSCRIPT
    clf = load_model(path, input_shape=(1, 8, 8))
    assert isinstance(clf, TorchClassifier) and clf.num_classes == 10
    assert clf.capabilities == Capability.white_box()
    _same_logits(clf, net, x)
    with pytest.raises(ModelLoadError, match="input_shape"):
        load_model(path)
    with pytest.raises(ModelLoadError, match="probe"):
        load_model(path, input_shape=(3, 5))
    with pytest.raises(ModelLoadError, match="num_classes=7"):
        load_model(path, input_shape=(1, 8, 8), num_classes=7)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_state_dict_with_a_factory(tmp_path, factory, x, legacy):
    net = _net()
    path = tmp_path / "weights.onnx"  # misleading extension again
    torch.save(net.state_dict(), path, _use_new_zipfile_serialization=not legacy)
    assert detect_format(path) == (ModelFormat.TORCH_LEGACY if legacy else ModelFormat.TORCH)
    clf = load_model(path, input_shape=(1, 8, 8), factory=factory)
    assert clf.num_classes == 10
    _same_logits(clf, net, x)


def test_wrapped_state_dict_is_unwrapped(tmp_path, factory, x):
    net = _net()
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "model_state_dict": net.state_dict()}, path)
    _same_logits(load_model(path, input_shape=(1, 8, 8), factory=factory), net, x)


def test_factory_errors(tmp_path, factory):
    path = tmp_path / "weights.pt"
    torch.save(_net().state_dict(), path)
    shape = {"input_shape": (1, 8, 8)}
    cases = [
        (None, "pass factory="),
        ("no_colon_here", "package.module:function"),
        ("bastion_no_such_package_xyz:build", "cannot be imported"),
        (f"{FACTORY_MODULE}:missing", "no attribute 'missing'"),
        (f"{FACTORY_MODULE}:build_other", r"unexpected keys \['3\.bias', '3\.weight'\]"),
        (f"{FACTORY_MODULE}:build_wide", "size mismatch"),
        (f"{FACTORY_MODULE}:build_nothing", "returned int"),
        (f"{FACTORY_MODULE}:build_broken", "factory exploded"),
    ]
    for spec, message in cases:
        with pytest.raises(ModelLoadError, match=message) as info:
            load_model(path, factory=spec, **shape)
        assert str(path) in str(info.value)


def test_whole_pickled_module_needs_trust(tmp_path, x):
    net = _net()
    path = tmp_path / "whole.pt"
    torch.save(net, path)
    with pytest.raises(ModelLoadError, match="beyond tensors"):
        load_model(path, input_shape=(1, 8, 8))
    with pytest.warns(UserWarning, match="arbitrary code"):
        clf = load_model(path, input_shape=(1, 8, 8), trust_pickle=True)
    _same_logits(clf, net, x)


# -- ONNX and scikit-learn formats --------------------------------------------------------
def test_onnx_file(tmp_path, x):
    net = _net()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net,
            (x[:1],),
            buf,
            dynamo=False,
            dynamic_axes={"input": {0: "n"}},
            input_names=["input"],
        )
    path = tmp_path / "model.bin"
    path.write_bytes(buf.getvalue())
    assert detect_format(path) == ModelFormat.ONNX
    clf = load_model(path)
    assert isinstance(clf, OnnxClassifier) and clf.input_shape == (1, 8, 8)
    with torch.no_grad():
        ref = torch.log_softmax(net(x), 1)
    torch.testing.assert_close(torch.log_softmax(clf.logits(x), 1), ref, atol=1e-5, rtol=0)
    with pytest.raises(ModelLoadError, match="num_classes=3"):
        load_model(path, num_classes=3)


def test_skops_sklearn_model_converts_exactly(tmp_path):
    data, target = load_digits(return_X_y=True)
    pipe = make_pipeline(StandardScaler(with_mean=False), LogisticRegression(max_iter=200))
    pipe.fit(data[:200] / 16.0, target[:200])
    path = tmp_path / "model.skops"
    sio.dump(pipe, path)
    assert detect_format(path) == ModelFormat.SKOPS
    clf = load_model(path, input_shape=(1, 8, 8))
    assert isinstance(clf, TorchClassifier)
    test = data[200:230] / 16.0
    logits = clf.logits(torch.tensor(test).reshape(-1, 1, 8, 8)).detach().numpy()
    np.testing.assert_allclose(logits, pipe.decision_function(test), atol=1e-9, rtol=0)


def test_skops_with_foreign_types_needs_trust(tmp_path, factory):
    module = __import__(FACTORY_MODULE)
    data, target = load_digits(return_X_y=True)
    est = module.HomemadeLR(max_iter=100).fit(data[:100] / 16.0, target[:100])
    path = tmp_path / "homemade.skops"
    sio.dump(est, path)
    with pytest.raises(UnsafeArtifactError, match="HomemadeLR"):  # the scanner refuses first
        load_model(path)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        clf = load_model(path, trust_pickle=True)
    assert clf.num_classes == 10
    assert any("arbitrary code" in str(w.message) for w in seen)


@pytest.mark.parametrize("how", ["pickle", "joblib", "joblib-compressed"])
def test_pickles_are_refused_unless_trusted(tmp_path, estimator, how):
    path = tmp_path / "model.skops"  # lying extension: it is a pickle
    if how == "pickle":
        path.write_bytes(pickle.dumps(estimator))
    else:
        joblib.dump(estimator, path, compress=3 if how == "joblib-compressed" else 0)
    assert detect_format(path) == ModelFormat.PICKLE
    with pytest.raises(ModelLoadError, match="arbitrary code"):
        load_model(path)
    with pytest.warns(UserWarning, match="prefer skops"):
        clf = load_model(path, trust_pickle=True)
    assert isinstance(clf, TorchClassifier) and clf.num_classes == 10


def test_pickled_black_box_estimator_is_score_only(tmp_path):
    from sklearn.ensemble import RandomForestClassifier

    data, target = load_digits(return_X_y=True)
    forest = RandomForestClassifier(n_estimators=3, random_state=0).fit(data[:100], target[:100])
    path = tmp_path / "forest.joblib"
    joblib.dump(forest, path)
    with pytest.warns(UserWarning):
        clf = load_model(path, trust_pickle=True, bounds=(0.0, 16.0))
    # A forest becomes a validated TreeClassifier, score-only like SklearnScoreClassifier.
    assert clf.capabilities == Capability.score_only()
    assert type(clf).__name__ == "TreeClassifier"


# -- failures and the pre-load hook -------------------------------------------------------
def test_corrupt_unknown_and_missing_files(tmp_path):
    net = _net()
    good = tmp_path / "good.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.trace(net, torch.zeros(1, 1, 8, 8)).save(str(good))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:300])
    noise = tmp_path / "noise.bin"
    noise.write_bytes(np.random.default_rng(0).bytes(2000))
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    for path in (truncated, noise, empty):
        with pytest.raises(ModelLoadError, match=path.name):
            load_model(path, input_shape=(1, 8, 8))
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "missing.pt")
    with pytest.raises(ModelLoadError, match="not a regular file"):
        load_model(tmp_path)


def test_pre_load_check_runs_first_for_every_format(tmp_path, monkeypatch, estimator):
    files = {
        "sd": tmp_path / "a",
        "skops": tmp_path / "b",
        "pickle": tmp_path / "c",
        "noise": tmp_path / "d",
    }
    torch.save(_net().state_dict(), files["sd"])
    sio.dump(estimator, files["skops"])
    files["pickle"].write_bytes(pickle.dumps(estimator))
    files["noise"].write_bytes(b"\x00" * 50)
    seen: list[Path] = []

    def refuse(path: Path, **kwargs: object) -> None:
        seen.append(path)
        raise UnsafeArtifactError(f"{path} refused by the scanner")

    monkeypatch.setattr(loading, "_pre_load_check", refuse)
    for path in files.values():
        with pytest.raises(UnsafeArtifactError, match="refused by the scanner"):
            load_model(path, trust_pickle=True)
    assert seen == list(files.values())


class _GetCwd:
    """A harmless stand-in for a malicious payload: unpickling it calls os.getcwd."""

    def __reduce__(self):
        import os

        return (os.getcwd, ())


def test_a_file_that_would_run_code_is_refused_before_loading(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps(_GetCwd()))
    with pytest.raises(UnsafeArtifactError, match=r"did not scan clean.*getcwd"):
        load_model(path, input_shape=(4,))
    # asking for it downgrades the refusal to a warning (and the pickle loader then refuses a str)
    with warnings.catch_warnings(record=True) as seen, pytest.raises(ModelLoadError):
        warnings.simplefilter("always")
        load_model(path, input_shape=(4,), trust_pickle=True)
    assert any("did not scan clean" in str(w.message) for w in seen)
