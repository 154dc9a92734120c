"""The gateway's policy: a YAML file loaded into a frozen, validated :class:`GatewayPolicy`.

Every key is documented in ``examples/gateway-policy.yaml``. Unknown keys are refused (a typo
must not silently turn a protection off) and every error names the key and the bad value::

    >>> from bastion.serve.config import parse_policy
    >>> p = parse_policy('''
    ... models:
    ...   - name: digits
    ...     path: model.pt
    ...     input_shape: [1, 8, 8]
    ...     output: {policy: top-k, k: 3}
    ... ''')
    >>> p.server.host, p.models[0].output.describe(), p.limits.rate
    ('127.0.0.1', 'topk(k=3)', 10.0)
    >>> parse_policy("models: []\\nserver: {port: 99999}")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    bastion.errors.ConfigurationError: invalid gateway policy: server.port: ...; models: ...

Paths in the file (model paths, contracts, references, trusted keys) are resolved relative to
the directory of the policy file.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bastion.defences.output import (
    GaussianNoise,
    Identity,
    LabelOnly,
    OutputPolicy,
    ReverseSigmoid,
    Rounding,
    TopK,
)
from bastion.errors import ConfigurationError

__all__ = [
    "AccessSettings",
    "DriftSettings",
    "ExtractionSettings",
    "GatewayPolicy",
    "LimitSettings",
    "ModelSettings",
    "MonitoringSettings",
    "OutputSettings",
    "PerformanceSettings",
    "RegistrySettings",
    "ScreeningSettings",
    "ServerSettings",
    "WebhookSettings",
    "load_policy",
    "parse_policy",
]

OUTPUT_POLICIES = ("identity", "top-k", "rounding", "label-only", "noise", "reverse-sigmoid")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


class ServerSettings(_Frozen):
    """Where and how the gateway listens."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    allowed_hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int | None = Field(default=None, ge=64, le=1 << 30)
    max_batch: int = Field(default=256, ge=1, le=1_000_000)
    trusted_proxies: tuple[str, ...] = ()
    header_timeout: float = Field(default=10.0, gt=0, le=3600)
    body_timeout: float = Field(default=30.0, gt=0, le=3600)
    keep_alive_timeout: float = Field(default=5.0, gt=0, le=3600)
    max_connections: int = Field(default=256, ge=1, le=1_000_000)

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for p in v:
            try:
                ipaddress.ip_network(p, strict=False)
            except ValueError:
                raise ValueError(f"{p!r} is not an IP address or network (e.g. 10.0.0.0/8)"
                                 ) from None
        return v

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("list at least one host name (e.g. localhost)")
        return tuple(h.lower() for h in v)

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for o in v:
            if o == "*":
                raise ValueError("'*' is refused: list the exact origins allowed to call the API")
            if not o.startswith(("http://", "https://")):
                raise ValueError(f"origin {o!r} must look like https://app.example.com")
        return tuple(o.rstrip("/") for o in v)


class RegistrySettings(_Frozen):
    """The model registry the models are pulled from (see ``bastion registry``)."""

    metadata_url: str | None = None
    storage_url: str | None = None
    actor: str = "gateway"
    trusted_keys: tuple[str, ...] = ()


class OutputSettings(_Frozen):
    """What the API answers (``bastion.defences.output``)."""

    policy: Literal["identity", "top-k", "rounding", "label-only", "noise",
                    "reverse-sigmoid"] = "identity"
    k: int = Field(default=1, ge=1)
    decimals: int = Field(default=2, ge=0, le=12)
    sigma: float = Field(default=0.05, gt=0, lt=1e9)
    seed: int | None = None
    beta: float = Field(default=1.0, gt=0)
    gamma: float = Field(default=0.1, gt=0)

    def build(self) -> OutputPolicy:
        """The :class:`~bastion.defences.output.OutputPolicy` object."""
        if self.policy == "top-k":
            return TopK(k=self.k)
        if self.policy == "rounding":
            return Rounding(decimals=self.decimals)
        if self.policy == "label-only":
            return LabelOnly()
        if self.policy == "noise":
            return GaussianNoise(sigma=self.sigma, seed=self.seed)
        if self.policy == "reverse-sigmoid":
            return ReverseSigmoid(beta=self.beta, gamma=self.gamma)
        return Identity()

    def describe(self) -> str:
        return self.build().describe()


class ScreeningSettings(_Frozen):
    """Optional out-of-distribution / adversarial-input screening before the model runs.

    ``detector``: ``none``; ``contract`` (the input contract's Mahalanobis outlier model: a
    sample far from the reference is out of distribution); or ``package.module:factory``, a
    callable ``factory(model_settings) -> Screener`` (see :mod:`bastion.serve.screening`).
    ``action``: ``reject`` answers 422 naming the samples, ``flag`` serves them and counts them.
    """

    detector: str = "none"
    action: Literal["reject", "flag"] = "reject"

    @field_validator("detector")
    @classmethod
    def _detector(cls, v: str) -> str:
        if v not in ("none", "contract") and ":" not in v:
            raise ValueError(f"{v!r} is not 'none', 'contract' or 'package.module:factory'")
        return v


class ModelSettings(_Frozen):
    """One served model: from the registry (``alias``/``version``) or a local file (``path``)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
    alias: str | None = "champion"
    version: int | None = Field(default=None, ge=1)
    path: str | None = None
    input_shape: tuple[int, ...] | None = None
    num_classes: int | None = Field(default=None, ge=2)
    bounds: tuple[float, float] = (0.0, 1.0)
    factory: str | None = None
    factory_kwargs: dict[str, Any] = Field(default_factory=dict)
    device: str = "cpu"
    contract: str | None = None
    #: a tabular model's input columns, in its order (default: the names its file records,
    #: else the table contract's columns); requests may then send ``records`` by name
    features: tuple[str, ...] | None = None
    output: OutputSettings = OutputSettings()
    screening: ScreeningSettings = ScreeningSettings()

    @field_validator("factory_kwargs", mode="before")
    @classmethod
    def _no_kwargs(cls, v: Any) -> Any:
        return {} if v is None else v  # `factory_kwargs: null`, as for TorchScript or ONNX

    @model_validator(mode="after")
    def _some_source(self) -> ModelSettings:
        if self.path is None and self.version is None and self.alias is None:
            raise ValueError(
                f"model {self.name!r} needs a registry `alias`, a pinned `version` or a local "
                "`path`; all three are null"
            )
        return self

    @field_validator("input_shape")
    @classmethod
    def _shape(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is not None and (not v or any(s <= 0 for s in v)):
            raise ValueError(f"must be positive sizes, e.g. [1, 28, 28]; got {list(v)}")
        return v

    @field_validator("bounds")
    @classmethod
    def _bounds(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not v[0] < v[1]:
            raise ValueError(f"must be [low, high] with low < high, got {list(v)}")
        return v

    @field_validator("factory")
    @classmethod
    def _factory(cls, v: str | None) -> str | None:
        if v is not None and (":" not in v or v.startswith(":") or v.endswith(":")):
            raise ValueError(f"must look like 'package.module:function', got {v!r}")
        return v

    @property
    def source(self) -> str:
        if self.path is not None:
            return f"file:{self.path}"
        ref = f"v{self.version}" if self.version is not None else self.alias
        return f"registry:{self.name}@{ref}"


class LimitSettings(_Frozen):
    """Per-key limits: a token bucket of ``rate`` requests/s (``burst`` at once) and a budget
    of ``budget`` inputs (rows) per ``budget_window`` seconds (``null``: for the key's life).
    ``auth_failures``: failed authentications per client address and minute (per replica)
    after which that address's further *failures* get 429 until the minute is over (a
    request with a valid key is never refused for them)."""

    rate: float = Field(default=10.0, gt=0)
    burst: int = Field(default=20, ge=1)
    budget: int = Field(default=10_000, ge=1)
    budget_window: float | None = Field(default=None, gt=0)
    auth_failures: int = Field(default=30, ge=1)


class DriftSettings(_Frozen):
    """Input drift over windows of ``window`` inputs.

    ``method``: ``contract`` (KS tests of the contract's per-sample features with
    Benjamini–Hochberg control, no reference file needed) or ``ks`` / ``mmd`` / ``psi``
    (``bastion.monitor.drift``, calibrated on the ``reference`` file: ``.npy`` / ``.npz``).
    """

    enabled: bool = True
    window: int = Field(default=500, ge=20)
    method: Literal["contract", "ks", "mmd", "psi"] = "contract"
    reference: str | None = None
    p_value: float = Field(default=0.05, gt=0, lt=1)


class ExtractionSettings(_Frozen):
    """PRADA extraction detection per key and model (``bastion.monitor.extraction``):
    ``threshold`` is the Shapiro–Wilk ``W`` below which a key is flagged, ``min_queries`` the
    distances needed before a key is judged (``null``: the detector's defaults); ``per_owner``
    also judges each owner's stream over all its keys (splitting queries over keys does not
    hide them)."""

    enabled: bool = True
    threshold: float | None = Field(default=None, gt=0, lt=1)
    min_queries: int | None = Field(default=None, ge=3)
    per_owner: bool = True


class PerformanceSettings(_Frozen):
    """Accuracy on delayed labels (``POST /v1/models/{name}/feedback``)."""

    enabled: bool = False
    window: int = Field(default=200, ge=10)
    baseline_accuracy: float = Field(default=0.9, gt=0, le=1)
    tolerance: float = Field(default=0.05, ge=0, lt=1)


class WebhookSettings(_Frozen):
    url: str = Field(pattern=r"^https?://")
    timeout: float = Field(default=2.0, gt=0)
    retries: int = Field(default=2, ge=0, le=10)


class MonitoringSettings(_Frozen):
    drift: DriftSettings = DriftSettings()
    extraction: ExtractionSettings = ExtractionSettings()
    performance: PerformanceSettings = PerformanceSettings()
    webhook: WebhookSettings | None = None
    dedup_seconds: float = Field(default=300.0, ge=0)


class AccessSettings(_Frozen):
    """Identities, keys and the audit log (``bastion.access``)."""

    # Same default as `bastion keys/users`: $BASTION_ACCESS_DB, else ./bastion-access.db.
    url: str = Field(
        default_factory=lambda: os.environ.get("BASTION_ACCESS_DB") or "sqlite:///bastion-access.db"
    )
    cache_ttl: float = Field(default=5.0, ge=0)
    audit: bool = True
    audit_mode: Literal["durable", "batched"] = "durable"
    audit_wait: float = Field(default=10.0, gt=0, le=600)
    audit_fsync: bool = False
    anonymous_window: float = Field(default=60.0, gt=0, le=86_400)


class GatewayPolicy(_Frozen):
    """The whole policy (see the module docstring and ``examples/gateway-policy.yaml``)."""

    version: Literal[1] = 1
    server: ServerSettings = ServerSettings()
    models: tuple[ModelSettings, ...]
    registry: RegistrySettings = RegistrySettings()
    limits: LimitSettings = LimitSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    access: AccessSettings = Field(default_factory=AccessSettings)
    state_url: str = "memory://"

    @field_validator("models")
    @classmethod
    def _models(cls, v: tuple[ModelSettings, ...]) -> tuple[ModelSettings, ...]:
        if not v:
            raise ValueError("serve at least one model")
        names = [m.name for m in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique; repeated: {dupes}")
        return v

    @field_validator("state_url")
    @classmethod
    def _state(cls, v: str) -> str:
        if v not in ("memory", "memory://") and not v.startswith(("redis://", "rediss://")):
            raise ValueError(f"must be 'memory://' or 'redis://HOST:PORT/DB', got {v!r}")
        return v

    @model_validator(mode="after")
    def _drift_needs(self) -> GatewayPolicy:
        d = self.monitoring.drift
        if d.enabled and d.method != "contract" and d.reference is None:
            raise ValueError(f"monitoring.drift.method {d.method!r} needs a reference file")
        return self

    def model(self, name: str) -> ModelSettings:
        for m in self.models:
            if m.name == name:
                return m
        raise ConfigurationError(f"the policy serves no model named {name!r}")


def _where(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def _validate(data: Any) -> GatewayPolicy:
    if not isinstance(data, dict):
        raise ConfigurationError("the gateway policy must be a YAML mapping with a 'models' key")
    try:
        return GatewayPolicy.model_validate(data)
    except ValidationError as exc:
        parts = []
        for err in exc.errors(include_url=False):
            loc = _where(tuple(err.get("loc", ())))
            msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            if err.get("type") == "extra_forbidden":
                msg = "unknown key (see examples/gateway-policy.yaml for the keys)"
            elif "input" in err and err.get("type") not in ("missing",):
                msg = f"{msg} (got {err['input']!r})"
            parts.append(f"{loc}: {msg}")
        raise ConfigurationError("invalid gateway policy: " + "; ".join(parts)) from None


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    def fix(value: Any) -> Any:
        if isinstance(value, str) and value and not os.path.isabs(value):
            return str(base / value)
        return value

    for m in data.get("models") or []:
        if isinstance(m, dict):
            for key in ("path", "contract"):
                if key in m:
                    m[key] = fix(m[key])
    mon = data.get("monitoring")
    if isinstance(mon, dict) and isinstance(mon.get("drift"), dict) and "reference" in mon["drift"]:
        mon["drift"]["reference"] = fix(mon["drift"]["reference"])
    reg = data.get("registry")
    if isinstance(reg, dict) and isinstance(reg.get("trusted_keys"), list):
        reg["trusted_keys"] = [fix(k) for k in reg["trusted_keys"]]


def parse_policy(text: str, *, base_dir: str | os.PathLike[str] | None = None) -> GatewayPolicy:
    """Validate a policy given as YAML text (relative paths resolved against ``base_dir``)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"the gateway policy is not valid YAML: {exc}") from exc
    if base_dir is not None and isinstance(data, dict):
        _resolve_paths(data, Path(base_dir))
    return _validate(data)


def load_policy(path: str | os.PathLike[str]) -> GatewayPolicy:
    """Read and validate the policy file at ``path``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read the gateway policy {p}: {exc}") from exc
    try:
        return parse_policy(text, base_dir=p.resolve().parent)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{p}: {exc}") from None
