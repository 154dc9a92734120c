"""Loading the served models: once, at start-up, through the registry's pull and the scanner.

A model comes from the registry (``alias``, ``champion`` by default, or ``version``): the
registry checks every digest (and the signature when trusted keys are configured) on
:meth:`~bastion.artifacts.registry.Registry.pull`, then
:func:`bastion.models.load_model` scans the file before any loader touches it and never
unpickles arbitrary objects. A local ``path`` is for development; it is scanned the same way.
"""

from __future__ import annotations

import functools
import logging
import math
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bastion.data.contracts import Contract, TableContract, TensorContract, load_contract
from bastion.defences.output import OutputPolicy
from bastion.errors import BastionError, ConfigurationError, ModelLoadError
from bastion.models.base import Capability, Classifier
from bastion.models.loading import import_factory_module
from bastion.serve.config import ModelSettings, RegistrySettings
from bastion.serve.screening import Screener, build_screener

__all__ = ["ServedModel", "load_served_model"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    """A loaded model with everything the pipeline needs to serve it."""

    name: str
    version: str
    source: str
    classifier: Classifier
    policy: OutputPolicy
    contract: Contract | None
    screener: Screener | None
    screen_action: str
    generator: torch.Generator
    #: a tabular model's named input columns (records by name are accepted), else ``None``
    features: tuple[str, ...] | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.classifier.input_shape)

    @property
    def num_classes(self) -> int:
        return int(self.classifier.num_classes)

    @torch.inference_mode()
    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Labels ``(n,)`` and hardened probabilities ``(n, k)`` (``None`` when label-only)."""
        batch = torch.from_numpy(x)
        if Capability.SCORES not in self.classifier.capabilities:
            return self.classifier.predict(batch).cpu().numpy().astype(np.int64), None
        probs = torch.softmax(self.classifier.logits(batch).float(), dim=1).cpu()
        if self.policy.label_only:
            return probs.argmax(1).numpy().astype(np.int64), None
        out = self.policy.apply(probs, self.generator)
        return out.argmax(1).numpy().astype(np.int64), out.numpy()


def _factory(settings: ModelSettings) -> Callable[[], nn.Module] | None:
    if settings.factory is None:
        return None
    module_name, _, attr = settings.factory.partition(":")
    try:
        obj: Any = import_factory_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(
            f"model {settings.name!r}: factory {settings.factory!r} cannot be imported: {exc}"
        ) from exc
    if not callable(obj):
        raise ConfigurationError(f"model {settings.name!r}: factory {settings.factory!r} is not "
                                 "callable")
    return functools.partial(obj, **settings.factory_kwargs)


def _load_file(path: Path, settings: ModelSettings) -> Classifier:
    from bastion.models.loading import load_model

    return load_model(path, input_shape=settings.input_shape, num_classes=settings.num_classes,
                      bounds=settings.bounds, factory=_factory(settings), device=settings.device)


def _from_registry(settings: ModelSettings, registry: RegistrySettings) -> tuple[Classifier, str]:
    from bastion.artifacts.registry import Registry

    ref: int | str = settings.version if settings.version is not None else settings.alias or ""
    reg = Registry(registry.metadata_url, registry.storage_url, actor=registry.actor,
                   trusted_keys=registry.trusted_keys)
    tmp = Path(tempfile.mkdtemp(prefix="bastion-serve-"))
    try:
        version = reg.get(settings.name, ref)
        if reg.trusted_keys and version.signature_status != "valid":
            raise ModelLoadError(
                f"{settings.name} v{version.version} is not signed by a trusted key "
                f"(signature {version.signature_status}); sign it or drop registry.trusted_keys")
        path = reg.pull(settings.name, version.version, tmp / "model")
        target = path if path.is_file() else _single_file(path, settings.name)
        return _load_file(target, settings), f"v{version.version}"
    finally:
        reg.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _single_file(folder: Path, name: str) -> Path:
    files = [p for p in folder.rglob("*") if p.is_file() and p.name != "model.sig"]
    if len(files) != 1:
        raise ModelLoadError(f"{name}: the registry version is a folder of {len(files)} files; "
                             "the gateway serves single-file models")
    return files[0]


def load_served_model(settings: ModelSettings, registry: RegistrySettings) -> ServedModel:
    """Load one model of the policy (see the module docstring)."""
    try:
        if settings.path is not None:
            clf, version = _load_file(Path(settings.path), settings), "local"
        else:
            clf, version = _from_registry(settings, registry)
    except ConfigurationError:
        raise
    except BastionError as exc:
        raise ConfigurationError(f"model {settings.name!r} ({settings.source}) cannot be "
                                 f"served: {exc}") from exc
    if isinstance(getattr(clf, "module", None), nn.Module):
        clf.module.eval()  # type: ignore[attr-defined]
    contract = None
    if settings.contract is not None:
        contract = load_contract(settings.contract)
        if isinstance(contract, TensorContract) and tuple(contract.shape[1:]) != tuple(
                clf.input_shape):
            raise ConfigurationError(
                f"model {settings.name!r}: its contract expects samples of shape "
                f"{tuple(contract.shape[1:])}, the model takes {tuple(clf.input_shape)}")
    features = None
    if isinstance(contract, TableContract):
        contract, features = _model_columns(settings, contract, clf)
    policy = settings.output.build()
    if not policy.label_only and Capability.SCORES not in clf.capabilities:
        raise ConfigurationError(f"model {settings.name!r} is label-only; use output policy "
                                 "'label-only'")
    gen = torch.Generator()
    if policy.seed is None:
        gen.seed()
    else:
        gen.manual_seed(policy.seed)
    screener = build_screener(settings.screening.detector, contract=contract, settings=settings)
    log.info("serving %s %s from %s", settings.name, version, settings.source)
    return ServedModel(name=settings.name, version=version, source=settings.source,
                       classifier=clf, policy=policy, contract=contract, screener=screener,
                       screen_action=settings.screening.action, generator=gen,
                       features=features)


def _model_columns(settings: ModelSettings, contract: TableContract, clf: Classifier
                   ) -> tuple[TableContract, tuple[str, ...]]:
    """The table contract cut to the model's columns, in the model's order (a label column
    the contract also describes is no input), and those columns."""
    import dataclasses

    names = settings.features or getattr(clf, "feature_names", None) or tuple(
        c.name for c in contract.columns)
    known = {c.name for c in contract.columns}
    missing = [n for n in names if n not in known]
    if missing:
        raise ConfigurationError(
            f"model {settings.name!r}: its contract has no column(s) {', '.join(missing[:10])} "
            "that the model takes; infer the contract from the model's training table")
    width = math.prod(clf.input_shape)
    if len(names) != width or len(clf.input_shape) != 1:
        raise ConfigurationError(
            f"model {settings.name!r} takes inputs of shape {tuple(clf.input_shape)} but its "
            f"table contract gives {len(names)} columns; name the model's columns in "
            "`features`")
    columns = tuple(contract.column(n) for n in names)
    return dataclasses.replace(contract, columns=columns), tuple(names)
