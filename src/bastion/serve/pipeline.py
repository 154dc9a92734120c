"""The prediction pipeline: every request goes through the same stages, in this order.

1. authenticate (``Authorization: Bearer <key>`` or ``X-API-Key: <key>``) -> 401; an address
   with ``limits.auth_failures`` failed attempts in a minute is refused for the rest of that
   minute (429), so guessing keys does not turn into one database lookup per request
2. authorise ``predict`` on ``model:NAME`` -> 403
3. rate limit (token bucket per key) -> 429 with ``Retry-After``; per-key query budget: the
   first input of the request is charged here, so a spent key is refused before its body is
   read, the rest after parsing -> 429
4. body size cap: ``Content-Length`` checked first, then the bytes counted while streaming;
   reading stops at the cap -> 413 (a body that is not ``application/json`` -> 415)
5. parse JSON only, never unpickle (:mod:`bastion.serve.inputs`) -> 422
6. input contract validation, every violation listed -> 422
7. optional screening (:mod:`bastion.serve.screening`) -> 422 or flagged
8. predict, batched, under ``torch.inference_mode``
9. output hardening policy (:mod:`bastion.defences.output`)
10. monitoring (queued for the background thread: drift, PRADA, performance)
11. audit entry (queued for :class:`~bastion.access.AuditWriter`: never blocks)

Every request, refused or served, gets one audit entry (actor, action, resource, outcome,
status, request id, samples) and one count in ``bastion_requests_total``.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bastion.data.contracts import ContractFailed, TensorContract, validate
from bastion.errors import (
    AccessDenied,
    AuthenticationError,
    ConfigurationError,
    InputError,
    RateLimited,
)
from bastion.serve.config import GatewayPolicy
from bastion.serve.inputs import parse_feedback, parse_inputs
from bastion.serve.metrics import GatewayMetrics
from bastion.serve.models import ServedModel, load_served_model
from bastion.serve.monitoring import ModelMonitor, MonitorWorker, PredictEvent
from bastion.serve.problems import HTTPProblem

__all__ = ["Gateway", "RequestContext"]

log = logging.getLogger(__name__)
_MAX_OWNERS = 100_000
_AUTH_WINDOW = 60.0


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
        from bastion.monitor.state import open_state

        self.policy = policy
        self.metrics = GatewayMetrics()
        self._owns_access = access is None
        self.access = access if access is not None else AccessStore(
            policy.access.url, cache_ttl=policy.access.cache_ttl, audit_decisions="none")
        self._owns_state = state is None
        self.state = state if state is not None else open_state(policy.state_url)
        lim = policy.limits
        self.limiter = RateLimiter(self.state, rate=lim.rate, burst=lim.burst)
        self.budget = QueryBudget(self.state, limit=lim.budget, window=lim.budget_window)
        self.audit = AuditWriter(self.access.audit) if policy.access.audit else None
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
        for name in self.models:
            self.metrics.loaded.labels(name).set(1)

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        """Flush the monitors and the audit log; release what the gateway opened (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.worker.drain()
        self.worker.close()
        if self.audit is not None:
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
            self.audit.flush()

    def ready(self) -> dict[str, Any]:
        """Readiness: models loaded, the access database reachable."""
        checks: dict[str, Any] = {"models": {n: m.version for n, m in self.models.items()}}
        try:
            self.access.audit.head()
            checks["access_db"] = "ok"
        except Exception as exc:  # any driver error means not ready
            checks["access_db"] = f"unreachable: {type(exc).__name__}"
        checks["ready"] = bool(self.models) and checks["access_db"] == "ok"
        return checks

    # -- stages ----------------------------------------------------------------------------
    def _stage(self, stage: str, t0: float) -> float:
        t1 = time.perf_counter()
        self.metrics.observe_stage(stage, t1 - t0)
        return t1

    def authenticate(self, headers: Mapping[str, str], ctx: RequestContext) -> Any:
        """The caller's principal; too many failures from one address -> 429 for a minute."""
        now = time.monotonic()
        count, since = self._auth_failures.get(ctx.peer, (0, now))
        if now - since > _AUTH_WINDOW:
            count, since = 0, now
        if count >= self.policy.limits.auth_failures:
            raise RateLimited(f"{count} failed authentications from {ctx.peer} in the last "
                              "minute", retry_after=_AUTH_WINDOW - (now - since))
        try:
            principal = self.access.authenticate(_token(headers))
        except AuthenticationError:
            if len(self._auth_failures) >= _MAX_OWNERS:
                self._auth_failures.clear()
            self._auth_failures[ctx.peer] = (count + 1, since)
            raise
        ctx.actor = principal.name
        ctx.client = principal.key_id or principal.name
        return principal

    def model(self, name: str) -> ServedModel:
        served = self.models.get(name)
        if served is None:
            raise HTTPProblem(404, "unknown_model", f"no model named {name!r} is served; "
                              "GET /v1/models lists them")
        return served

    async def read_body(self, headers: Mapping[str, str], stream: AsyncIterator[bytes]) -> bytes:
        ctype = headers.get("content-type", "")
        if ctype.split(";", 1)[0].strip().lower() != "application/json":
            raise HTTPProblem(415, "unsupported_media_type",
                              f"send the body as application/json (got {ctype or 'no type'!r})")
        cap = self.policy.server.max_body_bytes
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise HTTPProblem(400, "bad_request", "Content-Length is not a number")
            if int(length) > cap:
                raise HTTPProblem(413, "body_too_large",
                                  f"the body has {int(length)} bytes, over the {cap}-byte cap; "
                                  "send fewer samples per request (or inputs_b64)")
        chunks, total = [], 0
        async for chunk in stream:
            total += len(chunk)
            if total > cap:
                raise HTTPProblem(413, "body_too_large",
                                  f"the body is over the {cap}-byte cap; send fewer samples per "
                                  "request (or inputs_b64)")
            chunks.append(chunk)
        return b"".join(chunks)

    def _check_inputs(self, served: ServedModel, x: np.ndarray) -> np.ndarray:
        shape = served.input_shape
        if x.ndim == len(shape) and tuple(x.shape) == shape:
            x = x[None]
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
        if x.shape[0] > self.policy.server.max_batch:
            raise InputError(f"{x.shape[0]} samples in one request; at most "
                             f"{self.policy.server.max_batch} (server.max_batch)")
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
        t = self._stage("limits", t)
        body = await self.read_body(headers, stream)
        t = self._stage("read_body", t)
        x = parse_inputs(body)
        t = self._stage("parse", t)
        x = self._check_inputs(served, x)
        n = int(x.shape[0])
        ctx.samples = n
        if n > 1:
            self.budget.spend(ctx.client, n - 1)
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
                                        request_id=ctx.request_id, x=x, predicted=labels))
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

    def list_models(self, headers: Mapping[str, str], ctx: RequestContext) -> list[dict[str, Any]]:
        principal = self.authenticate(headers, ctx)
        out = []
        for name, m in self.models.items():
            try:
                self.access.authorise(principal, "predict", f"model:{name}")
            except AccessDenied:
                continue
            out.append({"name": name, "version": m.version, "source": m.source,
                        "input_shape": list(m.input_shape), "num_classes": m.num_classes,
                        "output_policy": m.policy.describe(),
                        "contract": m.contract.name if m.contract is not None else None})
        return out

    def record(self, ctx: RequestContext, status: int, error: str | None,
               reason: str | None = None) -> None:
        """The audit entry of a finished request (the only one: the access store is built
        with ``audit_decisions="none"``, so a refusal's ``reason`` is recorded here)."""
        if self.audit is None:
            return
        outcome = "allowed" if status < 400 else ("denied" if status in (401, 403, 429)
                                                  else "refused")
        details: dict[str, Any] = {"status": status, "request_id": ctx.request_id,
                                   "client": ctx.client}
        if ctx.samples:
            details["samples"] = ctx.samples
        if error:
            details["error"] = error
        if reason:
            details["reason"] = reason
        details.update(ctx.details)
        self.audit.submit(actor=ctx.actor, action=ctx.action, resource=ctx.resource,
                          outcome=outcome, details=details)


def new_request_id() -> str:
    return secrets.token_hex(8)
