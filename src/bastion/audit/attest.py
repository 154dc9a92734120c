"""Signed audit attestations: proof that *this* report was made for *this* exact model.

``bastion audit --sign-key KEY`` writes, beside ``report.json``, an in-toto Statement v1 in a
DSSE envelope (``attestation.intoto.json``):

- subject: each model file with its SHA-256 (the very files the audit read);
- predicate (type :data:`PREDICATE_TYPE`): the report's SHA-256, the document schema id, the
  check catalogue version, the verdict and the date of the audit.

The envelope is signed with the same key types as model signing (Ed25519, ECDSA P-256).
:func:`verify_audit` checks, in this order, and names the first thing that fails: the
signature against the trusted key (``key``), the report's bytes against the signed digest
(``report``: the report was edited), and the model's files against the subject (``model``:
another model was presented).

Example:
    >>> import json, pathlib, tempfile
    >>> from bastion.artifacts.signing import generate_keypair
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> priv, pub = generate_keypair("ed25519", d / "k", d / "k.pub")
    >>> _ = (d / "model.pt").write_bytes(b"weights")
    >>> doc = {"schema": "bastion.audit/1", "catalogue_version": "1",
    ...        "created": "2026-12-07T00:00:00Z", "verdict": {"status": "passed"},
    ...        "model": {"files": [{"path": "model.pt",
    ...                  "sha256": hash_file(d / "model.pt")}]}}
    >>> (d / "audit").mkdir(); _ = (d / "audit" / "report.json").write_text(json.dumps(doc))
    >>> _ = sign_audit(d / "audit", priv)
    >>> verify_audit(d / "audit", key=pub, model=d / "model.pt").ok
    True
    >>> _ = (d / "model.pt").write_bytes(b"weightz")
    >>> verify_audit(d / "audit", key=pub, model=d / "model.pt").problem
    'model'
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from bastion._io import atomic_write_bytes
from bastion.artifacts.signing import (
    PAYLOAD_TYPE,
    STATEMENT_TYPE,
    PrivateKey,
    PublicKey,
    hash_file,
    list_files,
    load_private_key,
    load_public_key,
    public_key_hint,
)
from bastion.errors import InputError, SignatureError

__all__ = [
    "ATTESTATION_NAME",
    "PREDICATE_TYPE",
    "REPORT_NAME",
    "AuditAttestation",
    "AuditVerification",
    "read_attestation",
    "read_submission",
    "sign_audit",
    "verify_audit",
    "verify_submission",
]

PREDICATE_TYPE = "https://bastion.dev/attestations/audit/v1"
ATTESTATION_NAME = "attestation.intoto.json"
REPORT_NAME = "report.json"


def _pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    return (
        f"DSSEv1 {len(payload_type)} {payload_type} {len(payload)} ".encode() + payload
    )


def _raw_sign(key: PrivateKey, message: bytes) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(message)
    return key.sign(message, ec.ECDSA(_hash_for(key.curve.key_size)))


def _raw_verify(key: PublicKey, sig: bytes, message: bytes) -> None:
    if isinstance(key, ed25519.Ed25519PublicKey):
        key.verify(sig, message)
    else:
        key.verify(sig, message, ec.ECDSA(_hash_for(key.curve.key_size)))


def _hash_for(bits: int) -> Any:
    from cryptography.hazmat.primitives import hashes

    return {256: hashes.SHA256(), 384: hashes.SHA384(), 521: hashes.SHA512()}[bits]


@dataclass(frozen=True)
class AuditAttestation:
    """The verified content of an attestation."""

    subject: dict[str, str]  # file name -> sha256
    report_sha256: str
    schema: str
    catalogue_version: str
    verdict: dict[str, Any]
    created: str
    key_hint: str


@dataclass(frozen=True)
class AuditVerification:
    """Whether an audit folder's report belongs to a model and was not edited.

    ``problem`` names the first failure: ``missing`` (no report or attestation), ``signature``
    (wrong key, or the envelope was altered), ``report`` (the report's bytes differ from the
    signed digest) or ``model`` (the model's files differ from the attested ones).
    """

    ok: bool
    problem: Literal["missing", "signature", "report", "model"] | None = None
    message: str = ""
    attestation: AuditAttestation | None = None
    details: dict[str, Any] = field(default_factory=dict)


def _subject_of(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    files = (doc.get("model") or {}).get("files") or []
    if not files:
        raise InputError(
            "the report names no model files (a remote endpoint?): there is nothing to attest"
        )
    return [{"name": str(f["path"]), "digest": {"sha256": str(f["sha256"]).lower()}}
            for f in files]


def sign_audit(audit_dir: str | os.PathLike[str], key: PrivateKey | str | os.PathLike[str],
               *, password: bytes | None = None) -> Path:
    """Sign ``audit_dir/report.json``; write and return ``audit_dir/attestation.intoto.json``."""
    folder = Path(audit_dir)
    report_path = folder / REPORT_NAME
    try:
        report_bytes = report_path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {report_path}: {exc.strerror or exc}") from exc
    try:
        doc = json.loads(report_bytes)
    except ValueError as exc:
        raise InputError(f"{report_path} is not JSON: {exc}") from exc
    import hashlib

    private = load_private_key(key, password=password)
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": _subject_of(doc),
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "report": {"name": REPORT_NAME,
                       "digest": {"sha256": hashlib.sha256(report_bytes).hexdigest()}},
            "schema": doc.get("schema"),
            "catalogue_version": doc.get("catalogue_version"),
            "verdict": doc.get("verdict", {}),
            "created": doc.get("created"),
        },
    }
    payload = json.dumps(statement, sort_keys=True, indent=2).encode()
    hint = public_key_hint(private.public_key())
    envelope = {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [{"keyid": hint,
                        "sig": base64.b64encode(_raw_sign(private, _pae(PAYLOAD_TYPE, payload)))
                        .decode()}],
    }
    out = folder / ATTESTATION_NAME
    atomic_write_bytes(out, json.dumps(envelope, indent=2).encode())
    return out


def read_attestation(envelope: Mapping[str, Any],
                     key: PublicKey | str | os.PathLike[str]) -> AuditAttestation:
    """Check the envelope's signature with ``key`` and return its statement.

    Raises :class:`SignatureError` naming the problem.
    """
    pub = load_public_key(key)
    try:
        if envelope["payloadType"] != PAYLOAD_TYPE:
            raise SignatureError(f"unexpected DSSE payload type {envelope['payloadType']!r}")
        payload = base64.b64decode(envelope["payload"], validate=True)
        sigs = [(str(s.get("keyid", "")), base64.b64decode(s["sig"], validate=True))
                for s in envelope["signatures"]]
    except SignatureError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise SignatureError(f"malformed attestation envelope: {exc!r}") from exc
    hint = public_key_hint(pub)
    for _keyid, sig in sigs:
        try:
            _raw_verify(pub, sig, _pae(PAYLOAD_TYPE, payload))
            break
        except InvalidSignature:
            continue
    else:
        if all(k and k != hint for k, _ in sigs):
            raise SignatureError(
                "the attestation was signed with another key than the one given (not trusted)"
            )
        raise SignatureError(
            "the attestation's signature does not verify: the envelope was altered"
        )
    try:
        st = json.loads(payload)
        if st["_type"] != STATEMENT_TYPE or st["predicateType"] != PREDICATE_TYPE:
            raise SignatureError(f"not a bastion audit attestation ({st['predicateType']!r})")
        pred = st["predicate"]
        return AuditAttestation(
            subject={str(s["name"]): str(s["digest"]["sha256"]).lower() for s in st["subject"]},
            report_sha256=str(pred["report"]["digest"]["sha256"]).lower(),
            schema=str(pred.get("schema")),
            catalogue_version=str(pred.get("catalogue_version")),
            verdict=dict(pred.get("verdict") or {}),
            created=str(pred.get("created")),
            key_hint=hint,
        )
    except SignatureError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise SignatureError(f"malformed attestation statement: {exc!r}") from exc


def _model_manifest(model: Path) -> dict[str, str]:
    if model.is_dir():
        return {rel: hash_file(full) for rel, full in list_files(model)}
    if not model.is_file():
        raise InputError(f"model {model} is neither a file nor a folder")
    return {model.name: hash_file(model)}


def _same_model(subject: Mapping[str, str], actual: Mapping[str, str]) -> bool:
    if len(subject) == 1 and len(actual) == 1:
        # one file: the digest decides, a renamed copy is the same model
        return next(iter(subject.values())) == next(iter(actual.values()))
    names = {Path(n).as_posix() for n in subject}
    if names == set(actual):
        return all(actual[n] == d for n, d in subject.items())
    return sorted(subject.values()) == sorted(actual.values())


def read_submission(audit_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """An audit folder as a JSON-ready submission ``{report, attestation}`` (the report's exact
    text and the DSSE envelope), which can travel to a registry service unchanged."""
    folder = Path(audit_dir)
    env_path, report_path = folder / ATTESTATION_NAME, folder / REPORT_NAME
    for p in (report_path, env_path):
        if not p.is_file():
            raise InputError(f"{p} does not exist: was the audit run with --sign-key?")
    try:
        return {"report": report_path.read_bytes().decode("utf-8"),
                "attestation": json.loads(env_path.read_bytes())}
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{folder}: unreadable report or attestation: {exc}") from exc


def verify_submission(
    submission: Mapping[str, Any], *, key: PublicKey | str | os.PathLike[str],
    manifest: Mapping[str, str] | None = None,
) -> AuditVerification:
    """:func:`verify_audit` on a submission from :func:`read_submission`."""
    import hashlib

    try:
        report_bytes = str(submission["report"]).encode("utf-8")
        envelope = submission["attestation"]
        if not isinstance(envelope, Mapping):
            raise TypeError("the attestation must be a JSON object")
    except (KeyError, TypeError) as exc:
        return AuditVerification(False, "missing", f"malformed audit submission: {exc}")
    try:
        att = read_attestation(envelope, key)
    except SignatureError as exc:
        return AuditVerification(False, "signature", str(exc))
    actual_report = hashlib.sha256(report_bytes).hexdigest()
    if actual_report != att.report_sha256:
        return AuditVerification(
            False, "report",
            f"the report was edited after it was signed (its SHA-256 {actual_report[:12]}…"
            f" is not the attested {att.report_sha256[:12]}…)",
            att,
        )
    if manifest is not None and not _same_model(att.subject, manifest):
        return AuditVerification(
            False, "model",
            "the model presented is not the audited model: attested "
            + ", ".join(f"{n} {d[:12]}…" for n, d in sorted(att.subject.items()))
            + "; presented "
            + ", ".join(f"{n} {d[:12]}…" for n, d in sorted(manifest.items())),
            att, {"presented": dict(manifest)},
        )
    return AuditVerification(True, None, "the report is signed, unedited"
                             + (" and belongs to this model" if manifest is not None else ""),
                             att)


def verify_audit(
    audit_dir: str | os.PathLike[str], *, key: PublicKey | str | os.PathLike[str],
    model: str | os.PathLike[str] | Mapping[str, str] | None = None,
) -> AuditVerification:
    """Check that ``audit_dir``'s report is signed by ``key``, unedited, and (when ``model`` is
    given: a path, or a ``{name: sha256}`` manifest such as a registry version's) made for it."""
    try:
        submission = read_submission(audit_dir)
    except InputError as exc:
        return AuditVerification(False, "missing", str(exc))
    manifest = None
    if model is not None:
        manifest = dict(model) if isinstance(model, Mapping) else _model_manifest(Path(model))
    return verify_submission(submission, key=key, manifest=manifest)
