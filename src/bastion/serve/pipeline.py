"""The prediction pipeline: every request goes through the same stages, in this order.

1. authenticate (``Authorization: Bearer <key>`` or ``X-API-Key: <key>``) -> 401; once an
   address has ``limits.auth_failures`` failed attempts in a minute, its further *failures*
   get 429 for the rest of that minute (a valid key from the same address is still served:
   one client's guessing never locks out others behind the same proxy). The address is the
   peer's, or the ``X-Forwarded-For`` client when the peer is in ``server.trusted_proxies``
2. authorise ``predict`` on ``model:NAME`` -> 403
3. rate limit (token bucket per key) -> 429 with ``Retry-After``; per-key query budget: the
   first input of the request is charged here, so a spent key is refused before its body is
   read, the rest after parsing -> 429
4. body size cap (``server.max_body_bytes``; by default sized to ``server.max_batch``
   samples of the model): ``Content-Length`` checked first, then the bytes counted while
   streaming; reading stops at the cap -> 413; a body that is not ``application/json``, or
   has a ``Content-Encoding`` -> 415; a body not received within ``server.body_timeout``
   -> 408; a client that disconnects mid-body is recorded as a client event (499)
5. parse JSON only, never unpickle (:mod:`bastion.serve.inputs`; a tabular model with a table
   contract also takes ``records`` keyed by feature name) -> 422; a large body is
   parsed in a worker thread (the event loop keeps serving), and a batch over
   ``server.max_batch`` is refused as soon as the JSON is decoded. A request refused after
   its body was read is charged to the key's budget for the samples it carried (up to
   ``max_batch``)
6. input contract validation, every violation listed -> 422
7. optional screening (:mod:`bastion.serve.screening`) -> 422 or flagged
8. predict, batched, under ``torch.inference_mode``
9. output hardening policy (:mod:`bastion.defences.output`)
10. monitoring (queued for the background thread: drift, PRADA, performance)
11. audit entry: with ``access.audit_mode: durable`` (the default) the answer is sent only
    once its entry is committed (concurrent requests share one commit: group commit); with
    ``batched`` it is queued and written within 0.2 s (a crash can lose that much)

Every request, refused or served, gets one audit entry (actor, action, resource, outcome,
status, request id, samples) and one count in ``bastion_requests_total`` -- except refusals
of requests without a valid key: per client address and ``access.anonymous_window`` the first
gets its entry and the others are counted into one ``refused_unauthenticated`` entry when
the window closes, so keyless traffic cannot grow the audit log without bound.

Lifetime budgets (``limits.budget_window: null``) with in-memory state are persisted in the
access database, in the same transaction as the audit entries, and reloaded at start; with
Redis state they live in Redis (enable its persistence: AOF or RDB snapshots).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import math
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
import numpy as np
from starlette.requests import ClientDisconnect

from bastion.data.contracts import ContractFailed, TensorContract, validate
from bastion.errors import (
    AccessDenied,
    AuthenticationError,
    ConfigurationError,
    InputError,
    RateLimited,
)
from bastion.serve.config import GatewayPolicy
from bastion.serve.inputs import parse_feedback, parse_inputs, short
from bastion.serve.metrics import GatewayMetrics
from bastion.serve.models import ServedModel, load_served_model
from bastion.serve.monitoring import ModelMonitor, MonitorWorker, PredictEvent
from bastion.serve.problems import ClientDisconnected, HTTPProblem

__all__ = ["Gateway", "RequestContext"]

log = logging.getLogger(__name__)
_MAX_OWNERS = 100_000
_AUTH_WINDOW = 60.0
_THREAD_PARSE_BYTES = 32_768  # bodies above this are parsed off the event loop
_BYTES_PER_NUMBER = 24  # JSON text of one float32 ("0.12345679104328156, ")


@dataclass
class RequestContext:
    """What the audit entry of a request records; filled in as the stages pass."""

    request_id: str
    action: str
    resource: str | None
    peer: str = "-"
    actor: str = "anonymous"
    client: str = "-"
    samples: int = 0
    charged: int = 0  # budget units this request spent
    details: dict[str, Any] = field(default_factory=dict)


def _token(headers: Mapping[str, str]) -> str | None:
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise AuthenticationError("the Authorization header must be 'Bearer <key>'")
        return value.strip()
    key = headers.get("x-api-key")
    return key.strip() if key else None


def tensor_conforms(x: np.ndarray, contract: TensorContract) -> bool:
    """True when ``x`` breaks none of the contract's error rules (a vectorised fast path).

    The same rules as :func:`bastion.data.contracts.validate` with ``distribution=False``
    checks at error severity: dtype, shape, NaN, range (widened by ``range_tolerance``) and,
    when the contract forbids them, exact duplicates. Only when this says no does the gateway
    run the full validation, which lists every violation for the 422 answer.
    """
    if str(x.dtype) != contract.dtype or x.ndim != len(contract.shape):
        return False
    if any(e is not None and e != a for e, a in zip(contract.shape, x.shape, strict=True)):
        return False
    n = x.shape[0]
    if n == 0:
        return True
    span = contract.max - contract.min
    lo = contract.min - contract.range_tolerance * span
    hi = contract.max + contract.range_tolerance * span
    if contract.allow_nan:
        xf = x.astype(np.float64, copy=False)
        with np.errstate(invalid="ignore"):
            bad = bool(((xf < lo) | (xf > hi)).any())  # NaN compares false: not a range error
        if bad:
            return False
    else:
        mn, mx = float(x.min()), float(x.max())
        if not (lo <= mn and mx <= hi):  # NaN fails both comparisons
            return False
    if not contract.allow_duplicates and n > 1:
        flat = x.reshape(n, -1)
        if np.unique(flat, axis=0).shape[0] < n:
            return False
    return True


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds")


class AnonymousRefusals:
    """Counts refusals of requests without a valid key per client address and window.

    :meth:`admit` says whether a refusal gets an audit entry of its own (the first of its
    address in a window) or is only counted; :meth:`expired` returns the aggregate entries of
    the windows that are over (all of them with ``everything=True``). At most ``max_clients``
    addresses are tracked; beyond that refusals are counted under the address ``*``.
    """

    def __init__(self, window: float, *, max_clients: int = 10_000,
                 clock: Any = time.time) -> None:
        self.window, self.max_clients, self._clock = window, max_clients, clock
        # address -> (window start, error codes of the refusals after the first), by start
        self._open: OrderedDict[str, tuple[float, Counter[str]]] = OrderedDict()

    def admit(self, client: str, error: str) -> bool:
        """Record one refusal; True when it opens a window (audit it alone). Call
        :meth:`expired` first, so that a window that is over is closed before."""
        hit = self._open.get(client)
        if hit is None and len(self._open) >= self.max_clients:
            client = "*"
            hit = self._open.get(client)
        if hit is None:
            self._open[client] = (self._clock(), Counter())
            return True
        hit[1][error] += 1
        return False

    def expired(self, *, everything: bool = False) -> list[dict[str, Any]]:
        """Aggregate audit records of closed windows (oldest first); they are forgotten."""
        now = self._clock()
        out = []
        while self._open:
            client, (start, codes) = next(iter(self._open.items()))
            if not everything and now - start < self.window:
                break
            del self._open[client]
            if codes:
                out.append({"actor": "anonymous", "action": "refused_unauthenticated",
                            "resource": None, "outcome": "denied",
                            "details": {"client": client, "count": sum(codes.values()),
                                        "errors": dict(codes), "from": _iso(start),
                                        "to": _iso(min(now, start + self.window))}})
        return out


class Gateway:
    """Runtime state of one gateway: models, access store, limits, monitors, audit, metrics.

    Built from a :class:`~bastion.serve.config.GatewayPolicy`; ``access``, ``state``,
    ``models`` and ``alert_sinks`` can be given to share or replace the defaults (tests,
    several replicas in one process). Models are loaded here, once: a model that cannot be
    loaded stops the start with a :class:`~bastion.errors.ConfigurationError`.
    """

    def __init__(self, policy: GatewayPolicy, *, access: Any | None = None,
                 state: Any | None = None, models: Mapping[str, ServedModel] | None = None,
                 alert_sinks: list[Any] | None = None) -> None:
        from bastion.access import AccessStore, AuditWriter
        from bastion.monitor.alerts import AlertManager, LogSink, WebhookSink
        from bastion.monitor.limits import QueryBudget, RateLimiter
        from bastion.monitor.state import InMemoryState, open_state

        self.policy = policy
        self.metrics = GatewayMetrics()
        self._owns_access = access is None
        self.access = access if access is not None else AccessStore(
            policy.access.url, cache_ttl=policy.access.cache_ttl, audit_decisions="none",
            audit_fsync=policy.access.audit_fsync)
        self._owns_state = state is None
        self.state = state if state is not None else open_state(policy.state_url)
        lim = policy.limits
        self.limiter = RateLimiter(self.state, rate=lim.rate, burst=lim.burst)
        self.budget = QueryBudget(self.state, limit=lim.budget, window=lim.budget_window)
        self.audit = AuditWriter(self.access.audit,
                                 durable=policy.access.audit_mode == "durable") \
            if policy.access.audit else None
        self.anonymous = AnonymousRefusals(policy.access.anonymous_window)
        self._proxies = tuple(ipaddress.ip_network(p, strict=False)
                              for p in policy.server.trusted_proxies)
        self._persist_budget = lim.budget_window is None and isinstance(self.state, InMemoryState)
        if self._persist_budget:
            self._load_budgets()
        sinks = list(alert_sinks) if alert_sinks is not None else [LogSink()]
        hook = policy.monitoring.webhook
        if hook is not None:
            sinks.append(WebhookSink(hook.url, timeout=hook.timeout, retries=hook.retries))
        self.alerts = AlertManager(sinks, self.state, dedup_seconds=policy.monitoring.dedup_seconds)
        self.models: dict[str, ServedModel] = dict(models) if models is not None else {
            m.name: load_served_model(m, policy.registry) for m in policy.models}
        missing = sorted({m.name for m in policy.models} - set(self.models))
        if missing:
            raise ConfigurationError(f"models {missing} of the policy were not loaded")
        self.monitors = {
            name: ModelMonitor.build(policy, policy.model(name), served.contract,
                                     state=self.state, alerts=self.alerts, metrics=self.metrics)
            for name, served in self.models.items()}
        self.worker = MonitorWorker(self._monitor, self.metrics)
        self._owners: OrderedDict[str, str] = OrderedDict()  # request id -> client
        self._closed = False
        self._auth_failures: dict[str, tuple[int, float]] = {}  # peer -> (failures, since)
        self.body_caps = {name: self._body_cap(m) for name, m in self.models.items()}
        for name in self.models:
            self.metrics.loaded.labels(name).set(1)

    def _body_cap(self, served: ServedModel) -> int:
        """``server.max_body_bytes``, or room for ``max_batch`` samples of JSON text."""
        server = self.policy.server
        if server.max_body_bytes is not None:
            return server.max_body_bytes
        per_sample = math.prod(served.input_shape) * _BYTES_PER_NUMBER + 16
        return server.max_batch * per_sample + 1024

    def _load_budgets(self) -> None:
        """Seed in-memory lifetime budgets from the access database (see module doc)."""
        if self.audit is None:
            raise ConfigurationError(
                "a lifetime query budget (limits.budget_window: null) with in-memory state is "
                "persisted with the audit log: turn access.audit on, set a budget_window, or "
                "keep state in Redis (state_url, with Redis persistence enabled)")
        for name, used in self.access.audit.counters(f"{self.budget.namespace}:").items():
            self.state.incr(name, used)

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        """Flush the monitors and the audit log; release what the gateway opened (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.worker.drain()
        self.worker.close()
        if self.audit is not None:
            for record in self.anonymous.expired(everything=True):
                self.audit.submit(**record)
            self.audit.close()
        self.alerts.close()
        if self._owns_state:
            self.state.close()
        if self._owns_access:
            self.access.close()

    def drain(self) -> None:
        """Wait until monitoring has seen every request so far and the audit log is written."""
        self.worker.drain()
        if self.audit is not None:
            for record in self.anonymous.expired(everything=True):
                self.audit.submit(**record)
            self.audit.flush()

    def ready(self) -> dict[str, Any]:
        """Readiness: models loaded, the access database and the state backend reachable."""
        checks: dict[str, Any] = {"models": {n: m.version for n, m in self.models.items()}}
        try:
            self.access.audit.head()
            checks["access_db"] = "ok"
        except Exception as exc:  # any driver error means not ready
            checks["access_db"] = f"unreachable: {type(exc).__name__}"
        try:
            ping = getattr(self.state, "ping", None)
            if ping is not None:
                ping()
            checks["state"] = "ok"
        except Exception as exc:
            checks["state"] = f"unreachable: {type(exc).__name__}"
        checks["ready"] = bool(self.models) and checks["access_db"] == "ok" \
            and checks["state"] == "ok"
        return checks

    def client_address(self, peer: str, headers: Mapping[str, str]) -> str:
        """The client's address: the peer's, or -- when the peer is a trusted proxy -- the
        nearest ``X-Forwarded-For`` address that is not itself a trusted proxy."""
        if not self._proxies or not self._trusted(peer):
            return peer
        hops = [h.strip() for h in headers.get("x-forwarded-for", "").split(",") if h.strip()]
        for hop in reversed(hops):
            if not self._trusted(hop):
                return hop[:64]
        return peer

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self._proxies)

    # -- stages ----------------------------------------------------------------------------
    def _stage(self, stage: str, t0: float) -> float:
        t1 = time.perf_counter()
        self.metrics.observe_stage(stage, t1 - t0)
        return t1

    def authenticate(self, headers: Mapping[str, str], ctx: RequestContext) -> Any:
        """The caller's principal. Failures are counted per address; past
        ``limits.auth_failures`` in a minute a failure is answered 429 instead of 401. A
        valid key is never refused for the failures of others at the same address."""
        try:
            principal = self.access.authenticate(_token(headers))
        except AuthenticationError:
            now = time.monotonic()
            count, since = self._auth_failures.get(ctx.peer, (0, now))
            if now - since > _AUTH_WINDOW:
                count, since = 0, now
            if len(self._auth_failures) >= _MAX_OWNERS:
                self._auth_failures.clear()
            self._auth_failures[ctx.peer] = (count + 1, since)
            if count >= self.policy.limits.auth_failures:
                raise RateLimited(f"{count + 1} failed authentications from {ctx.peer} in the "
                                  "last minute", retry_after=_AUTH_WINDOW - (now - since)
                                  ) from None
            raise
        ctx.actor = principal.name
        ctx.client = principal.key_id or principal.name
        return principal

    def model(self, name: str) -> ServedModel:
        served = self.models.get(name)
        if served is None:
            raise HTTPProblem(404, "unknown_model", f"no model named {short(name)!r} is "
                              "served; GET /v1/models lists them")
        return served

    async def read_body(self, headers: Mapping[str, str], stream: AsyncIterator[bytes],
                        cap: int | None = None) -> bytes:
        """The body, within the byte ``cap`` and ``server.body_timeout`` (see stage 4)."""
        encoding = headers.get("content-encoding", "").strip().lower()
        if encoding not in ("", "identity"):
            raise HTTPProblem(415, "unsupported_media_type",
                              f"Content-Encoding {short(encoding, 32)!r} is not accepted; send "
                              "the JSON body uncompressed (no Content-Encoding header)")
        ctype = headers.get("content-type", "")
        if ctype.split(";", 1)[0].strip().lower() != "application/json":
            raise HTTPProblem(415, "unsupported_media_type",
                              "send the body as application/json (got "
                              f"{short(ctype, 64) or 'no type'!r})")
        if cap is None:
            cap = min(self.body_caps.values())
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise HTTPProblem(400, "bad_request", "Content-Length is not a number")
            if int(length) > cap:
                raise HTTPProblem(413, "body_too_large",
                                  f"the body has {int(length)} bytes, over the {cap}-byte cap; "
                                  "send fewer samples per request (or inputs_b64)")
        chunks: list[bytes] = []
        total = 0
        try:
            async with asyncio.timeout(self.policy.server.body_timeout):
                async for chunk in stream:
                    total += len(chunk)
                    if total > cap:
                        raise HTTPProblem(413, "body_too_large",
                                          f"the body is over the {cap}-byte cap; send fewer "
                                          "samples per request (or inputs_b64)")
                    chunks.append(chunk)
        except TimeoutError:
            raise HTTPProblem(408, "request_timeout",
                              f"the body was not received within "
                              f"{self.policy.server.body_timeout:g} s (server.body_timeout); "
                              "send it at once") from None
        except ClientDisconnect:
            raise ClientDisconnected(f"the client disconnected after {total} bytes of the "
                                     "body") from None
        return b"".join(chunks)

    async def _parse(self, served: ServedModel, body: bytes) -> np.ndarray:
        """Parse a prediction body; a large one in a worker thread (stage 5)."""
        def parse() -> np.ndarray:
            return parse_inputs(body, max_batch=self.policy.server.max_batch,
                                sample_ndim=len(served.input_shape), features=served.features)

        if len(body) <= _THREAD_PARSE_BYTES:
            return parse()
        return await anyio.to_thread.run_sync(parse)

    def _charge_refused(self, ctx: RequestContext, served: ServedModel, nbytes: int) -> None:
        """Charge a request refused after its body was read for the samples it carried."""
        per_sample = max(1, 4 * math.prod(served.input_shape))
        samples = min(self.policy.server.max_batch, max(1, ctx.samples, nbytes // per_sample))
        if samples > 1:
            ctx.charged += self.budget.charge(ctx.client, samples - 1)

    def _check_inputs(self, served: ServedModel, x: np.ndarray) -> np.ndarray:
        shape = served.input_shape
        if x.ndim == len(shape) and tuple(x.shape) == shape:
            x = x[None]
        if x.shape[0] > self.policy.server.max_batch:
            raise InputError(f"{x.shape[0]} samples in one request; at most "
                             f"{self.policy.server.max_batch} (server.max_batch)")
        contract = served.contract
        if contract is not None:
            arr = x if not isinstance(contract, TensorContract) or contract.dtype == "float32" \
                else x.astype(contract.dtype)
            if not (isinstance(contract, TensorContract) and tensor_conforms(arr, contract)):
                report = validate(arr, contract, distribution=False)
                if not report.ok:
                    raise ContractFailed(report)
        if tuple(x.shape[1:]) != shape:
            raise InputError(f"inputs have shape {tuple(x.shape)}; model {served.name!r} takes "
                             f"(n, {', '.join(map(str, shape))})")
        lo, hi = served.classifier.bounds
        if contract is None and (x.min() < lo or x.max() > hi):
            raise InputError(f"inputs must lie in [{lo}, {hi}] (the model's bounds)")
        return np.ascontiguousarray(x)

    # -- the endpoints ---------------------------------------------------------------------
    async def predict(self, name: str, headers: Mapping[str, str],
                      stream: AsyncIterator[bytes], ctx: RequestContext) -> dict[str, Any]:
        """Run the whole pipeline for one request; raise on any refusal."""
        t = time.perf_counter()
        principal = self.authenticate(headers, ctx)
        t = self._stage("auth", t)
        self.access.authorise(principal, "predict", f"model:{name}")
        served = self.model(name)
        t = self._stage("authorise", t)
        self.limiter.check(ctx.client)
        self.budget.spend(ctx.client, 1)
        ctx.charged = 1
        t = self._stage("limits", t)
        body = b""
        try:
            body = await self.read_body(headers, stream, self.body_caps[name])
            t = self._stage("read_body", t)
            x = await self._parse(served, body)
            t = self._stage("parse", t)
            ctx.samples = int(x.shape[0]) if x.ndim > len(served.input_shape) else 1
            x = self._check_inputs(served, x)
        except (HTTPProblem, InputError, ContractFailed) as exc:
            if body or getattr(exc, "status", 0) == 413:
                self._charge_refused(ctx, served, len(body) or self.body_caps[name])
            raise
        n = int(x.shape[0])
        ctx.samples = n
        if n > 1:
            self.budget.spend(ctx.client, n - 1)
            ctx.charged += n - 1
        t = self._stage("contract", t)
        flagged: list[int] = []
        if served.screener is not None:
            mask = np.asarray(served.screener.screen(x), dtype=bool)
            if mask.any():
                flagged = [int(i) for i in np.flatnonzero(mask)]
                self.metrics.screened.labels(name, served.screen_action).inc(len(flagged))
                ctx.details["screened"] = flagged[:50]
                if served.screen_action == "reject":
                    raise HTTPProblem(422, "screened_out",
                                      f"samples {flagged[:20]} look out of distribution "
                                      f"({served.screener.name} screening); they were not "
                                      "sent to the model")
            t = self._stage("screening", t)
        labels, probs = served.predict(x)
        t = self._stage("predict", t)
        out: dict[str, Any] = {"model": name, "version": served.version,
                               "request_id": ctx.request_id, "predictions": labels.tolist()}
        if probs is not None:
            out["probabilities"] = probs.tolist()
        if flagged:
            out["flagged"] = flagged
        t = self._stage("output", t)
        self._remember(ctx.request_id, ctx.client)
        self.worker.submit(PredictEvent(model=name, client=ctx.client,
                                        request_id=ctx.request_id, x=x, predicted=labels,
                                        owner=ctx.actor))
        self._stage("monitor", t)
        self.metrics.inputs.labels(name).inc(n)
        return out

    def _remember(self, request_id: str, client: str) -> None:
        self._owners[request_id] = client
        if len(self._owners) > _MAX_OWNERS:
            self._owners.popitem(last=False)

    def _monitor(self, events: list[PredictEvent]) -> None:
        self.monitors[events[0].model].observe(events)

    async def feedback(self, name: str, headers: Mapping[str, str],
                       stream: AsyncIterator[bytes], ctx: RequestContext) -> dict[str, Any]:
        """Delayed true labels of an earlier request (only from the key that sent it)."""
        principal = self.authenticate(headers, ctx)
        self.access.authorise(principal, "predict", f"model:{name}")
        self.model(name)
        self.limiter.check(ctx.client)
        req = parse_feedback(await self.read_body(headers, stream))
        ctx.details["for_request"] = req.request_id
        monitor = self.monitors[name]
        if monitor.performance is None:
            raise HTTPProblem(409, "feedback_disabled", "performance monitoring is off for "
                              "this gateway (monitoring.performance.enabled)")
        self.worker.drain()  # the request's own event must have been recorded
        if self._owners.get(req.request_id) != ctx.client:
            raise HTTPProblem(404, "unknown_request",
                              f"no recent request {req.request_id!r} from this key")
        labels = np.asarray(req.labels, dtype=np.int64)
        k = self.models[name].num_classes
        if (labels < 0).any() or (labels >= k).any():
            raise InputError(f"labels must be classes 0..{k - 1}")
        try:
            result = monitor.label(req.request_id, labels)
        except (InputError, ConfigurationError) as exc:
            raise InputError(str(exc)) from exc
        ctx.samples = int(labels.size)
        out: dict[str, Any] = {"accepted": int(labels.size)}
        if result is not None:
            out["accuracy"] = getattr(result, "accuracy", None)
            out["degraded"] = bool(getattr(result, "degraded", False))
        return out

    def operator(self, headers: Mapping[str, str], ctx: RequestContext) -> None:
        """Allow a key whose owner may ``read`` everything (``*``): metrics, readiness
        details."""
        principal = self.authenticate(headers, ctx)
        self.access.authorise(principal, "read", "*")

    def list_models(self, headers: Mapping[str, str], ctx: RequestContext) -> list[dict[str, Any]]:
        """The models this key may call (name, version, shapes, policies; no file paths)."""
        principal = self.authenticate(headers, ctx)
        out = []
        for name, m in self.models.items():
            try:
                self.access.authorise(principal, "predict", f"model:{name}")
            except AccessDenied:
                continue
            out.append({"name": name, "version": m.version,
                        "source": "registry" if m.source.startswith("registry:") else "file",
                        "input_shape": list(m.input_shape), "num_classes": m.num_classes,
                        "output_policy": m.policy.describe(),
                        "contract": m.contract.name if m.contract is not None else None})
        return out

    def record(self, ctx: RequestContext, status: int, error: str | None,
               reason: str | None = None) -> Future[None] | None:
        """The audit entry of a finished request (the only one: the access store is built
        with ``audit_decisions="none"``, so a refusal's ``reason`` is recorded here).

        Returns the future of its commit (await it before answering, in durable mode), or
        None when nothing is written now: audit off, or a keyless refusal counted into its
        address's aggregate entry (see the module docstring)."""
        if self.audit is None:
            return None
        for record in self.anonymous.expired():
            self.audit.submit(**record)
        if ctx.actor == "anonymous" and status in (401, 429) \
                and not self.anonymous.admit(ctx.peer, error or str(status)):
            return None
        outcome = "allowed" if status < 400 else ("denied" if status in (401, 403, 429)
                                                  else "refused")
        details: dict[str, Any] = {"status": status, "request_id": ctx.request_id,
                                   "client": ctx.client, "address": ctx.peer}
        if ctx.samples:
            details["samples"] = ctx.samples
        if error:
            details["error"] = error
        if reason:
            details["reason"] = reason
        details.update(ctx.details)
        counters = None
        if self._persist_budget and ctx.charged and ctx.client != "-":
            counters = {f"{self.budget.namespace}:{ctx.client}": ctx.charged}
        return self.audit.submit(actor=ctx.actor, action=ctx.action, resource=ctx.resource,
                                 outcome=outcome, details=details, counters=counters)


def new_request_id() -> str:
    return secrets.token_hex(8)


def _probe_access_db(url: str) -> str:
    """Check the access database without creating or changing anything; a note for the user."""
    from sqlalchemy import create_engine, select
    from sqlalchemy.exc import SQLAlchemyError

    from bastion.access.db import AccessAuditHead
    from bastion.errors import brief

    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        if not path or path == ":memory:":
            raise ConfigurationError("access.url: an in-memory SQLite database cannot be shared "
                                     "with the audit writer; use sqlite:///PATH or PostgreSQL")
        from pathlib import Path

        if not Path(path).exists():
            return (f"access database {path} does not exist yet: the gateway creates it on "
                    "start; add identities and keys with `bastion users add` and "
                    "`bastion keys create` (every request needs a key)")
        url = f"sqlite:///file:{Path(path).resolve()}?mode=ro&uri=true"
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(select(AccessAuditHead.seq)).first()
    except SQLAlchemyError as exc:
        orig = getattr(exc, "orig", None) or exc
        if "no such table" in str(orig) or "does not exist" in str(orig):
            return "access database has no bastion tables yet: the gateway creates them on start"
        raise ConfigurationError(f"access database: {brief(orig)}") from exc
    finally:
        engine.dispose()
    return "access database ok"


def check_policy(policy: GatewayPolicy) -> tuple[dict[str, ServedModel], list[str]]:
    """What ``bastion serve --check`` verifies, writing nothing: every model and contract
    loads, the monitors can be built (drift references), the state backend answers and the
    access database can be read. Returns the models and notes; raises on any problem."""
    from bastion.monitor.alerts import AlertManager
    from bastion.monitor.state import InMemoryState, open_state

    models = {m.name: load_served_model(m, policy.registry) for m in policy.models}
    scratch = InMemoryState()
    alerts = AlertManager([], scratch, dedup_seconds=policy.monitoring.dedup_seconds or 1.0)
    try:
        for name, served in models.items():
            ModelMonitor.build(policy, policy.model(name), served.contract, state=scratch,
                               alerts=alerts, metrics=GatewayMetrics())
    finally:
        alerts.close()
    notes = []
    state = open_state(policy.state_url)
    try:
        ping = getattr(state, "ping", None)
        if ping is not None:
            ping()
    finally:
        state.close()
    if policy.limits.budget_window is None and policy.state_url.startswith("memory") \
            and not policy.access.audit:
        raise ConfigurationError("a lifetime query budget with in-memory state needs "
                                 "access.audit (it is persisted with the audit log)")
    notes.append(_probe_access_db(policy.access.url))
    return models, notes
