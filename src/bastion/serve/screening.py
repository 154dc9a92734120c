"""Screening of inputs before the model sees them (out-of-distribution / adversarial).

A screener is any object with a ``name`` and ``screen(x) -> mask``: ``x`` is the request's
float32 batch ``(n, *input_shape)``, the mask a boolean array ``(n,)`` that is true for every
sample to reject (or flag). The policy names one per model: ``none``, ``contract`` (the
built-in :class:`ContractScreener`) or ``package.module:factory`` for a plug-in, where
``factory(model_settings)`` returns the screener.

:class:`ContractScreener` uses the Mahalanobis outlier model that
:func:`bastion.data.contracts.infer_contract` fits on the reference data's per-sample features
(channel means, standard deviations and block means): a sample whose distance exceeds the
reference's 99.9th percentile is far from anything the model was trained on. It catches
out-of-distribution inputs and crude perturbations (noise, patches, inverted images); small
L-inf adversarial perturbations barely move these features, so it is not an adversarial-example
detector.

>>> import numpy as np
>>> from bastion.data.contracts import infer_contract
>>> rng = np.random.default_rng(0)
>>> ref = rng.random((400, 1, 4, 4)).astype(np.float32)
>>> screener = ContractScreener(infer_contract(ref, name="ref"))
>>> screener.screen(np.concatenate([ref[:3], np.ones((1, 1, 4, 4), np.float32)])).tolist()
[False, False, False, True]
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol, runtime_checkable

import numpy as np

from bastion.data.contracts import Contract, TensorContract
from bastion.data.contracts._tensor import sample_features
from bastion.errors import ConfigurationError

__all__ = ["ContractScreener", "Screener", "build_screener"]


@runtime_checkable
class Screener(Protocol):
    name: str

    def screen(self, x: np.ndarray) -> np.ndarray:
        """A boolean mask ``(n,)``: true for the samples to reject or flag."""
        ...


class ContractScreener:
    """Flags samples outside the contract's Mahalanobis outlier threshold (see module doc)."""

    name = "contract"

    def __init__(self, contract: Contract, *, threshold: float | None = None) -> None:
        if not isinstance(contract, TensorContract) or contract.reference.mahalanobis is None:
            raise ConfigurationError(
                "screening 'contract' needs a tensor contract with an outlier model (infer it "
                "from at least a few hundred reference samples with `bastion data infer-contract`)")
        model = contract.reference.mahalanobis
        self._mean = np.asarray(model.mean, dtype=np.float64)
        self._precision = np.asarray(model.precision, dtype=np.float64)
        self.threshold = float(model.threshold if threshold is None else threshold)
        if not self.threshold > 0:
            raise ConfigurationError(f"threshold must be positive, got {self.threshold}")
        self._channel_axis = contract.channel_axis

    def distances(self, x: np.ndarray) -> np.ndarray:
        feats, _ = sample_features(x.astype(np.float64, copy=False), self._channel_axis)
        diff = feats - self._mean
        d2 = np.einsum("ij,jk,ik->i", diff, self._precision, diff)
        return np.sqrt(np.maximum(d2, 0.0))

    def screen(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.distances(x) > self.threshold)

    def __repr__(self) -> str:
        return f"ContractScreener(threshold={self.threshold:.4g})"


def build_screener(spec: str, *, contract: Contract | None, settings: Any) -> Screener | None:
    """The screener named by the policy's ``screening.detector`` (``None`` for ``none``)."""
    if spec == "none":
        return None
    if spec == "contract":
        if contract is None:
            raise ConfigurationError(
                f"model {settings.name!r}: screening 'contract' needs the model's 'contract'")
        return ContractScreener(contract)
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"screening detector {spec!r} cannot be imported: {exc}") from exc
    screener = factory(settings)
    if not isinstance(screener, Screener):
        raise ConfigurationError(
            f"screening detector {spec!r} returned {type(screener).__name__}, which has no "
            "'name' and 'screen(x) -> mask'")
    return screener
