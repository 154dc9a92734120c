"""The gateway's ASGI application (FastAPI): endpoints, the edge checks, error answers.

Endpoints: ``POST /v1/models/{name}/predict``, ``POST /v1/models/{name}/feedback``,
``GET /v1/models`` (the models the key may call; no file paths), ``GET /healthz``
(liveness), ``GET /readyz`` (models loaded, access database and state backend reachable:
200 or 503; the details only for a key allowed to ``read`` on ``*``), ``GET /metrics``
(Prometheus; a key allowed to ``read`` on ``*``), ``GET /openapi.json``. No interactive
docs pages are served (they would need scripts from a CDN).

:class:`EdgeMiddleware` (pure ASGI, in front of everything) refuses a ``Host`` that is not in
``server.allowed_hosts`` or is malformed (400), answers CORS preflights (an origin not in
``server.cors_origins`` is refused with 403), adds the secure headers to every answer
(``X-Content-Type-Options: nosniff``, ``Cache-Control: no-store``, ``X-Frame-Options: DENY``,
``Content-Security-Policy``, ``Referrer-Policy``; no ``Server`` banner) and counts each
request in the metrics.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from bastion.serve.config import GatewayPolicy
from bastion.serve.inputs import (
    ErrorBody,
    FeedbackRequest,
    FeedbackResponse,
    ModelInfo,
    PredictRequest,
    PredictResponse,
)
from bastion.serve.metrics import CONTENT_TYPE_LATEST
from bastion.serve.pipeline import Gateway, RequestContext, new_request_id
from bastion.serve.problems import ClientDisconnected, json_bytes, problem_for

__all__ = ["EdgeMiddleware", "create_app"]

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_SECURE_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-store"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
]
_ENDPOINTS = {"predict", "feedback"}


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(content=json_bytes(body), status_code=status, headers=headers,
                    media_type="application/json")


def _peer(request: Request) -> str:
    """The client's address (see :meth:`Gateway.client_address` for proxies)."""
    peer = request.client.host if request.client is not None else "-"
    gw: Gateway = request.app.state.gateway
    return gw.client_address(peer, request.headers)


_HOST_NAME = re.compile(r"^[a-z0-9_]([a-z0-9_.-]{0,252})$")


def _host_name(host: str) -> str | None:
    """The name in a ``Host`` header (``name``, ``name:port``, ``[v6]``, ``[v6]:port``), or
    None when the header is malformed."""
    host = host.strip().lower()
    if host.startswith("["):
        name, sep, rest = host[1:].partition("]")
        if not sep or (rest and not re.fullmatch(r":\d{1,5}", rest)):
            return None
        try:
            return str(ipaddress.IPv6Address(name))
        except ValueError:
            return None
    name, _, port = host.partition(":")
    if (port and not port.isdigit()) or ":" in port:
        return None
    return name if _HOST_NAME.match(name) else None


def _host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    name = _host_name(host)
    if name is None:
        return False
    for pattern in allowed:
        if pattern.startswith("["):
            pattern = pattern.strip("[]")
        if pattern == name or (pattern.startswith("*.") and name.endswith(pattern[1:])):
            return True
    return False


class EdgeMiddleware:
    """Host check, CORS, secure headers and request metrics (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, gateway: Gateway) -> None:
        self.app, self.gateway = app, gateway
        server = gateway.policy.server
        self.allowed_hosts = server.allowed_hosts
        self.origins = frozenset(server.cors_origins)

    @staticmethod
    def _endpoint(path: str) -> tuple[str, str]:
        parts = path.strip("/").split("/")
        if len(parts) == 4 and parts[:2] == ["v1", "models"] and parts[3] in _ENDPOINTS:
            return parts[3], parts[2]
        if path in ("/v1/models", "/healthz", "/readyz", "/metrics", "/openapi.json"):
            return path.strip("/").replace("v1/", ""), "-"
        return "other", "-"

    async def _reply(self, send: Send, status: int, body: dict[str, Any],
                     extra: list[tuple[bytes, bytes]] | None = None) -> None:
        data = json_bytes(body)
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(data)).encode()), *_SECURE_HEADERS,
                   *(extra or [])]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        headers = dict(scope.get("headers") or ())
        endpoint, model = self._endpoint(scope.get("path", ""))
        if model != "-" and model not in self.gateway.models:
            model = "unknown"
        metrics = self.gateway.metrics
        status_box = [500]

        def done() -> None:
            metrics.requests.labels(endpoint, model, str(status_box[0])).inc()
            metrics.latency.labels(endpoint).observe(time.perf_counter() - start)

        host = headers.get(b"host", b"").decode("latin-1")
        if not _host_allowed(host, self.allowed_hosts):
            status_box[0] = 400
            await self._reply(send, 400, {"error": "bad_host", "detail":
                                          f"Host {host!r} is not served here; use one of "
                                          f"{list(self.allowed_hosts)} (server.allowed_hosts)"})
            done()
            return
        origin = headers.get(b"origin", b"").decode("latin-1")
        cors: list[tuple[bytes, bytes]] = []
        if origin:
            allowed = origin.rstrip("/") in self.origins
            if scope["method"] == "OPTIONS" and b"access-control-request-method" in headers:
                status_box[0] = 204 if allowed else 403
                if not allowed:
                    await self._reply(send, 403, {"error": "cors_origin_refused", "detail":
                                                  f"origin {origin!r} may not call this API; "
                                                  "list it in server.cors_origins"})
                else:
                    await send({"type": "http.response.start", "status": 204, "headers": [
                        (b"access-control-allow-origin", origin.encode("latin-1")),
                        (b"access-control-allow-methods", b"GET, POST"),
                        (b"access-control-allow-headers",
                         b"authorization, x-api-key, content-type"),
                        (b"access-control-max-age", b"600"), (b"vary", b"Origin"),
                        *_SECURE_HEADERS]})
                    await send({"type": "http.response.body", "body": b""})
                done()
                return
            if allowed:
                cors = [(b"access-control-allow-origin", origin.encode("latin-1")),
                        (b"vary", b"Origin")]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_box[0] = int(message["status"])
                raw = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"server"]
                message["headers"] = raw + _SECURE_HEADERS + cors
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            done()


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {400: "bad request", 401: "no or invalid API key", 403: "key lacks the permission",
            404: "unknown model or request", 409: "feature disabled", 413: "body too large",
            415: "body is not application/json", 422: "invalid input or contract violation",
            429: "rate limit or query budget exceeded (see Retry-After)"}
    return {c: {"model": ErrorBody, "description": text[c]} for c in codes}


def _body_schema(model: type[Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": model.model_json_schema(ref_template="#/components/schemas/{model}")}}}}


def create_app(policy: GatewayPolicy | None = None, *, gateway: Gateway | None = None,
               **gateway_kwargs: Any) -> FastAPI:
    """The FastAPI app serving ``policy`` (or an already built ``gateway``).

    ``gateway_kwargs`` go to :class:`~bastion.serve.pipeline.Gateway` (``access=``,
    ``state=``, ``models=``, ``alert_sinks=``). The gateway is ``app.state.gateway``; it is
    closed (monitors drained, audit flushed) when the app shuts down.
    """
    if gateway is None:
        if policy is None:
            raise TypeError("create_app needs a policy or a gateway")
        gateway = Gateway(policy, **gateway_kwargs)
    gw = gateway

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        gw.close()

    app = FastAPI(title="bastion gateway", version="1", docs_url=None, redoc_url=None,
                  lifespan=lifespan,
                  description="Secure prediction gateway: keys, limits, contracts, screening, "
                              "output hardening, monitoring and an audit log for every request.")
    app.state.gateway = gw

    wait = gw.policy.access.audit_wait

    async def run(ctx: RequestContext, work: Callable[[], Awaitable[Any]]) -> Response:
        status, headers = 200, None
        try:
            body = await work()
            committed = gw.record(ctx, 200, None)
        except Exception as exc:
            status, body, headers = problem_for(exc)
            if isinstance(exc, ClientDisconnected):
                log.info("request %s: %s", ctx.request_id, exc)
            elif status >= 500 and status != 503:
                log.exception("request %s failed", ctx.request_id)
            elif status == 503:
                log.warning("request %s: %s", ctx.request_id, exc)
            committed = gw.record(ctx, status, body["error"], body.get("detail"))
        if committed is not None and gw.audit is not None and gw.audit.durable:
            try:  # durable audit: answer only once the entry is committed
                await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(committed)), wait)
            except Exception as exc:  # timeout or database error: the entry stays queued
                log.error("request %s: audit entry not committed within %g s: %s",
                          ctx.request_id, wait, type(exc).__name__)
                status, headers = 503, {"Retry-After": "5"}
                body = {"error": "audit_unavailable", "detail": "the audit log cannot be "
                        "written; the request was not confirmed, retry later"}
        return _json(status, body, {**(headers or {}), "X-Request-Id": ctx.request_id})

    def stream(request: Request) -> AsyncIterator[bytes]:
        return request.stream()

    @app.post("/v1/models/{name}/predict", response_model=PredictResponse,
              responses=_responses(400, 401, 403, 404, 413, 415, 422, 429),
              openapi_extra=_body_schema(PredictRequest), summary="Predict a batch")
    async def predict(name: str, request: Request) -> Response:
        ctx = RequestContext(new_request_id(), "predict", f"model:{name}", _peer(request))
        return await run(ctx, lambda: gw.predict(name, request.headers, stream(request), ctx))

    @app.post("/v1/models/{name}/feedback", response_model=FeedbackResponse,
              responses=_responses(400, 401, 403, 404, 409, 413, 415, 422, 429),
              openapi_extra=_body_schema(FeedbackRequest), summary="Report true labels")
    async def feedback(name: str, request: Request) -> Response:
        ctx = RequestContext(new_request_id(), "feedback", f"model:{name}", _peer(request))
        return await run(ctx, lambda: gw.feedback(name, request.headers, stream(request), ctx))

    @app.get("/v1/models", response_model=list[ModelInfo], responses=_responses(401),
             summary="Models this key may use")
    async def list_models(request: Request) -> Response:
        ctx = RequestContext(new_request_id(), "list_models", None, _peer(request))

        async def work() -> Any:
            return gw.list_models(request.headers, ctx)

        return await run(ctx, work)

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness", responses={503: {"description": "not ready"}})
    async def readyz(request: Request) -> Response:
        checks = await asyncio.to_thread(gw.ready)
        code = 200 if checks["ready"] else 503
        if "authorization" not in request.headers and "x-api-key" not in request.headers:
            return _json(code, {"ready": checks["ready"]})  # a probe: no details
        ctx = RequestContext(new_request_id(), "readyz", "*", _peer(request))

        async def work() -> Any:
            gw.operator(request.headers, ctx)
            return checks

        response = await run(ctx, work)
        if response.status_code == 200:
            response.status_code = code
        return response

    @app.get("/metrics", summary="Prometheus metrics (a key allowed to read on '*')",
             response_class=Response, responses=_responses(401, 403))
    async def metrics(request: Request) -> Response:
        ctx = RequestContext(new_request_id(), "metrics", "*", _peer(request))

        async def work() -> Any:
            gw.operator(request.headers, ctx)
            return None

        response = await run(ctx, work)
        if response.status_code != 200:
            return response
        return Response(gw.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _json(exc.status_code, {"error": code, "detail": str(exc.detail)},
                     dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return _json(422, {"error": "invalid_input", "detail": "the request does not match the "
                           "API", "violations": [
                               {"loc": [str(p) for p in e.get("loc", ())], "message": e.get("msg")}
                               for e in exc.errors()]})

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        status, body, headers = problem_for(exc)
        return _json(status, body, headers)

    app.add_middleware(EdgeMiddleware, gateway=gw)
    return app
