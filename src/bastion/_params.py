"""``get_params`` and ``repr`` from the constructor's attributes, in scikit-learn's manner."""

from __future__ import annotations

from typing import Any

__all__ = ["ParamsRepr"]


class ParamsRepr:
    """Mixin: parameters are the public attributes set by ``__init__``.

    ``_private`` attributes and fitted ones (``name_``, set by ``fit``) are left out, so the
    repr shows how an object was configured, not what it learned.
    """

    def get_params(self) -> dict[str, Any]:
        return {
            k: v for k, v in vars(self).items() if not k.startswith("_") and not k.endswith("_")
        }

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in sorted(self.get_params().items()))
        return f"{type(self).__name__}({params})"
