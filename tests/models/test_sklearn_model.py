"""Exact conversion of scikit-learn estimators, and the score/label-only wrappers."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.multiclass import OneVsRestClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from sklearn.svm import SVC, LinearSVC

from bastion.errors import CapabilityError, ConfigurationError, InputError, QueryBudgetExceeded
from bastion.models import Capability, TorchClassifier
from bastion.models.sklearn_model import (
    SklearnLabelClassifier,
    SklearnScoreClassifier,
    from_sklearn,
)

TOL = 1e-5


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    return x[:300], y[:300], x[300:500]


def _fit(est, x, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(x, y)


def _decision_as_logits(est, x: np.ndarray) -> np.ndarray:
    d = est.decision_function(x)
    return np.stack([np.zeros_like(d), d], axis=1) if d.ndim == 1 else d


def _mlp_reference(est: MLPClassifier, x: np.ndarray) -> np.ndarray:
    """Independent float64 forward pass of a fitted MLPClassifier up to its output activation."""
    act = {
        "relu": lambda h: np.maximum(h, 0.0),
        "tanh": np.tanh,
        "logistic": lambda h: 1.0 / (1.0 + np.exp(-h)),
        "identity": lambda h: h,
    }[est.activation]
    h = x
    for i, (w, b) in enumerate(zip(est.coefs_, est.intercepts_, strict=True)):
        h = h @ w + b
        if i < len(est.coefs_) - 1:
            h = act(h)
    return np.concatenate([np.zeros_like(h), h], axis=1) if h.shape[1] == 1 else h


LINEAR = {
    "logreg": lambda: LogisticRegression(max_iter=300),
    "linear_svc": lambda: LinearSVC(),
    "sgd_hinge": lambda: SGDClassifier(random_state=0),
    "sgd_log": lambda: SGDClassifier(loss="log_loss", random_state=0),
    "sgd_modified_huber": lambda: SGDClassifier(loss="modified_huber", random_state=0),
    "sgd_perceptron": lambda: SGDClassifier(loss="perceptron", random_state=0),
    "ovr_logreg": lambda: OneVsRestClassifier(LogisticRegression(max_iter=300)),
    "pipe_std_logreg": lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)),
    "pipe_minmax_svc": lambda: make_pipeline(MinMaxScaler(), LinearSVC()),
}


@pytest.mark.parametrize("binary", [False, True], ids=["multiclass", "binary"])
@pytest.mark.parametrize("name", sorted(LINEAR))
def test_linear_models_convert_exactly(digits, name, binary):
    x, y, x_test = digits
    if binary:
        y = (y == 3).astype(int)
    est = _fit(LINEAR[name](), x, y)
    clf = from_sklearn(est, input_shape=(1, 8, 8))
    assert isinstance(clf, TorchClassifier)
    assert clf.capabilities == Capability.white_box()
    assert clf.num_classes == (2 if binary else 10)
    xt = torch.tensor(x_test, dtype=torch.float32).reshape(-1, 1, 8, 8)
    ref = _decision_as_logits(est, xt.reshape(len(xt), -1).double().numpy())
    # float64 in: the decision function to float64 rounding
    logits64 = clf.logits(xt.double())
    assert logits64.dtype == torch.float64
    np.testing.assert_allclose(logits64.detach().numpy(), ref, atol=TOL * 1e-3, rtol=0)
    # float32 in: the same values rounded to float32 (relative error <= 2**-24)
    logits = clf.logits(xt)
    assert logits.dtype == torch.float32
    np.testing.assert_allclose(logits.detach().double().numpy(), ref, atol=TOL, rtol=1e-7)
    pred = clf.predict(xt).numpy()
    np.testing.assert_array_equal(pred, est.predict(x_test.astype(np.float32)))


@pytest.mark.parametrize("binary", [False, True], ids=["multiclass", "binary"])
def test_binary_logistic_softmax_is_predict_proba(digits, binary):
    x, y, x_test = digits
    if binary:
        y = (y == 7).astype(int)
    est = _fit(LogisticRegression(max_iter=300), x, y)
    clf = from_sklearn(est)
    xt = torch.tensor(x_test, dtype=torch.float64)
    probs = torch.softmax(clf.logits(xt), dim=1).detach().numpy()
    np.testing.assert_allclose(probs, est.predict_proba(x_test), atol=1e-9)


@pytest.mark.parametrize("binary", [False, True], ids=["multiclass", "binary"])
@pytest.mark.parametrize("activation", ["relu", "tanh", "logistic", "identity"])
def test_mlp_converts_exactly(digits, activation, binary):
    x, y, x_test = digits
    if binary:
        y = (y == 3).astype(int)
    est = _fit(
        MLPClassifier(
            hidden_layer_sizes=(16, 8), activation=activation, max_iter=40, random_state=0
        ),
        x,
        y,
    )
    clf = from_sklearn(est)
    xt = torch.tensor(x_test, dtype=torch.float32)
    logits = clf.logits(xt).detach().double().numpy()
    x64 = xt.double().numpy()
    np.testing.assert_allclose(logits, _mlp_reference(est, x64), atol=TOL, rtol=0)
    exact = clf.logits(xt.double()).detach().numpy()
    np.testing.assert_allclose(exact, _mlp_reference(est, x64), atol=1e-10, rtol=0)
    probs = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    np.testing.assert_allclose(probs, est.predict_proba(x64), atol=TOL)
    np.testing.assert_array_equal(clf.predict(xt).numpy(), est.predict(x64))


def test_converted_model_is_differentiable(digits):
    x, y, x_test = digits
    est = _fit(LogisticRegression(max_iter=300), x, y)
    clf = from_sklearn(est)
    xt = torch.tensor(x_test[:4], dtype=torch.float32, requires_grad=True)
    clf.logits(xt)[:, 2].sum().backward()
    # the gradient of a linear decision function is its coefficient row
    expected = np.broadcast_to(est.coef_[2], (4, 64))
    np.testing.assert_allclose(xt.grad.numpy(), expected, atol=1e-6)


def test_score_only_wrapper_for_random_forest(digits):
    x, y, x_test = digits
    est = RandomForestClassifier(n_estimators=10, random_state=0).fit(x, y)
    clf = from_sklearn(est, input_shape=(1, 8, 8), query_budget=100)
    assert isinstance(clf, SklearnScoreClassifier)
    assert clf.capabilities == Capability.score_only()
    xt = torch.tensor(x_test[:50], dtype=torch.float32).reshape(-1, 1, 8, 8)
    logp = clf.logits(xt)
    x64 = xt.reshape(50, -1).double().numpy()
    proba = est.predict_proba(x64)
    np.testing.assert_allclose(torch.exp(logp).numpy(), proba, atol=1e-6)
    assert torch.isfinite(logp).all() and float(logp.min()) >= np.log(1e-12) - 1e-3
    np.testing.assert_array_equal(clf.predict(xt).numpy(), est.predict(x64))
    assert clf.queries == 100
    with pytest.raises(QueryBudgetExceeded):
        clf.predict(xt[:1])
    assert clf.queries == 100


def test_label_only_wrapper_for_svc(digits):
    x, y, x_test = digits
    est = SVC().fit(x, y)  # no predict_proba without probability=True
    clf = from_sklearn(est)
    assert isinstance(clf, SklearnLabelClassifier)
    assert clf.capabilities == Capability.LABELS
    xt = torch.tensor(x_test, dtype=torch.float32)
    np.testing.assert_array_equal(clf.predict(xt).numpy(), est.predict(xt.double().numpy()))
    before = clf.queries
    with pytest.raises(CapabilityError, match="label-only"):
        clf.logits(xt)
    assert clf.queries == before


def test_access_can_be_forced_weaker_but_not_stronger(digits):
    x, y, _ = digits
    lr = _fit(LogisticRegression(max_iter=300), x, y)
    assert isinstance(from_sklearn(lr, access="scores"), SklearnScoreClassifier)
    assert isinstance(from_sklearn(lr, access="labels"), SklearnLabelClassifier)
    forest = RandomForestClassifier(n_estimators=3, random_state=0).fit(x, y)
    with pytest.raises(CapabilityError, match="cannot be converted"):
        from_sklearn(forest, access="white-box")
    with pytest.raises(CapabilityError, match="predict_proba"):
        from_sklearn(SVC().fit(x, y), access="scores")
    with pytest.raises(ConfigurationError, match="access"):
        from_sklearn(lr, access="grey-box")  # type: ignore[arg-type]


def test_bad_estimators_and_shapes_are_rejected(digits):
    x, y, _ = digits
    with pytest.raises(ConfigurationError, match="not fitted"):
        from_sklearn(LogisticRegression())
    with pytest.raises(ConfigurationError, match=r"classes_ must be the integers 0\.\.9"):
        from_sklearn(_fit(LogisticRegression(max_iter=300), x, y + 1))
    with pytest.raises(ConfigurationError, match=r"0\.\.1"):
        from_sklearn(_fit(LogisticRegression(max_iter=300), x, np.where(y == 3, "a", "b")))
    lr = _fit(LogisticRegression(max_iter=300), x, y)
    with pytest.raises(ConfigurationError, match="63 features"):
        from_sklearn(lr, input_shape=(63,))
    clf = from_sklearn(lr, input_shape=(1, 8, 8))
    with pytest.raises(InputError):
        clf.logits(torch.zeros(2, 64))


def test_calibrated_svc_is_score_only(digits):
    from sklearn.calibration import CalibratedClassifierCV

    x, y, x_test = digits
    est = CalibratedClassifierCV(SVC(), ensemble=False).fit(x, y)
    clf = from_sklearn(est)
    assert isinstance(clf, SklearnScoreClassifier)
    xt = torch.tensor(x_test, dtype=torch.float32)
    x64 = xt.double().numpy()
    np.testing.assert_array_equal(clf.predict(xt).numpy(), est.predict(x64))
    np.testing.assert_allclose(clf.logits(xt).exp().numpy(), est.predict_proba(x64), atol=1e-6)


def test_multilabel_mlp_is_rejected(digits):
    x, y, _ = digits
    targets = np.stack([y % 2, (y > 4).astype(int)], axis=1)
    est = _fit(MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0), x, targets)
    with pytest.raises(ConfigurationError, match="multi-label"):
        from_sklearn(est)
