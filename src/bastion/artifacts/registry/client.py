"""A client of the registry service: the :class:`Registry` methods, by URL and API key.

>>> client = RegistryClient("http://registry.internal:8200", token="bst_...")  # doctest: +SKIP
>>> client.push("fraud", "model/", signer_key="signer.pem").version              # doctest: +SKIP
3

The identity is the owner of the API key (``token``, default ``$BASTION_REGISTRY_TOKEN``); the
service decides what it may do (see :mod:`~bastion.artifacts.registry.service`). A push reads
each file once (:func:`~bastion.artifacts.signing.read_model`), signs that manifest locally
when a key is given, and uploads the very bytes read; a pull checks every file's digest before
anything appears at the destination.
"""

from __future__ import annotations

import builtins
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from bastion.artifacts.registry.audit import AuditRecord, AuditVerification, Checkpoint
from bastion.artifacts.registry.core import _load_report, pull_target
from bastion.artifacts.registry.gates import GateConfig, GateResult
from bastion.artifacts.registry.models import Lineage, ModelVersion, check_name
from bastion.artifacts.registry.service import safe_extract, write_tar
from bastion.artifacts.signing import (
    SIGNATURE_NAME,
    load_bundle,
    load_private_key,
    read_model,
    sign_manifest,
)
from bastion.errors import (
    AccessDenied,
    ArtifactError,
    AuthenticationError,
    ConfigurationError,
    InputError,
    RegistryError,
)

__all__ = ["RegistryClient"]

_ERRORS: dict[int, type[Exception]] = {401: AuthenticationError, 403: AccessDenied,
                                       404: RegistryError, 409: RegistryError,
                                       413: InputError, 422: ConfigurationError}


class RegistryClient:
    """Talk to ``bastion registry serve`` at ``url`` with the API key ``token``.

    ``http`` replaces the HTTP client (tests pass a Starlette ``TestClient``).
    """

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 600.0,
                 http: httpx.Client | None = None) -> None:
        token = token or os.environ.get("BASTION_REGISTRY_TOKEN")
        if not token:
            raise ConfigurationError("the registry service needs an API key: set"
                                     " BASTION_REGISTRY_TOKEN (create one with `bastion keys"
                                     " create`)")
        if not url.startswith(("http://", "https://")) and http is None:
            raise ConfigurationError(f"registry URL {url!r} must start with http:// or https://")
        self.url = url.rstrip("/")
        self._http = http or httpx.Client(base_url=self.url, timeout=timeout)
        self._headers = {"Authorization": f"Bearer {token}"}

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing

    def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        kw.setdefault("headers", self._headers)
        try:
            r = self._http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise ConfigurationError(f"cannot reach the registry at {self.url}: {exc}") from exc
        return _checked(r)

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        return self._send(method, path, **kw).json()

    @staticmethod
    def _q(part: str | int) -> str:
        from urllib.parse import quote

        return quote(str(part), safe="")

    # ------------------------------------------------------------------ API

    def push(self, name: str, path: str | os.PathLike[str], *, signer_key: Any = None,
             signature: str | os.PathLike[str] | None = None,
             lineage: Lineage | Mapping[str, Any] | None = None,
             key_password: bytes | None = None) -> ModelVersion:
        """Upload the file or folder ``path`` as the next version of ``name``."""
        check_name(name)
        src = Path(path)
        lin = lineage if isinstance(lineage, Lineage) else Lineage.from_dict(lineage)
        private = load_private_key(signer_key, password=key_password) if signer_key else None
        is_dir = src.is_dir() and not src.is_symlink()
        sig_path = Path(signature) if signature is not None else None
        if sig_path is None and is_dir and (src / SIGNATURE_NAME).is_file():
            sig_path = src / SIGNATURE_NAME
        bundle = load_bundle(sig_path) if sig_path is not None else None
        ignore = [SIGNATURE_NAME] if is_dir and sig_path == src / SIGNATURE_NAME else []
        with tempfile.TemporaryDirectory(prefix="bastion-client-push-") as td:
            copy = Path(td) / "model"
            try:
                read = read_model(src, ignore=ignore, copy_to=copy)
            except InputError as exc:
                raise ArtifactError(f"cannot push {src}: {exc}") from exc
            if private is not None:
                bundle = sign_manifest(src.resolve().name, {n: d for n, (d, _) in read.items()},
                                       private, ignore=[SIGNATURE_NAME] if is_dir else [])
            extra = {"signature.json": json.dumps(bundle).encode()} if bundle else {}
            archive = Path(td) / "upload.tar"
            write_tar(archive, copy, extra)
            with open(archive, "rb") as fh:
                data = self._json("POST", f"/v1/models/{self._q(name)}/versions",
                                  params={"source_name": src.resolve().name,
                                          "lineage": json.dumps(lin.to_dict())},
                                  content=_chunks(fh),
                                  headers={**self._headers, "Content-Type": "application/x-tar"})
        return ModelVersion.from_dict(data)

    def get(self, name: str, ref: int | str = "latest") -> ModelVersion:
        return ModelVersion.from_dict(self._json(
            "GET", f"/v1/models/{self._q(name)}/versions/{self._q(ref)}"))

    def list(self, name: str | None = None) -> builtins.list[ModelVersion]:
        params = {"name": name} if name is not None else {}
        return [ModelVersion.from_dict(d) for d in self._json("GET", "/v1/models", params=params)]

    def pull(self, name: str, ref: int | str, dest: str | os.PathLike[str]) -> Path:
        """Download a version to ``dest``; every digest is checked before it appears."""
        target = Path(dest)
        with tempfile.TemporaryDirectory(prefix="bastion-client-pull-") as td:
            archive = Path(td) / "pull.tar"
            with self._http.stream("GET", f"/v1/models/{self._q(name)}/versions/{self._q(ref)}"
                                   "/content", headers=self._headers) as r:
                if r.status_code >= 400:
                    r.read()
                    _checked(r)
                with open(archive, "wb") as fh:
                    for chunk in r.iter_bytes(1 << 20):
                        fh.write(chunk)
            found = safe_extract(archive, Path(td) / "x")
            version = ModelVersion.from_dict(json.loads(found["version.json"].read_text()))
            got = read_model(found["model"])
            if {n: d for n, (d, _) in got.items()} != version.manifest:
                raise ArtifactError(f"{name}@{ref}: the download does not match the version's"
                                    " digests")
            target = pull_target(target, version)
            if target.is_dir():
                target.rmdir()
            shutil.move(str(found["model"]), target)
        return target

    def attach_report(self, name: str, ref: int | str,
                      report: str | os.PathLike[str] | Mapping[str, Any]) -> int:
        return int(self._json("POST", f"/v1/models/{self._q(name)}/versions/{self._q(ref)}"
                              "/reports", json=_load_report(report))["id"])

    def check_gates(self, name: str, ref: int | str) -> GateResult:
        d = self._json("GET", f"/v1/models/{self._q(name)}/versions/{self._q(ref)}/gates")
        return GateResult(passed=d["passed"], reasons=tuple(d["reasons"]), checks=d["checks"],
                          report=d["report"])

    def promote(self, name: str, ref: int | str, alias: str, *,
                gates: GateConfig | None = None,
                report: str | os.PathLike[str] | Mapping[str, Any] | None = None,
                signed_audit: Mapping[str, Any] | None = None, audit_policy: Any = None,
                ) -> ModelVersion:
        return self.promote_checked(name, ref, alias, gates=gates, report=report,
                                    signed_audit=signed_audit, audit_policy=audit_policy)[0]

    def promote_checked(self, name: str, ref: int | str, alias: str, *,
                        gates: GateConfig | None = None,
                        report: str | os.PathLike[str] | Mapping[str, Any] | None = None,
                        signed_audit: Mapping[str, Any] | None = None,
                        audit_policy: Any = None,
                        ) -> tuple[ModelVersion, GateResult]:
        """Promote; also return a :class:`GateResult` naming the report the gate used."""
        body: dict[str, Any] = {"version": ref}
        if gates is not None:
            g = gates.to_dict()
            if gates.trusted_keys:
                raise ConfigurationError("the service checks signatures with its own trusted"
                                         " keys; gates cannot name other keys")
            g.pop("trusted_keys")
            body["gates"] = g
        if report is not None:
            body["report"] = _load_report(report)
        if signed_audit is not None:
            body["audit"] = dict(signed_audit)
            if audit_policy is not None:
                body["audit_policy"] = audit_policy.to_dict()
        data = self._json("POST", f"/v1/models/{self._q(name)}/aliases/{self._q(alias)}",
                          json=body)
        used = data.pop("gate_report", None)
        return ModelVersion.from_dict(data), GateResult(passed=True, reasons=(), checks={},
                                                        report=used)

    def audit_due(self, *, max_age: Any = None) -> Any:
        """Versions to re-audit, as a list of dicts (see :meth:`Registry.audit_due`)."""
        params = {} if max_age is None else {"max_age": str(max_age)}
        return self._json("GET", "/v1/audit-due", params=params)

    def rollback(self, name: str, alias: str) -> ModelVersion:
        return ModelVersion.from_dict(self._json(
            "POST", f"/v1/models/{self._q(name)}/aliases/{self._q(alias)}/rollback"))

    def grant(self, name: str, identity: str, level: str) -> None:
        self._send("PUT", f"/v1/models/{self._q(name)}/permissions/{self._q(identity)}",
                   json={"level": level})

    def revoke(self, name: str, identity: str) -> None:
        self._send("DELETE", f"/v1/models/{self._q(name)}/permissions/{self._q(identity)}")

    def permissions(self, name: str) -> dict[str, str]:
        return dict(self._json("GET", f"/v1/models/{self._q(name)}/permissions"))

    def audit_log(self, *, limit: int | None = None) -> builtins.list[AuditRecord]:
        params = {"limit": limit} if limit is not None else {"limit": 1 << 30}
        return [AuditRecord(**d) for d in self._json("GET", "/v1/audit", params=params)]

    def verify_audit_log(self) -> AuditVerification:
        d = self._json("GET", "/v1/audit/verify")
        raw = d.pop("checkpoint", None)
        return AuditVerification(**d, checkpoint=Checkpoint.from_dict(raw) if raw else None)


def _checked(r: httpx.Response) -> httpx.Response:
    """``r``, or the service's refusal raised as the matching bastion error."""
    if r.status_code < 400:
        return r
    try:
        detail = str(r.json().get("detail"))
    except (ValueError, AttributeError):
        detail = r.text[:200]
    raise _ERRORS.get(r.status_code, RegistryError)(
        f"{detail} (registry service answered {r.status_code})")


def _chunks(fh: Any) -> Iterator[bytes]:
    while chunk := fh.read(1 << 20):
        yield chunk
