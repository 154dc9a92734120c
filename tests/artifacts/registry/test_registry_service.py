"""The registry service: identities proven by the access store's API keys, not claimed."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from bastion.access.store import AccessStore
from bastion.artifacts.registry import GateConfig, Registry
from bastion.artifacts.registry.client import RegistryClient
from bastion.artifacts.registry.service import create_registry_app
from bastion.errors import AccessDenied, AuthenticationError, ConfigurationError, RegistryError

from .conftest import clean_scanner

#: who holds which role (access store) and which model permission (registry)
PEOPLE = {
    "root": ("admin", "*", ["read", "push", "promote", "manage_users", "read_audit"]),
    "maria": ("maintainer", "model:*", ["read", "push", "promote"]),
    "dan": ("data_scientist", "model:fraud", ["read", "push"]),
    "cora": ("consumer", "model:fraud", ["read"]),
    "aud": ("auditor", "*", ["read", "read_audit"]),
    "eve": ("maintainer", "model:fraud", ["read", "push", "promote"]),
}


GATE = GateConfig(require_signature=False, minimums={"robust_accuracy": .5})


class Service:
    def __init__(self, tmp: Path) -> None:
        self.registry = Registry(f"sqlite:///{tmp / 'reg.db'}", (tmp / "blobs").as_uri(),
                                 actor="registry-service", scanner=clean_scanner,
                                 gates=GateConfig(require_signature=False))
        self.registry.bootstrap_admin("root")
        self.access = AccessStore(f"sqlite:///{tmp / 'access.db'}", cache_ttl=0)
        self.server = uvicorn.Server(uvicorn.Config(
            create_registry_app(self.registry, self.access), host="127.0.0.1", port=0,
            log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started and self.thread.is_alive():
            self.thread.join(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.http = httpx.Client(base_url=self.url)
        self.clients: list[RegistryClient] = []
        self.tokens: dict[str, str] = {}
        for who, (role, resource, scopes) in PEOPLE.items():
            self.access.add_identity(who, actor="setup")
            self.access.grant(who, role, resource, actor="setup")
            key = self.access.create_key(who, scopes=scopes, resources=[resource], actor="setup")
            self.tokens[who] = key.token

    def client(self, who: str) -> RegistryClient:
        self.clients.append(RegistryClient(self.url, token=self.tokens[who]))
        return self.clients[-1]

    def close(self) -> None:
        for c in self.clients:
            c.close()
        self.http.close()
        self.server.should_exit = True
        self.thread.join(10)
        self.access.close()
        self.registry.close()


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[Service]:
    s = Service(tmp_path)
    yield s
    s.close()


def _file(tmp: Path, name: str, data: bytes) -> Path:
    (tmp / name).write_bytes(data)
    return tmp / name


def _report(data: bytes, robust: float) -> dict[str, Any]:
    return {"model": {"digest": "sha256:" + hashlib.sha256(data).hexdigest()},
            "robust_accuracy": robust}


def test_permission_matrix_through_the_service(svc: Service, tmp_path: Path) -> None:
    maria, dan, cora, aud, eve = (svc.client(w) for w in ("maria", "dan", "cora", "aud", "eve"))
    # dan (data scientist, key scoped to push+read on fraud) creates fraud: he manages it in
    # the registry, but his role cannot promote
    v1 = dan.push("fraud", _file(tmp_path, "m1.bin", b"one"))
    assert (v1.version, v1.created_by) == (1, "dan")
    with pytest.raises(AccessDenied, match=r"dan may not promote on model:fraud: key .* scoped"):
        dan.promote("fraud", 1, "champion")
    # maria (maintainer on model:*) may push and promote by role, but holds no permission on
    # dan's model until he grants one -- both layers must agree
    with pytest.raises(AccessDenied, match="needs 'edit' permission"):
        maria.push("fraud", _file(tmp_path, "m2.bin", b"two"))
    with pytest.raises(AccessDenied, match="scoped to push, read only"):
        dan.grant("fraud", "maria", "manage")  # dan's key has no manage_users scope
    root = svc.client("root")
    root.grant("fraud", "maria", "manage")
    root.grant("fraud", "cora", "use")
    root.grant("fraud", "eve", "manage")
    assert maria.push("fraud", _file(tmp_path, "m2.bin", b"two")).version == 2
    # the consumer reads and pulls, nothing more
    assert [v.version for v in cora.list("fraud")] == [1, 2]
    out = cora.pull("fraud", 2, tmp_path / "pulled.bin")
    assert out.read_bytes() == b"two"
    with pytest.raises(AccessDenied, match="scoped to read only"):
        cora.push("fraud", _file(tmp_path, "m3.bin", b"three"))
    with pytest.raises(AccessDenied, match=r"no role of 'cora' allows promote|scoped to read"):
        cora.promote("fraud", 2, "champion")
    # a report must name the version; a manager's promotion shows which report it used
    with pytest.raises(RegistryError, match="report refused"):
        maria.promote("fraud", 2, "champion", gates=GATE,
                      report=_report(b"one", 0.9))
    promoted = maria.promote("fraud", 2, "champion",
                             gates=GATE,
                             report=_report(b"two", 0.9))
    assert promoted.aliases == ("champion",)
    entry = [e for e in aud.audit_log() if e.action == "promote" and e.outcome == "ok"][-1]
    assert entry.actor == "maria" and entry.details["report"]["attached_by"] == "maria"
    # eve's grant is revoked in the access store: her key stops working for promote at once
    assert eve.get("fraud", "champion").version == 2
    svc.access.revoke_grant("eve", "maintainer", "model:fraud", actor="setup")
    with pytest.raises(AccessDenied, match="no role of 'eve' allows read"):
        eve.get("fraud", "champion")
    with pytest.raises(AccessDenied, match="no role of 'eve' allows promote"):
        eve.rollback("fraud", "champion")
    # a permission revoked in the registry also ends maria's pushes
    root.revoke("fraud", "maria")
    with pytest.raises(AccessDenied, match="needs 'edit' permission"):
        maria.push("fraud", _file(tmp_path, "m4.bin", b"four"))
    # a revoked key is refused before anything else; no key at all too
    svc.access.revoke_key(svc.tokens["cora"].split("_")[1], actor="setup")
    with pytest.raises(AuthenticationError, match="revoked"):
        cora.list("fraud")
    r = svc.http.get("/v1/models", params={"name": "fraud"})
    assert r.status_code == 401 and r.json()["error"] == "unauthenticated"
    # the auditor verifies the log but cannot list what it may not read
    assert aud.verify_audit_log().ok
    with pytest.raises(AccessDenied):
        maria.audit_log()
    # no request can claim another identity: the pushes are recorded under the key owners
    pushes = [(e.actor, e.version) for e in aud.audit_log() if e.action == "push"
              and e.outcome == "ok"]
    assert pushes == [("dan", 1), ("maria", 2)]


def test_service_refusals_are_json_not_tracebacks(svc: Service, tmp_path: Path) -> None:
    root = svc.client("root")
    root.push("m", _file(tmp_path, "a.bin", b"a"))
    auth = {"Authorization": f"Bearer {svc.tokens['root']}"}
    for method, path, kw, status in [
        ("GET", "/v1/models/m/versions/\u0661", {}, 422),  # an Arabic-Indic one
        ("GET", "/v1/models/m/versions/vvv1", {}, 404),  # an alias name, not version 1
        ("GET", "/v1/models/ghost/versions/1", {}, 404),
        ("POST", "/v1/models/m/versions", {"content": b"not a tar"}, 422),
        ("POST", "/v1/models/m/versions?lineage=%7Bx", {"content": b""}, 422),
        ("POST", "/v1/models/m/aliases/champion", {"content": b"[]"}, 422),
        ("POST", "/v1/models/m/aliases/champion",
         {"json": {"version": 1, "gates": {"trusted_keys": ["/tmp/k.pub"]}}}, 422),
        ("POST", "/v1/models/m/aliases/champion", {"json": {"version": 1, "report": [1]}}, 422),
        ("DELETE", "/v1/models/m/permissions/nobody-at-all", {}, 409),
    ]:
        r = svc.http.request(method, path, headers=auth, **kw)
        assert r.status_code == status, (path, r.text)
        assert set(r.json()) >= {"error", "detail"}
    with pytest.raises(ConfigurationError, match="BASTION_REGISTRY_TOKEN"):
        RegistryClient(svc.url, token="")


def test_cli_talks_to_the_service_by_url(svc: Service, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from bastion.cli.main import app

    monkeypatch.setenv("BASTION_REGISTRY_URL", svc.url)
    monkeypatch.setenv("BASTION_REGISTRY_TOKEN", svc.tokens["dan"])
    model = _file(tmp_path, "w.bin", b"weights")
    run = CliRunner().invoke
    result = run(app, ["registry", "push", "fraud", str(model)])
    assert result.exit_code == 0 and "pushed fraud v1" in result.output, result.output
    result = run(app, ["registry", "--actor", "root", "list"])
    assert result.exit_code == 2 and "identity comes from the API key" in result.output
    result = run(app, ["registry", "promote", "fraud", "1", "champion"])
    assert result.exit_code == 2 and "dan may not promote" in result.output
    result = run(app, ["registry", "pull", "fraud", "1", str(tmp_path / "back.bin")])
    assert result.exit_code == 0 and (tmp_path / "back.bin").read_bytes() == b"weights"
    result = run(app, ["registry", "gc"])
    assert result.exit_code == 2 and "runs against the database directly" in result.output
