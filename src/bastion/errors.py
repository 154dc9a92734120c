"""The one exception tree of bastion.

Every error bastion raises on purpose derives from :class:`BastionError`, so a caller can
catch everything with one clause, and the CLI turns each into a one-line message and a
non-zero exit code instead of a traceback. Errors raised by third-party code are translated
at the boundary (``raise ... from exc``) so the original stays attached as ``__cause__``.

::

    BastionError
    ├── ConfigurationError      a parameter or option is invalid (also a ValueError)
    ├── InputError              data has the wrong shape, dtype, range or labels (also a ValueError)
    ├── ModelError              a model could not be used
    │   ├── ModelLoadError      a model file could not be read or is of an unknown format
    │   └── CapabilityError     the model does not offer what is asked (gradients, scores)
    ├── QueryBudgetExceeded     a query budget on a model or an API key would be exceeded
    ├── RateLimited             too many requests in a time window (carries retry_after)
    ├── ArtifactError           a model or data artifact is unsafe, tampered with or unreadable
    │   ├── UnsafeArtifactError a scan found code that would run on load
    │   ├── SignatureError      a signature or digest does not verify
    │   └── DecryptionError     an encrypted object cannot be decrypted or was altered
    ├── RegistryError           a registry operation was refused (unknown name, failed gate)
    ├── AccessDenied            an identity lacks the permission for an action
    │   └── AuthenticationError no credential, or an unknown, expired or revoked one
    └── DataContractError       data violates a data contract
"""

from __future__ import annotations

__all__ = [
    "AccessDenied",
    "ArtifactError",
    "AuthenticationError",
    "BastionError",
    "CapabilityError",
    "ConfigurationError",
    "DataContractError",
    "DecryptionError",
    "InputError",
    "ModelError",
    "ModelLoadError",
    "QueryBudgetExceeded",
    "RateLimited",
    "RegistryError",
    "SignatureError",
    "UnsafeArtifactError",
    "brief",
]


class BastionError(Exception):
    """Base class of every error bastion raises on purpose."""


class ConfigurationError(BastionError, ValueError):
    """A parameter or option is invalid; the message names it and the accepted values."""


class InputError(BastionError, ValueError):
    """Input data has the wrong shape, dtype, value range or labels."""


class ModelError(BastionError):
    """A model could not be used."""


class ModelLoadError(ModelError):
    """A model file could not be read, or its format is unknown."""


class CapabilityError(ModelError):
    """The model does not offer what an operation needs (gradients, scores)."""


class QueryBudgetExceeded(BastionError):
    """A query budget would be exceeded; no query past the budget was made."""


class ArtifactError(BastionError):
    """A model or data artifact is unsafe, tampered with or unreadable."""


class UnsafeArtifactError(ArtifactError):
    """A scan found, or could not rule out, code that would run when the file is loaded."""


class SignatureError(ArtifactError):
    """A signature or digest does not verify."""


class DecryptionError(ArtifactError):
    """An encrypted object cannot be decrypted with the key given, or was altered."""


class RegistryError(BastionError):
    """A registry operation was refused."""


class AccessDenied(BastionError):
    """An identity lacks the permission for the action it attempted."""


class AuthenticationError(AccessDenied):
    """No credential, or one that is unknown, malformed, expired or revoked (HTTP 401)."""


class RateLimited(BastionError):
    """Too many requests in a time window; ``retry_after`` is the wait in seconds (HTTP 429)."""

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = float(retry_after)


class DataContractError(BastionError):
    """Data violates a data contract."""


def brief(exc: BaseException, limit: int = 300) -> str:
    """A one-line description of a third-party exception for an error message.

    Some libraries (TorchScript, onnxruntime) put a whole interpreter traceback in the message;
    the useful part is its last line.
    """
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[-1] if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
