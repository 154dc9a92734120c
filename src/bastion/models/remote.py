"""A classifier behind an HTTP prediction endpoint, and a fake endpoint to test against.

Protocol (JSON over ``POST``, one request per chunk of at most ``batch_size`` inputs):

- request body: ``{"inputs": [...]}``, one nested list per input of shape ``input_shape``;
- response, ``mode="scores"``: ``{"scores": [[p_0, ..., p_{k-1}], ...]}``, one row of class
  probabilities per input (non-negative; :meth:`RemoteClassifier.logits` returns their log,
  clamped at ``log(1e-12)``);
- response, ``mode="labels"``: ``{"labels": [c, ...]}``, one integer class per input;
  ``logits`` then raises :class:`~bastion.errors.CapabilityError`.

A service with another format plugs in a ``request_builder`` (``inputs -> JSON body``) and a
``response_parser`` (``JSON body -> scores or labels`` as nested lists). The response is
decoded as JSON only; nothing is ever unpickled. Transport errors, timeouts and non-2xx
statuses become :class:`~bastion.errors.ModelError` with the status and an excerpt of the
body. The query budget is checked before anything is sent.

:class:`FakeEndpoint` is an ``httpx`` transport that serves any local
:class:`~bastion.models.Classifier` through this protocol, so code can be tested without a
server (``transport=FakeEndpoint(clf)``).

Example
-------
>>> import torch
>>> from torch import nn
>>> from bastion.models import TorchClassifier
>>> from bastion.models.remote import FakeEndpoint, RemoteClassifier
>>> _ = torch.manual_seed(0)
>>> local = TorchClassifier(nn.Linear(4, 3), input_shape=(4,), num_classes=3)
>>> remote = RemoteClassifier("http://model.test/predict", input_shape=(4,), num_classes=3,
...                           transport=FakeEndpoint(local), query_budget=10)
>>> x = torch.rand(5, 4)
>>> bool((remote.predict(x) == local.predict(x)).all()), remote.queries
(True, 5)
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import httpx
import numpy as np
import torch

from bastion.errors import (
    BastionError,
    CapabilityError,
    ConfigurationError,
    ModelError,
)
from bastion.models.base import BaseClassifier, Capability, Classifier

__all__ = ["FakeEndpoint", "RemoteClassifier"]

Mode = Literal["scores", "labels"]
RequestBuilder = Callable[[list[Any]], Any]
ResponseParser = Callable[[Any], list[Any]]
_LOG_EPS = 1e-12
_EXCERPT = 200


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _EXCERPT else text[:_EXCERPT] + "..."


class RemoteClassifier(BaseClassifier):
    """Score- or label-only classifier behind an HTTP endpoint (see the module docstring).

    Parameters
    ----------
    url:
        The endpoint that takes ``POST`` requests.
    input_shape, num_classes, bounds:
        What the endpoint expects and returns; they cannot be discovered.
    mode:
        ``"scores"`` (the endpoint returns class probabilities) or ``"labels"``.
    query_budget:
        Most inputs that may ever be sent (``None``: no limit). Required keyword, so that an
        unlimited budget is a choice.
    headers, timeout:
        Sent with every request (e.g. an API key), and the per-request timeout in seconds.
    batch_size:
        Most inputs per HTTP request.
    transport:
        An ``httpx`` transport (e.g. :class:`FakeEndpoint`); ``None`` for real HTTP.
    request_builder, response_parser:
        Optional hooks for another wire format (both or neither).
    """

    def __init__(
        self,
        url: str,
        *,
        input_shape: Sequence[int],
        num_classes: int,
        bounds: tuple[float, float] = (0.0, 1.0),
        mode: Mode = "scores",
        query_budget: int | None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        batch_size: int = 64,
        transport: httpx.BaseTransport | None = None,
        request_builder: RequestBuilder | None = None,
        response_parser: ResponseParser | None = None,
    ) -> None:
        if mode not in ("scores", "labels"):
            raise ConfigurationError(f"mode must be 'scores' or 'labels', got {mode!r}")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigurationError(f"url must be an http:// or https:// URL, got {url!r}")
        if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
            raise ConfigurationError(
                f"timeout must be a positive number of seconds, got {timeout!r}"
            )
        if int(batch_size) < 1:
            raise ConfigurationError(f"batch_size must be >= 1, got {batch_size!r}")
        if (request_builder is None) != (response_parser is None):
            raise ConfigurationError("give both request_builder and response_parser, or neither")
        caps = Capability.score_only() if mode == "scores" else Capability.LABELS
        super().__init__(
            input_shape=tuple(input_shape),
            num_classes=num_classes,
            bounds=bounds,
            capabilities=caps,
            query_budget=query_budget,
        )
        self.url = url
        self.mode = mode
        self.batch_size = int(batch_size)
        self._build = request_builder or (lambda inputs: {"inputs": inputs})
        self._parse = response_parser or self._default_parser
        self._client = httpx.Client(
            transport=transport, headers=dict(headers or {}), timeout=float(timeout)
        )

    # -- lifecycle ------------------------------------------------------------------------
    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def __enter__(self) -> RemoteClassifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- protocol -------------------------------------------------------------------------
    def _default_parser(self, body: Any) -> list[Any]:
        key = self.mode
        if not isinstance(body, dict) or key not in body:
            raise ModelError(
                f"endpoint {self.url} answered without a {key!r} field: "
                f"{_excerpt(json.dumps(body))}"
            )
        values = body[key]
        if not isinstance(values, list):
            raise ModelError(f"endpoint {self.url} answered a non-list {key!r} field")
        return values

    def _post(self, inputs: list[Any]) -> list[Any]:
        try:
            response = self._client.post(self.url, json=self._build(inputs))
        except httpx.HTTPError as exc:
            raise ModelError(
                f"request to {self.url} failed ({type(exc).__name__}: {exc}); check the URL, "
                "that the service is up, and the timeout"
            ) from exc
        if not response.is_success:
            raise ModelError(
                f"endpoint {self.url} answered HTTP {response.status_code}: "
                f"{_excerpt(response.text)}"
            )
        try:
            body = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelError(
                f"endpoint {self.url} answered non-JSON content: {_excerpt(response.text)}"
            ) from exc
        try:
            values = self._parse(body)
        except BastionError:
            raise
        except Exception as exc:
            raise ModelError(f"cannot parse the answer of {self.url}: {exc}") from exc
        if len(values) != len(inputs):
            raise ModelError(
                f"endpoint {self.url} answered {len(values)} results for {len(inputs)} inputs"
            )
        return values

    def _query(self, x: torch.Tensor) -> list[Any]:
        data = x.detach().to("cpu", torch.float64)
        results: list[Any] = []
        for start in range(0, data.shape[0], self.batch_size):
            results.extend(self._post(data[start : start + self.batch_size].tolist()))
        return results

    # -- BaseClassifier -------------------------------------------------------------------
    @property
    def score_floor(self) -> float | None:  # type: ignore[override]
        """``log(1e-12)`` in scores mode: probabilities below it are answered as the floor."""
        return math.log(_LOG_EPS) if self.mode == "scores" else None

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "labels":
            raise CapabilityError(
                f"{self.url} is queried label-only: it returns labels, not scores; use a "
                "decision-based attack or mode='scores' if the endpoint returns probabilities"
            )
        return super().logits(x)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        rows = self._query(x)
        try:
            scores = np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"endpoint {self.url} returned malformed scores: {exc}") from exc
        if scores.shape[1] != self.num_classes or not np.isfinite(scores).all():
            raise ModelError(
                f"endpoint {self.url} returned scores of shape {scores.shape} (finite: "
                f"{bool(np.isfinite(scores).all())}); expected {self.num_classes} finite "
                "probabilities per input"
            )
        if (scores < 0).any():
            raise ModelError(
                f"endpoint {self.url} returned negative scores; mode='scores' expects probabilities"
            )
        out = torch.from_numpy(np.log(np.clip(scores, _LOG_EPS, None)))
        return out.to(x.device, torch.float32)

    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "scores":
            return self._logits(x).argmax(dim=1)
        labels = self._query(x)
        if not all(isinstance(c, int) and not isinstance(c, bool) for c in labels) or any(
            not 0 <= c < self.num_classes for c in labels
        ):
            raise ModelError(
                f"endpoint {self.url} returned labels outside 0..{self.num_classes - 1}: "
                f"{_excerpt(repr(labels))}"
            )
        return torch.tensor(labels, dtype=torch.long, device=x.device)

    def __repr__(self) -> str:
        return (
            f"RemoteClassifier({self.url!r}, mode={self.mode!r}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes}, query_budget={self.query_budget})"
        )


class FakeEndpoint(httpx.MockTransport):
    """An ``httpx`` transport serving a local classifier through the remote protocol.

    Answers ``POST`` requests to any path with ``{"scores": softmax(logits)}`` or
    ``{"labels": predict}``; malformed requests get HTTP 400 and another method 405, each
    with a JSON ``{"error": ...}`` body. When ``api_key`` is given, a request without the
    header ``Authorization: Bearer <api_key>`` gets HTTP 401. ``requests`` counts the HTTP
    requests answered, ``inputs`` the inputs served. The local classifier is queried
    unmetered: only the remote side's budget counts.
    """

    def __init__(
        self, classifier: Classifier, *, mode: Mode = "scores", api_key: str | None = None
    ) -> None:
        if mode not in ("scores", "labels"):
            raise ConfigurationError(f"mode must be 'scores' or 'labels', got {mode!r}")
        self.classifier = classifier
        self.mode = mode
        self.api_key = api_key
        self.requests = 0
        self.inputs = 0
        super().__init__(self._handle)

    @staticmethod
    def _error(status: int, message: str) -> httpx.Response:
        return httpx.Response(status, json={"error": message})

    def _handle(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if request.method != "POST":
            return self._error(405, "use POST")
        if self.api_key is not None and (
            request.headers.get("authorization") != f"Bearer {self.api_key}"
        ):
            return self._error(401, "missing or wrong API key")
        try:
            body = json.loads(request.content)
            x = torch.tensor(body["inputs"], dtype=torch.float32)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            return self._error(400, f"body must be JSON {{'inputs': [...]}}: {exc}")
        if tuple(x.shape[1:]) != tuple(self.classifier.input_shape):
            return self._error(400, f"inputs have shape {tuple(x.shape)}")
        self.inputs += int(x.shape[0])
        return httpx.Response(200, json={self.mode: self.serve(x)})

    def serve(self, x: torch.Tensor) -> list[Any]:
        """The protocol's answer for a batch (probability rows or labels)."""
        clf = self.classifier
        unmetered = getattr(clf, "unmetered", None)
        with torch.no_grad(), clf.evaluation():
            if unmetered is not None:
                with unmetered():
                    return self._answer(x)
            return self._answer(x)

    def _answer(self, x: torch.Tensor) -> list[Any]:
        if self.mode == "labels":
            return [int(c) for c in self.classifier.predict(x).tolist()]
        probs = torch.softmax(self.classifier.logits(x).to(torch.float64), dim=1)
        return probs.tolist()
