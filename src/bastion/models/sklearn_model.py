"""scikit-learn estimators as bastion classifiers.

:func:`from_sklearn` picks the strongest adapter an estimator allows:

- **white-box** (exact conversion to a torch module, wrapped in a
  :class:`~bastion.models.TorchClassifier`) for ``LogisticRegression``, ``LinearSVC``,
  ``SGDClassifier`` (any loss), ``MLPClassifier`` (any activation), a
  ``OneVsRestClassifier`` over those linear models, and a ``Pipeline`` of
  ``StandardScaler`` / ``MinMaxScaler`` steps ending in one of them. Weights are kept in
  float64 inside the module; the output takes the input's floating dtype (float32 in, float32
  out).
- **score-only** (:class:`SklearnScoreClassifier`) for any other estimator with
  ``predict_proba``.
- **label-only** (:class:`SklearnLabelClassifier`) for any other estimator.

What the logits of a converted estimator mean
---------------------------------------------
- ``LogisticRegression``, ``LinearSVC``, ``SGDClassifier``: the estimator's
  ``decision_function`` (``x @ coef_.T + intercept_``). A binary model has one decision
  column ``f``; it is exposed as the two logits ``[0, f]``, so ``argmax`` equals ``predict``
  and, for logistic regression, ``softmax`` equals ``predict_proba``.
- ``OneVsRestClassifier``: the stacked per-class decision functions (its
  ``decision_function``); ``argmax`` equals ``predict``, but ``softmax`` is *not*
  ``predict_proba`` (which normalises per-class sigmoids).
- ``MLPClassifier``: the last layer before the output activation. Multiclass: the
  pre-softmax values (``softmax`` equals ``predict_proba``). Binary (one logistic output
  ``z``): the logits ``[0, z]`` (``softmax`` equals ``predict_proba``).
- Score-only adapters return ``log(predict_proba)``, clamped at ``log(1e-12)``.

Classes: the estimator's ``classes_`` must be the integers ``0 .. k-1`` (class ``i`` of the
adapter is then label ``i``); anything else raises :class:`~bastion.errors.ConfigurationError`
— refit on integer labels (e.g. with ``LabelEncoder``).

Example
-------
>>> import numpy as np, torch
>>> from sklearn.linear_model import LogisticRegression
>>> from bastion.models.sklearn_model import from_sklearn
>>> rng = np.random.default_rng(0)
>>> X = rng.random((60, 4)); y = (X[:, 0] > 0.5).astype(int)
>>> est = LogisticRegression().fit(X, y)
>>> clf = from_sklearn(est)
>>> x = torch.tensor(X[:5], dtype=torch.float64)
>>> bool(torch.allclose(clf.logits(x)[:, 1], torch.tensor(est.decision_function(X[:5]))))
True
>>> clf.capabilities == clf.capabilities.white_box()
True
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from bastion.errors import CapabilityError, ConfigurationError
from bastion.models.base import BaseClassifier, Capability
from bastion.models.torch_model import TorchClassifier

__all__ = [
    "SklearnLabelClassifier",
    "SklearnScoreClassifier",
    "from_sklearn",
    "to_torch_module",
]

Access = Literal["auto", "white-box", "scores", "labels"]
_ACCESS = ("auto", "white-box", "scores", "labels")
_LOG_EPS = 1e-12
_ACTIVATIONS = ("identity", "logistic", "tanh", "relu")


# -- torch modules ------------------------------------------------------------------------
class _Affine(nn.Module):
    """``(x - shift) * scale`` per feature, float64 (a fitted StandardScaler/MinMaxScaler)."""

    shift: torch.Tensor
    scale: torch.Tensor

    def __init__(self, shift: np.ndarray, scale: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor(shift, dtype=torch.float64))
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float64))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return (h - self.shift) * self.scale


class SklearnModule(nn.Module):
    """Flatten, optional affine preprocessing, then linear layers with one hidden activation.

    Computes in float64 and returns the input's floating dtype. ``binary=True`` turns the single
    output column ``f`` into the two logits ``[0, f]``.
    """

    def __init__(
        self,
        layers: Sequence[tuple[np.ndarray, np.ndarray]],
        *,
        activation: str = "identity",
        binary: bool = False,
        preprocess: Sequence[_Affine] = (),
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ConfigurationError(
                f"unsupported activation {activation!r}; expected one of {_ACTIVATIONS}"
            )
        self.preprocess = nn.ModuleList(preprocess)
        self.layers = nn.ModuleList()
        for weight, bias in layers:
            w = np.asarray(weight, dtype=np.float64)
            lin = nn.Linear(w.shape[0], w.shape[1], dtype=torch.float64)
            with torch.no_grad():
                lin.weight.copy_(torch.tensor(w.T, dtype=torch.float64))
                lin.bias.copy_(torch.tensor(np.ravel(bias), dtype=torch.float64))
            self.layers.append(lin)
        self.activation = activation
        self.binary = binary

    def _act(self, h: torch.Tensor) -> torch.Tensor:
        if self.activation == "relu":
            return torch.relu(h)
        if self.activation == "tanh":
            return torch.tanh(h)
        if self.activation == "logistic":
            return torch.sigmoid(h)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_dtype = x.dtype if torch.is_floating_point(x) else torch.float32
        h = x.reshape(x.shape[0], -1).to(torch.float64)
        for pre in self.preprocess:
            h = pre(h)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < last:
                h = self._act(h)
        if self.binary:
            h = torch.cat([torch.zeros_like(h), h], dim=1)
        return h.to(out_dtype)


# -- conversion ---------------------------------------------------------------------------
def _is_linear(est: Any) -> bool:
    from sklearn.linear_model import LogisticRegression, SGDClassifier
    from sklearn.svm import LinearSVC

    return isinstance(est, LogisticRegression | LinearSVC | SGDClassifier)


def _affine_of(step: Any) -> _Affine | None:
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    if isinstance(step, StandardScaler):
        n = int(step.n_features_in_)
        mean = step.mean_ if step.with_mean else np.zeros(n)
        scale = step.scale_ if step.with_std else np.ones(n)
        return _Affine(np.asarray(mean, dtype=np.float64), 1.0 / np.asarray(scale, np.float64))
    if isinstance(step, MinMaxScaler):
        if step.clip:
            return None
        # x * scale_ + min_  ==  (x - (-min_ / scale_)) * scale_
        scale = np.asarray(step.scale_, dtype=np.float64)
        shift = -np.asarray(step.min_, dtype=np.float64) / np.where(scale == 0, 1.0, scale)
        return _Affine(shift, scale)
    return None


def to_torch_module(estimator: Any) -> nn.Module | None:
    """The exact torch equivalent of a fitted estimator, or ``None`` if it has none.

    See the module docstring for what the module's outputs mean for each estimator.
    """
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline

    if isinstance(estimator, Pipeline):
        pre: list[_Affine] = []
        for _, step in estimator.steps[:-1]:
            if step is None or step == "passthrough":
                continue
            affine = _affine_of(step)
            if affine is None:
                return None
            pre.append(affine)
        inner = to_torch_module(estimator.steps[-1][1])
        if not isinstance(inner, SklearnModule) or len(inner.preprocess):
            return None
        inner.preprocess = nn.ModuleList(pre)
        return inner
    if _is_linear(estimator):
        coef = np.asarray(estimator.coef_, dtype=np.float64)
        intercept = np.broadcast_to(
            np.asarray(estimator.intercept_, dtype=np.float64), (coef.shape[0],)
        )
        return SklearnModule([(coef.T, intercept)], binary=coef.shape[0] == 1)
    if isinstance(estimator, OneVsRestClassifier):
        parts = list(getattr(estimator, "estimators_", []))
        if not parts or not all(_is_linear(e) for e in parts):
            return None
        coefs = [np.asarray(e.coef_, dtype=np.float64).reshape(-1) for e in parts]
        icpts = [float(np.asarray(e.intercept_, dtype=np.float64).reshape(-1)[0]) for e in parts]
        return SklearnModule([(np.stack(coefs, axis=1), np.asarray(icpts))], binary=len(parts) == 1)
    if isinstance(estimator, MLPClassifier):
        out_act = getattr(estimator, "out_activation_", None)
        n_out = int(estimator.n_outputs_)
        if out_act == "softmax":
            binary = False
        elif out_act == "logistic" and n_out == 1:
            binary = True
        else:
            raise ConfigurationError(
                "a multi-label MLPClassifier (one logistic output per label) is not a single-label "
                "classifier; fit it on a 1-d vector of integer labels"
            )
        layers = list(zip(estimator.coefs_, estimator.intercepts_, strict=True))
        return SklearnModule(layers, activation=str(estimator.activation), binary=binary)
    return None


def _check_fitted(estimator: Any) -> None:
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(estimator)
    except NotFittedError as exc:
        raise ConfigurationError(
            f"{type(estimator).__name__} is not fitted; call fit() before wrapping it"
        ) from exc
    except TypeError as exc:
        raise ConfigurationError(
            f"{type(estimator).__name__} is not a scikit-learn estimator"
        ) from exc


def _num_classes(estimator: Any) -> int:
    classes = getattr(estimator, "classes_", None)
    if classes is None:
        raise ConfigurationError(
            f"{type(estimator).__name__} has no classes_; only fitted classifiers can be wrapped"
        )
    arr = np.asarray(classes)
    if arr.ndim != 1:
        raise ConfigurationError(
            "multi-output/multi-label estimators are not supported; fit on 1-d integer labels"
        )
    k = arr.shape[0]
    ok = arr.dtype.kind in "iub" or (
        arr.dtype.kind == "f" and bool(np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)))
    )
    if not ok or not np.array_equal(arr.astype(np.int64), np.arange(k)):
        shown = ", ".join(map(repr, arr[:6].tolist())) + (", ..." if k > 6 else "")
        raise ConfigurationError(
            f"estimator classes_ must be the integers 0..{k - 1}, got [{shown}]; refit on "
            "integer labels (e.g. sklearn.preprocessing.LabelEncoder) so class i means label i"
        )
    return int(k)


def _input_shape(estimator: Any, input_shape: Sequence[int] | None) -> tuple[int, ...]:
    n_features = getattr(estimator, "n_features_in_", None)
    if input_shape is None:
        if n_features is None:
            raise ConfigurationError(
                f"{type(estimator).__name__} does not record n_features_in_; pass input_shape"
            )
        return (int(n_features),)
    shape = tuple(int(s) for s in input_shape)
    if n_features is not None and math.prod(shape) != int(n_features):
        raise ConfigurationError(
            f"input_shape {shape} has {math.prod(shape)} features but the estimator was fitted "
            f"on {int(n_features)}"
        )
    return shape


# -- black-box adapters -------------------------------------------------------------------
class _SklearnBlackBox(BaseClassifier):
    def __init__(
        self,
        estimator: Any,
        *,
        input_shape: Sequence[int] | None,
        bounds: tuple[float, float],
        capabilities: Capability,
        query_budget: int | None,
    ) -> None:
        _check_fitted(estimator)
        super().__init__(
            input_shape=_input_shape(estimator, input_shape),
            num_classes=_num_classes(estimator),
            bounds=bounds,
            capabilities=capabilities,
            query_budget=query_budget,
        )
        self.estimator = estimator

    @staticmethod
    def _to_numpy(x: torch.Tensor) -> np.ndarray:
        return x.detach().reshape(x.shape[0], -1).to("cpu", torch.float64).numpy()

    def _call(self, method: str, x: torch.Tensor) -> np.ndarray:
        with warnings.catch_warnings():
            # an estimator fitted on a DataFrame warns on arrays; columns are in order here
            warnings.filterwarnings("ignore", message="X does not have valid feature names")
            return np.asarray(getattr(self.estimator, method)(self._to_numpy(x)))

    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        labels = self._call("predict", x)
        return torch.from_numpy(labels.astype(np.int64)).to(x.device)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({type(self.estimator).__name__}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes}, "
            f"bounds={self.bounds})"
        )


class SklearnScoreClassifier(_SklearnBlackBox):
    """Score-only adapter over any fitted classifier with ``predict_proba``.

    ``logits(x)`` returns ``log(predict_proba(x))`` clamped at ``log(1e-12)`` (float32, on
    ``x``'s device); it carries no gradient. Entries at that floor are censored
    (:attr:`score_floor`, :meth:`censored`). ``predict`` is the estimator's own ``predict``
    (for most estimators the argmax of ``predict_proba``; where the two differ, ``predict`` is
    what the deployed model answers).
    """

    def __init__(
        self,
        estimator: Any,
        *,
        input_shape: Sequence[int] | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
        query_budget: int | None = None,
    ) -> None:
        if not hasattr(estimator, "predict_proba"):
            raise CapabilityError(
                f"{type(estimator).__name__} has no predict_proba (for SVC, wrap it in "
                "CalibratedClassifierCV to get scores); wrap it label-only with access='labels'"
            )
        super().__init__(
            estimator,
            input_shape=input_shape,
            bounds=bounds,
            capabilities=Capability.score_only(),
            query_budget=query_budget,
        )

    score_floor = math.log(_LOG_EPS)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        proba = self._call("predict_proba", x).astype(np.float64)
        out = torch.from_numpy(np.log(np.clip(proba, _LOG_EPS, None)))
        return out.to(x.device, torch.float32)


class SklearnLabelClassifier(_SklearnBlackBox):
    """Label-only adapter over any fitted classifier: ``predict`` only.

    ``logits`` raises :class:`~bastion.errors.CapabilityError` without counting a query.
    """

    def __init__(
        self,
        estimator: Any,
        *,
        input_shape: Sequence[int] | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
        query_budget: int | None = None,
    ) -> None:
        if not hasattr(estimator, "predict"):
            raise ConfigurationError(f"{type(estimator).__name__} has no predict method")
        super().__init__(
            estimator,
            input_shape=input_shape,
            bounds=bounds,
            capabilities=Capability.LABELS,
            query_budget=query_budget,
        )

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        raise CapabilityError(
            f"{type(self.estimator).__name__} is wrapped label-only: it offers predict(), not "
            "scores; use a decision-based attack, or wrap an estimator with predict_proba "
            "using access='scores'"
        )

    def _logits(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - unreachable
        raise CapabilityError("label-only classifier has no logits")


# -- entry point --------------------------------------------------------------------------
def from_sklearn(
    estimator: Any,
    *,
    input_shape: Sequence[int] | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    access: Access = "auto",
    query_budget: int | None = None,
) -> BaseClassifier:
    """Wrap a fitted scikit-learn classifier in the strongest adapter ``access`` allows.

    Parameters
    ----------
    estimator:
        A fitted classifier whose ``classes_`` are ``0 .. k-1``.
    input_shape:
        The shape of one input; defaults to ``(n_features_in_,)``. Any shape with that many
        features is allowed (e.g. ``(1, 8, 8)`` for 64 features); inputs are flattened.
    access:
        ``"auto"`` (white-box when the estimator converts exactly, else score-only when it has
        ``predict_proba``, else label-only), or one of ``"white-box"``, ``"scores"``,
        ``"labels"`` to ask for that adapter (a weaker one can always be asked for).

    Returns a :class:`~bastion.models.TorchClassifier` (white-box),
    :class:`SklearnScoreClassifier` or :class:`SklearnLabelClassifier`.
    """
    if access not in _ACCESS:
        raise ConfigurationError(f"access must be one of {_ACCESS}, got {access!r}")
    _check_fitted(estimator)
    if access in ("auto", "white-box"):
        module = to_torch_module(estimator)
        if module is not None:
            module.eval()
            return TorchClassifier(
                module,
                input_shape=_input_shape(estimator, input_shape),
                num_classes=_num_classes(estimator),
                bounds=bounds,
                query_budget=query_budget,
            )
        if access == "white-box":
            raise CapabilityError(
                f"{type(estimator).__name__} cannot be converted exactly to torch (supported: "
                "LogisticRegression, LinearSVC, SGDClassifier, MLPClassifier, OneVsRest over "
                "linear models, and Pipelines of scalers ending in one); use access='scores' "
                "or 'labels'"
            )
    if access == "scores" or (access == "auto" and hasattr(estimator, "predict_proba")):
        return SklearnScoreClassifier(
            estimator, input_shape=input_shape, bounds=bounds, query_budget=query_budget
        )
    return SklearnLabelClassifier(
        estimator, input_shape=input_shape, bounds=bounds, query_budget=query_budget
    )
