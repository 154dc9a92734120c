"""A real gateway over the digits MLP, an access database and keys, for the serve tests."""

from __future__ import annotations

import functools
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import yaml
from anyio.from_thread import BlockingPortal, start_blocking_portal

from bastion.access import AccessStore
from bastion.data import load_digits
from bastion.data.contracts import infer_contract, save_contract
from bastion.serve import create_app, parse_policy


@pytest.fixture(scope="session")
def digits_np() -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    return data.x[perm].numpy(), data.y[perm].numpy()


@pytest.fixture(scope="session")
def model_files(tmp_path_factory: pytest.TempPathFactory, digits_mlp: Any,
                digits_np: tuple[np.ndarray, np.ndarray]) -> dict[str, Path]:
    """The trained digits MLP as a state dict, and a contract inferred from the training part."""
    d = tmp_path_factory.mktemp("serve-model")
    net = digits_mlp[0]
    torch.save(net.state_dict(), d / "digits.pt")
    x, _ = digits_np
    save_contract(infer_contract(x[:1400], name="digits-8x8"), d / "digits.contract.yaml")
    return {"model": d / "digits.pt", "contract": d / "digits.contract.yaml", "dir": d}


def base_policy(files: dict[str, Path], access_url: str) -> dict[str, Any]:
    return {
        "server": {"allowed_hosts": ["localhost", "127.0.0.1"],
                   "cors_origins": ["https://app.example.com"], "max_body_bytes": 65536},
        "models": [{
            "name": "digits", "path": str(files["model"]), "input_shape": [1, 8, 8],
            "factory": "bastion.models.zoo:small_mlp",
            "factory_kwargs": {"n_features": 64, "num_classes": 10},
            "contract": str(files["contract"]), "output": {"policy": "top-k", "k": 3},
        }],
        "limits": {"rate": 1000.0, "burst": 1000, "budget": 100_000},
        "monitoring": {"drift": {"enabled": True, "window": 200},
                       "extraction": {"enabled": False}, "performance": {"enabled": False}},
        "access": {"url": access_url, "cache_ttl": 5.0, "audit": True},
    }


def deep_update(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    for k, v in changes.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            deep_update(base[k], v)
        else:
            base[k] = v
    return base


class Client:
    """A synchronous face of an ``httpx.AsyncClient`` over the ASGI app (no sockets).

    Requests run on one event loop in a helper thread (an anyio blocking portal), like an
    ASGI server would run them.
    """

    def __init__(self, app: Any, portal: BlockingPortal,
                 base_url: str = "http://localhost") -> None:
        self.portal = portal
        transport = httpx.ASGITransport(app=app)
        self._client = portal.call(functools.partial(
            _make_client, transport=transport, base_url=base_url))

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return self.portal.call(functools.partial(self._client.request, method, url, **kwargs))

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def options(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("OPTIONS", url, **kwargs)

    def close(self) -> None:
        self.portal.call(self._client.aclose)


async def _make_client(*, transport: httpx.ASGITransport, base_url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=transport, base_url=base_url)


@dataclass
class Harness:
    """One running gateway: the app, a client, the access store and tokens by identity."""

    app: Any
    client: Client
    store: AccessStore
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def gateway(self) -> Any:
        return self.app.state.gateway

    def headers(self, who: str = "alice", **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}", **extra}

    def metrics(self) -> str:
        """The Prometheus text, read with the operator's key."""
        r = self.client.get("/metrics", headers=self.headers("ops"))
        assert r.status_code == 200, r.text
        return r.text

    def predict(self, x: np.ndarray, who: str = "alice", model: str = "digits") -> Any:
        return self.client.post(f"/v1/models/{model}/predict", json={"inputs": x.tolist()},
                                headers=self.headers(who))


def new_store(url: str) -> tuple[AccessStore, dict[str, str]]:
    """Identities: alice (consumer of digits), bob (consumer of another model only), carol
    (consumer of digits, but her key is scoped to 'read' only), ops (auditor of everything:
    metrics and readiness details)."""
    store = AccessStore(url, cache_ttl=5.0, audit_decisions="none")
    tokens = {}
    for name, resource in (("alice", "model:digits"), ("bob", "model:other"),
                           ("carol", "model:digits")):
        store.add_identity(name, kind="service", actor="admin")
        store.grant(name, "consumer", resource, actor="admin")
    tokens["alice"] = store.create_key("alice", actor="admin").token
    tokens["bob"] = store.create_key("bob", scopes=("predict", "read"), actor="admin").token
    tokens["carol"] = store.create_key("carol", scopes=("read",), actor="admin").token
    store.add_identity("ops", kind="service", actor="admin")  # metrics and readiness details
    store.grant("ops", "auditor", "*", actor="admin")
    tokens["ops"] = store.create_key("ops", scopes=("read",), actor="admin").token
    return store, tokens


@pytest.fixture
def portal() -> Iterator[BlockingPortal]:
    with start_blocking_portal() as p:
        yield p


@pytest.fixture
def make_gateway(model_files: dict[str, Path], tmp_path: Path, portal: BlockingPortal
                 ) -> Iterator[Callable[..., Harness]]:
    made: list[tuple[Client, Any, AccessStore | None]] = []

    def make(changes: dict[str, Any] | None = None, *, store: AccessStore | None = None,
             tokens: dict[str, str] | None = None, **gateway_kwargs: Any) -> Harness:
        url = f"sqlite:///{tmp_path / 'access.db'}"
        if store is None:
            store, tokens = new_store(url)
            made_store = store
        else:
            made_store = None
        changes = dict(changes or {})
        model_changes = changes.pop("model", {})  # merged into the one served model
        data = deep_update(base_policy(model_files, url), changes)
        deep_update(data["models"][0], model_changes)
        policy = parse_policy(yaml.safe_dump(data))
        app = create_app(policy, access=store, **gateway_kwargs)
        client = Client(app, portal)
        made.append((client, app, made_store))
        return Harness(app=app, client=client, store=store, tokens=dict(tokens or {}))

    yield make
    for client, app, store in reversed(made):
        client.close()
        app.state.gateway.close()
        if store is not None:
            store.close()


@pytest.fixture
def live(model_files, tmp_path) -> Iterator[tuple[str, int]]:
    """A gateway on uvicorn in a thread: header timeout 0.5 s, at most 3 connections."""
    url = f"sqlite:///{tmp_path / 'access.db'}"
    store, tokens = new_store(url)
    data = deep_update(base_policy(model_files, url),
                       {"server": {"header_timeout": 0.5, "max_connections": 3,
                                   "port": _free_port()}})
    policy = parse_policy(yaml.safe_dump(data))
    app = create_app(policy, access=store)
    import uvicorn

    from bastion.serve.server import server_config

    server = uvicorn.Server(server_config(app, policy, log_level="info"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start within 30 s"
    try:
        yield tokens["alice"], policy.server.port
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        app.state.gateway.close()
        store.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
