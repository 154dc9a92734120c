"""How the gateway turns errors into HTTP answers: a status, a code and a JSON body.

Every refusal is a JSON object ``{"error": CODE, "detail": WHAT AND WHAT TO DO}`` (plus
``violations`` for a contract violation); never a traceback.

>>> status, body, headers = problem_for(RateLimited("slow down", retry_after=1.2))
>>> status, body["error"], headers
(429, 'rate_limited', {'Retry-After': '2'})
"""

from __future__ import annotations

import json
import math
from typing import Any

from bastion.data.contracts import ContractFailed
from bastion.errors import (
    AccessDenied,
    AuthenticationError,
    BastionError,
    DataContractError,
    InputError,
    QueryBudgetExceeded,
    RateLimited,
)

__all__ = ["ClientDisconnected", "HTTPProblem", "json_bytes", "problem_for"]

_MAX_DETAIL = 500


class HTTPProblem(BastionError):
    """A refusal with its HTTP status and error code (raised inside the gateway only)."""

    def __init__(self, status: int, code: str, detail: str, *,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail
        self.headers = headers or {}


class ClientDisconnected(BastionError):
    """The client went away before its request was read (a client event, not a server
    error: audited and counted with status 499, never logged with a traceback)."""


def json_bytes(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), allow_nan=False).encode()


def problem_for(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """``(status, body, headers)`` for an exception raised while serving a request.

    ``detail`` is cut to 500 characters: a client's long input is never echoed whole."""
    status, body, headers = _problem(exc)
    detail = body.get("detail")
    if isinstance(detail, str) and len(detail) > _MAX_DETAIL:
        body["detail"] = detail[: _MAX_DETAIL - 1] + "…"
    return status, body, headers


def _problem(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    from bastion.monitor.state import StateUnavailable

    if isinstance(exc, ClientDisconnected):
        return 499, {"error": "client_closed_request", "detail": str(exc)}, {}
    if isinstance(exc, StateUnavailable):
        return 503, {"error": "backend_unavailable", "detail": "a backend the gateway needs "
                     "(shared state) is unreachable; retry later"}, {"Retry-After": "5"}
    if isinstance(exc, HTTPProblem):
        return exc.status, {"error": exc.code, "detail": exc.detail}, exc.headers
    if isinstance(exc, AuthenticationError):
        return 401, {"error": "unauthenticated", "detail": f"{exc}; send 'Authorization: "
                     "Bearer <key>' or 'X-API-Key: <key>' with a valid, unexpired key"}, \
            {"WWW-Authenticate": 'Bearer realm="bastion"'}
    if isinstance(exc, AccessDenied):
        return 403, {"error": "forbidden", "detail": f"{exc}; ask an administrator for a key "
                     "with this scope and resource"}, {}
    if isinstance(exc, RateLimited):
        wait = max(1, math.ceil(exc.retry_after))
        return 429, {"error": "rate_limited", "detail": f"{exc}; retry after {wait} s"}, \
            {"Retry-After": str(wait)}
    if isinstance(exc, QueryBudgetExceeded):
        retry = getattr(exc, "retry_after", None)
        headers = {"Retry-After": str(max(1, math.ceil(retry)))} if retry else {}
        return 429, {"error": "budget_exhausted", "detail": f"{exc}; this key's query budget is "
                     "spent: ask for a larger budget or a new key"}, headers
    if isinstance(exc, ContractFailed):
        report = exc.report
        return 422, {"error": "contract_violation",
                     "detail": f"{report.summary()}; fix the listed samples and resend",
                     "violations": [v.to_dict() for v in report.errors]}, {}
    if isinstance(exc, InputError | DataContractError):
        return 422, {"error": "invalid_input", "detail": str(exc)}, {}
    return 500, {"error": "internal", "detail": "the gateway failed on this request; the "
                 "operator's log has the details"}, {}
