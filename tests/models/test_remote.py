"""RemoteClassifier against FakeEndpoint and against a real local HTTP server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import torch
from torch import nn

from bastion.errors import CapabilityError, ConfigurationError, ModelError, QueryBudgetExceeded
from bastion.models import Capability, TorchClassifier
from bastion.models.remote import FakeEndpoint, RemoteClassifier

URL = "http://model.test/predict"


@pytest.fixture(scope="module")
def local() -> TorchClassifier:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    return TorchClassifier(net, input_shape=(3, 4), num_classes=4)


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.rand(20, 3, 4, generator=torch.Generator().manual_seed(1))


def _remote(endpoint: httpx.BaseTransport, **kw) -> RemoteClassifier:
    kw.setdefault("query_budget", None)
    return RemoteClassifier(URL, input_shape=(3, 4), num_classes=4, transport=endpoint, **kw)


def test_scores_mode_matches_the_local_model(local, x):
    endpoint = FakeEndpoint(local)
    local.reset_queries()
    with _remote(endpoint, batch_size=8) as remote:
        assert remote.capabilities == Capability.score_only()
        got = remote.logits(x)
        with torch.no_grad(), local.unmetered():
            ref = torch.log_softmax(local.logits(x), 1)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
        assert torch.equal(remote.predict(x), ref.argmax(1))
    assert endpoint.requests == 6  # 20 inputs in chunks of 8, twice
    assert endpoint.inputs == 40
    assert remote.queries == 40
    assert local.queries == 0  # the fake endpoint queries its model unmetered


def test_labels_mode_offers_predict_only(local, x):
    endpoint = FakeEndpoint(local, mode="labels")
    remote = _remote(endpoint, mode="labels")
    assert remote.capabilities == Capability.LABELS
    assert torch.equal(remote.predict(x), local.predict(x))
    with pytest.raises(CapabilityError, match="label-only"):
        remote.logits(x)
    assert remote.queries == 20
    assert endpoint.requests == 1


def test_query_budget_is_never_exceeded(local, x):
    endpoint = FakeEndpoint(local)
    remote = _remote(endpoint, query_budget=25)
    remote.predict(x)
    with pytest.raises(QueryBudgetExceeded):
        remote.predict(x[:6])
    assert remote.queries == 20
    assert endpoint.inputs == 20  # nothing was sent for the refused call
    remote.predict(x[:5])
    assert remote.queries == 25 and endpoint.inputs == 25


def test_http_errors_become_model_errors_with_status_and_body(local, x):
    endpoint = FakeEndpoint(local, api_key="s3cret")
    with pytest.raises(ModelError, match=r"HTTP 401.*missing or wrong API key"):
        _remote(endpoint).predict(x)
    authed = _remote(endpoint, headers={"Authorization": "Bearer s3cret"})
    assert authed.predict(x).shape == (20,)

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(ModelError, match="ConnectError") as info:
        _remote(httpx.MockTransport(down)).predict(x)
    assert isinstance(info.value.__cause__, httpx.ConnectError)


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (httpx.Response(200, text="<html>oops</html>"), "non-JSON"),
        (httpx.Response(200, json={"scores": [[0.5, 0.5, 0.0, 0.0]]}), "1 results for 2"),
        (httpx.Response(200, json={"labels": [0, 1]}), "without a 'scores' field"),
        (httpx.Response(200, json={"scores": [[1, 0, 0], [1, 0, 0]]}), "shape"),
        (httpx.Response(200, json={"scores": [[-1, 2, 0, 0], [1, 0, 0, 0]]}), "negative"),
        (httpx.Response(503, text="overloaded " * 50), r"HTTP 503: overloaded.*\.\.\.$"),
    ],
)
def test_malformed_answers_are_rejected(response, message):
    remote = _remote(httpx.MockTransport(lambda request: response))
    with pytest.raises(ModelError, match=message):
        remote.logits(torch.zeros(2, 3, 4))


def test_labels_out_of_range_are_rejected():
    answer = httpx.Response(200, json={"labels": [0, 7]})
    remote = _remote(httpx.MockTransport(lambda request: answer), mode="labels")
    with pytest.raises(ModelError, match=r"outside 0\.\.3"):
        remote.predict(torch.zeros(2, 3, 4))


def test_custom_wire_format(local, x):
    seen: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        batch = torch.tensor(body["instances"], dtype=torch.float32)
        with torch.no_grad(), local.unmetered():
            probs = torch.softmax(local.logits(batch), 1)
        return httpx.Response(200, json={"predictions": [{"p": row} for row in probs.tolist()]})

    remote = _remote(
        httpx.MockTransport(handler),
        request_builder=lambda inputs: {"instances": inputs},
        response_parser=lambda body: [item["p"] for item in body["predictions"]],
    )
    assert torch.equal(remote.predict(x), local.predict(x))
    assert len(seen) == 1 and len(seen[0]["instances"]) == 20


def test_bad_configuration_is_rejected():
    def make(**kw):
        args = {"input_shape": (3, 4), "num_classes": 4, "query_budget": None} | kw
        return RemoteClassifier(args.pop("url", URL), **args)

    with pytest.raises(ConfigurationError, match="mode"):
        make(mode="logits")
    with pytest.raises(ConfigurationError, match="url"):
        make(url="ftp://model.test")
    with pytest.raises(ConfigurationError, match="timeout"):
        make(timeout=0)
    with pytest.raises(ConfigurationError, match="batch_size"):
        make(batch_size=0)
    with pytest.raises(ConfigurationError, match="both"):
        make(request_builder=lambda inputs: inputs)


# -- a real HTTP server -------------------------------------------------------------------
@pytest.fixture
def server(local) -> Iterator[str]:
    fake = FakeEndpoint(local)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path != "/predict":
                self.send_response(404)
                self.end_headers()
                self.wfile.write(b"no such route")
                return
            x = torch.tensor(body["inputs"], dtype=torch.float32)
            payload = json.dumps({"scores": fake.serve(x)}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_against_a_real_local_server(server, local, x):
    with RemoteClassifier(
        f"{server}/predict", input_shape=(3, 4), num_classes=4, query_budget=50, batch_size=16
    ) as remote:
        got = remote.logits(x)
        with torch.no_grad():
            ref = torch.log_softmax(local.logits(x), 1)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    with RemoteClassifier(
        f"{server}/nowhere", input_shape=(3, 4), num_classes=4, query_budget=None
    ) as missing:
        with pytest.raises(ModelError, match="HTTP 404: no such route"):
            missing.predict(x)
