"""The registry as a service: identities proven by API keys, not claimed.

In direct mode (:class:`~bastion.artifacts.registry.core.Registry` on a database URL) the
caller names its own identity, so per-model permissions only hold for a single user -- whoever
can write the database administers it. A registry shared by several people runs as this
FastAPI service (``bastion registry serve``), the way MLflow users work against a tracking
server: the service alone holds the database and storage credentials, and every request
carries an API key of the access store (:class:`~bastion.access.store.AccessStore`,
``Authorization: Bearer <key>`` or ``X-API-Key: <key>``). A request is allowed when

1. the key authenticates (not revoked, not expired, its owner exists) -- else 401;
2. the key's scopes and resources *and* its owner's current role grants allow the action on
   ``model:NAME`` (:meth:`AccessStore.authorise`) -- else 403; and
3. the registry's own per-model permission of that identity allows it (``read``, ``use``,
   ``edit``, ``manage``; see :mod:`~bastion.artifacts.registry.core`) -- else 403.

======================================  ================  ===================
endpoint                                access action     registry permission
======================================  ================  ===================
``GET /v1/models[?name=]``              read              read
``GET /v1/models/{m}/versions/{ref}``   read              read
``GET .../{ref}/content`` (a tar)       read              use
``GET .../{ref}/gates``                 read              read
``POST /v1/models/{m}/versions`` (tar)  push              edit
``POST .../{ref}/reports``              push              edit
``POST /v1/models/{m}/aliases/{a}``     promote           manage
``POST .../aliases/{a}/rollback``       promote           manage
``GET /v1/models/{m}/permissions``      read              read
``PUT|DELETE .../permissions/{who}``    manage_users      manage
``GET /v1/audit-due[?max_age=30d]``     read              read (lists readable models)
``GET /v1/audit``, ``/v1/audit/verify`` read_audit on *  --
======================================  ================  ===================

Refusals are JSON ``{"error", "detail"}``: 401, 403, 404 (no such model or version), 409 (a
failed gate or another refused operation), 413 (upload too large), 422 (bad input); never a
traceback. Uploads and downloads are uncompressed tar streams holding ``model`` (the file or
folder), and optionally ``signature.json``; the client is
:class:`~bastion.artifacts.registry.client.RegistryClient`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from bastion.access.store import AccessStore, Principal
from bastion.artifacts.registry.core import Registry
from bastion.artifacts.registry.gates import GateConfig
from bastion.errors import (
    AccessDenied,
    ArtifactError,
    BastionError,
    ConfigurationError,
    InputError,
    RegistryError,
)
from bastion.serve.pipeline import _token as bearer_token
from bastion.serve.problems import problem_for

__all__ = ["create_registry_app", "safe_extract", "write_tar"]

T = TypeVar("T")
_SOURCE_NAME = re.compile(r"[^/\\\x00-\x1f]{1,255}")


def write_tar(path: Path, model: Path, extra: dict[str, bytes] | None = None) -> None:
    """Write an uncompressed tar of ``model`` (a file or folder, as member ``model``) plus
    ``extra`` small members; links and special files are never included."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(model, arcname="model", recursive=True,
                filter=lambda t: t if t.isreg() or t.isdir() else None)
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            with tempfile.TemporaryFile() as fh:
                fh.write(data)
                fh.seek(0)
                tar.addfile(info, fh)


def safe_extract(archive: Path, dest: Path) -> dict[str, Path]:
    """Extract the regular files and folders of ``archive`` into the new folder ``dest``.

    Refuses (ArtifactError) absolute names, ``..``, links, devices and anything outside
    ``model`` or a top-level ``*.json``. Returns ``{"model": path, "<name>.json": path}``.
    """
    dest.mkdir(mode=0o700)
    found: dict[str, Path] = {}
    try:
        with tarfile.open(archive, "r:") as tar:
            for m in tar:
                parts = PurePosixPath(m.name).parts
                if not parts or m.name.startswith("/") or ".." in parts or "\\" in m.name:
                    raise ArtifactError(f"refusing the archive member {m.name!r}")
                top = parts[0]
                if not (top == "model" or (len(parts) == 1 and top.endswith(".json"))):
                    raise ArtifactError(f"unexpected archive member {m.name!r}")
                out = dest.joinpath(*parts)
                if m.isdir():
                    out.mkdir(mode=0o700, parents=True, exist_ok=True)
                elif m.isreg():
                    out.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                    src = tar.extractfile(m)
                    if src is None:  # pragma: no cover - a regular member always has data
                        raise ArtifactError(f"archive member {m.name!r} has no data")
                    with src, open(out, "xb") as fh:
                        shutil.copyfileobj(src, fh, 1 << 20)
                else:
                    raise ArtifactError(f"archive member {m.name!r} is not a regular file or"
                                        " folder (links and devices are refused)")
                if len(parts) == 1:
                    found[top] = out
    except (tarfile.TarError, EOFError) as exc:
        raise ArtifactError(f"the upload is not a readable tar archive: {exc}") from None
    except FileExistsError as exc:
        raise ArtifactError(f"the archive holds {exc.filename} twice") from None
    if "model" not in found:
        raise ArtifactError("the archive holds no 'model' member")
    return found


def _problem(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    if isinstance(exc, AccessDenied | InputError):
        return problem_for(exc)
    if isinstance(exc, RegistryError):
        text = str(exc)
        code = 404 if text.startswith("no model named") or " has no version " in text else 409
        return code, {"error": "not_found" if code == 404 else "refused", "detail": text}, {}
    if isinstance(exc, ConfigurationError | ArtifactError):
        return 422, {"error": "invalid_request", "detail": str(exc)}, {}
    if isinstance(exc, BastionError):
        return 409, {"error": "refused", "detail": str(exc)}, {}
    return problem_for(exc)


def create_registry_app(registry: Registry, access: AccessStore, *,
                        max_upload: int = 64 << 30) -> FastAPI:
    """The registry service over ``registry`` with identities from ``access``'s API keys.

    ``max_upload`` bounds one pushed archive (bytes; 413 beyond it).
    """
    app = FastAPI(title="bastion registry", version="1",
                  description="The versioned, signed model registry (see "
                              "bastion.artifacts.registry.service).")

    def who(request: Request, action: str, resource: str) -> Principal:
        principal = access.authenticate(bearer_token(request.headers))
        access.authorise(principal, action, resource)
        return principal

    async def call(request: Request, action: str, resource: str,
                   work: Callable[[str], T], principal: Principal | None = None
                   ) -> T | Response:
        try:
            p = principal or who(request, action, resource)
            return await run_in_threadpool(work, p.name)
        except Exception as exc:  # every refusal becomes a JSON problem
            return refusal(exc)

    def refusal(exc: BaseException) -> Response:
        status, body, headers = _problem(exc)
        return JSONResponse(body, status_code=status, headers=headers)

    def model_res(name: str) -> str:
        return "*" if name == "*" else f"model:{name}"

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def list_models(request: Request, name: str | None = None) -> Any:
        return await call(request, "read", f"model:{name or '*'}", lambda actor: [
            v.to_dict() for v in registry.list(name, actor=actor)])

    @app.get("/v1/models/{name}/versions/{ref}")
    async def show(request: Request, name: str, ref: str) -> Any:
        return await call(request, "read", model_res(name),
                          lambda actor: registry.get(name, ref, actor=actor).to_dict())

    @app.get("/v1/models/{name}/versions/{ref}/gates")
    async def gates(request: Request, name: str, ref: str) -> Any:
        def work(actor: str) -> dict[str, Any]:
            r = registry.check_gates(name, ref, actor=actor)
            return {"passed": r.passed, "reasons": list(r.reasons), "checks": dict(r.checks),
                    "report": r.report}
        return await call(request, "read", model_res(name), work)

    @app.get("/v1/models/{name}/versions/{ref}/content")
    async def content(request: Request, name: str, ref: str) -> Any:
        tmp = Path(tempfile.mkdtemp(prefix="bastion-serve-pull-"))

        def work(actor: str) -> Response:
            version = registry.get(name, ref, actor=actor)
            out = registry.pull(name, version.version, tmp / "out", actor=actor)
            archive = tmp / "pull.tar"
            write_tar(archive, out, {"version.json": json.dumps(version.to_dict()).encode()})
            return FileResponse(archive, media_type="application/x-tar",
                                background=BackgroundTask(shutil.rmtree, tmp, True))

        result = await call(request, "read", model_res(name), work)
        if not isinstance(result, FileResponse):
            shutil.rmtree(tmp, ignore_errors=True)
        return result

    @app.post("/v1/models/{name}/versions", status_code=201)
    async def push(request: Request, name: str, source_name: str = "model",
                   lineage: str | None = None) -> Any:
        tmp = Path(tempfile.mkdtemp(prefix="bastion-serve-push-"))
        try:
            try:
                principal = who(request, "push", model_res(name))
                if not _SOURCE_NAME.fullmatch(source_name) or source_name in (".", ".."):
                    raise ConfigurationError(f"source_name {source_name!r} is not a file name")
                lin = json.loads(lineage) if lineage else None
                archive, size = tmp / "upload.tar", 0
                with open(archive, "wb") as fh:
                    async for chunk in request.stream():
                        size += len(chunk)
                        if size > max_upload:
                            return JSONResponse({"error": "too_large", "detail":
                                                 f"the upload exceeds {max_upload} bytes"},
                                                status_code=413)
                        fh.write(chunk)
            except json.JSONDecodeError as exc:
                return refusal(ConfigurationError(f"lineage is not JSON: {exc}"))
            except Exception as exc:
                return refusal(exc)

            def work(actor: str) -> dict[str, Any]:
                found = safe_extract(archive, tmp / "x")
                os.unlink(archive)
                model = found["model"].rename(tmp / "x" / source_name)
                return registry.push(name, model, signature=found.get("signature.json"),
                                     lineage=lin, actor=actor).to_dict()

            return await call(request, "push", model_res(name), work, principal)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @app.post("/v1/models/{name}/versions/{ref}/reports", status_code=201)
    async def attach(request: Request, name: str, ref: str) -> Any:
        try:
            report = await request.json()
        except ValueError:
            return JSONResponse({"error": "invalid_request", "detail": "the body must be a"
                                 " JSON report"}, status_code=422)
        return await call(request, "push", model_res(name), lambda actor: {
            "id": registry.attach_report(name, ref, report, actor=actor)})

    @app.post("/v1/models/{name}/aliases/{alias}")
    async def promote(request: Request, name: str, alias: str) -> Any:
        try:
            body = await request.json()
            ref = body["version"]
            if "trusted_keys" in body.get("gates", {}):
                raise ValueError("gates cannot name keys: the service trusts its own keys")
            gate = GateConfig(**body.get("gates", {}))
            if not isinstance(body.get("report"), dict | None):
                raise TypeError("report must be a JSON object")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return refusal(ConfigurationError(
                f"the body must be JSON {{version, gates?, report?}}: {exc}"))
        try:
            from bastion.audit.policy import AuditPolicy

            policy = (AuditPolicy.from_mapping(body["audit_policy"])
                      if body.get("audit_policy") is not None else None)
        except (ConfigurationError, TypeError) as exc:
            return refusal(ConfigurationError(f"audit_policy: {exc}"))
        def work(actor: str) -> dict[str, Any]:
            version, result = registry.promote_checked(
                name, ref, alias, gates=gate, report=body.get("report"), actor=actor,
                signed_audit=body.get("audit"), audit_policy=policy)
            return {**version.to_dict(), "gate_report": result.report}
        return await call(request, "promote", model_res(name), work)

    @app.post("/v1/models/{name}/aliases/{alias}/rollback")
    async def rollback(request: Request, name: str, alias: str) -> Any:
        return await call(request, "promote", model_res(name),
                          lambda actor: registry.rollback(name, alias, actor=actor).to_dict())

    @app.get("/v1/models/{name}/permissions")
    async def permissions(request: Request, name: str) -> Any:
        return await call(request, "read", model_res(name),
                          lambda actor: registry.permissions(name, actor=actor))

    @app.put("/v1/models/{name}/permissions/{identity}")
    async def grant(request: Request, name: str, identity: str) -> Any:
        try:
            level = (await request.json())["level"]
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": "invalid_request", "detail": "the body must be"
                                 " {\"level\": \"read|use|edit|manage\"}"}, status_code=422)
        def work(actor: str) -> dict[str, str]:
            registry.grant(name, identity, level, actor=actor)
            return {"level": level}
        return await call(request, "manage_users", model_res(name), work)

    @app.delete("/v1/models/{name}/permissions/{identity}")
    async def revoke(request: Request, name: str, identity: str) -> Any:
        def work(actor: str) -> dict[str, str]:
            registry.revoke(name, identity, actor=actor)
            return {"revoked": identity}
        return await call(request, "manage_users", model_res(name), work)

    @app.get("/v1/audit-due")
    async def audit_due(request: Request, max_age: str | None = None) -> Any:
        return await call(request, "read", "model:*",
                          lambda actor: registry.audit_due(max_age=max_age, actor=actor))

    @app.get("/v1/audit")
    async def audit_log(request: Request, limit: int = 50) -> Any:
        return await call(request, "read_audit", "*", lambda actor: [
            dataclasses.asdict(e) for e in registry.audit_log(limit=max(0, limit))])

    @app.get("/v1/audit/verify")
    async def audit_verify(request: Request) -> Any:
        def work(actor: str) -> dict[str, Any]:
            r = registry.verify_audit_log()
            return {"ok": r.ok, "entries": r.entries, "head_hash": r.head_hash,
                    "first_bad_seq": r.first_bad_seq, "reason": r.reason,
                    "checkpoint": r.checkpoint.to_dict() if r.checkpoint else None}
        return await call(request, "read_audit", "*", work)

    return app
