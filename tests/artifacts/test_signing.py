"""Signing and verification of model files and folders (OpenSSF model-signing layout)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from bastion.artifacts.signing import (
    PREDICATE_TYPE,
    generate_keypair,
    manifest_of,
    root_digest,
    sign,
    verify,
)
from bastion.errors import ConfigurationError, SignatureError

KINDS = ["ed25519", "ecdsa-p256"]


@pytest.fixture
def model(tmp_path: Path) -> Path:
    root = tmp_path / "model"
    (root / "sub").mkdir(parents=True)
    (root / "weights.bin").write_bytes(bytes(range(256)) * 64)
    (root / "config.json").write_text('{"layers": 2}')
    (root / "sub" / "vocab.txt").write_text("a\nb\n")
    return root


@pytest.fixture(params=KINDS)
def keys(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, Path]:
    return generate_keypair(request.param, tmp_path / "key.pem", tmp_path / "key.pub")


def test_round_trip_and_statement_layout(model: Path, keys: tuple[Path, Path]) -> None:
    priv, pub = keys
    sig = sign(model, priv)
    assert sig == model / "model.sig"
    result = verify(model, pub)
    assert result.ok and result.model_name == "model"
    assert set(result.files) == {"weights.bin", "config.json", "sub/vocab.txt"}
    bundle = json.loads(sig.read_text())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == PREDICATE_TYPE
    files = manifest_of(model, ignore=["model.sig"])
    assert statement["subject"][0]["digest"]["sha256"] == root_digest(files)
    assert {r["name"]: r["digest"] for r in statement["predicate"]["resources"]} == files
    assert len(bundle["verificationMaterial"]["publicKey"]["hint"]) == 64


def test_one_flipped_byte_fails_and_names_the_file(model: Path, keys: tuple[Path, Path]) -> None:
    priv, pub = keys
    sign(model, priv)
    data = bytearray((model / "weights.bin").read_bytes())
    data[1000] ^= 0x01
    (model / "weights.bin").write_bytes(bytes(data))
    with pytest.raises(SignatureError, match=r"changed: weights\.bin"):
        verify(model, pub)
    result = verify(model, pub, strict=False)
    assert not result.ok
    assert result.changed == ("weights.bin",)
    assert result.extra == () and result.missing == ()


def test_extra_and_missing_files_are_named(model: Path, keys: tuple[Path, Path]) -> None:
    priv, pub = keys
    sign(model, priv)
    (model / "sub" / "vocab.txt").unlink()
    (model / "payload.pkl").write_bytes(b"x")
    result = verify(model, pub, strict=False)
    assert not result.ok
    assert result.missing == ("sub/vocab.txt",)
    assert result.extra == ("payload.pkl",)
    with pytest.raises(SignatureError, match=r"missing: sub/vocab\.txt.*extra: payload\.pkl"):
        verify(model, pub)


def test_single_file_signature_beside_it(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    priv, pub = keys
    f = tmp_path / "clf.onnx"
    f.write_bytes(b"\x08\x01model")
    sig = sign(f, priv)
    assert sig == tmp_path / "clf.onnx.sig"
    assert verify(f, pub).files == {".": manifest_of(f)["."]}
    f.write_bytes(b"\x08\x01modeL")
    assert verify(f, pub, strict=False).changed == (".",)


def test_wrong_key_fails(model: Path, tmp_path: Path, keys: tuple[Path, Path]) -> None:
    priv, _ = keys
    sign(model, priv)
    for kind in KINDS:
        _, other = generate_keypair(kind, tmp_path / f"o-{kind}.pem", tmp_path / f"o-{kind}.pub")
        with pytest.raises(SignatureError, match="another key"):
            verify(model, other)
        assert not verify(model, other, strict=False).ok


def test_forged_statement_fails_even_without_key_hint(model: Path, keys: tuple[Path, Path]) -> None:
    priv, pub = keys
    sig = sign(model, priv)
    bundle = json.loads(sig.read_text())
    del bundle["verificationMaterial"]["publicKey"]["hint"]
    payload = base64.b64decode(bundle["dsseEnvelope"]["payload"])
    statement = json.loads(payload)
    statement["predicate"]["resources"][0]["digest"] = "0" * 64
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    sig.write_text(json.dumps(bundle))
    with pytest.raises(SignatureError, match="does not verify"):
        verify(model, pub)


def test_bad_kind_and_bad_key_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="ed25519"):
        generate_keypair("rsa", tmp_path / "a", tmp_path / "b")  # type: ignore[arg-type]
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(ConfigurationError, match="cannot read private key"):
        sign(tmp_path, tmp_path / "junk.pem")


def test_symlink_refused(model: Path, keys: tuple[Path, Path]) -> None:
    (model / "link").symlink_to(model / "config.json")
    with pytest.raises(Exception, match="symbolic link"):
        sign(model, keys[0])


def test_interoperates_with_model_signing(model: Path, tmp_path: Path) -> None:
    ms = pytest.importorskip("model_signing", reason="model-signing is not installed")
    priv, pub = generate_keypair("ecdsa-p256", tmp_path / "ec.pem", tmp_path / "ec.pub")
    # bastion signs, model-signing verifies
    sign(model, priv)
    ms.verifying.Config().use_elliptic_key_verifier(public_key=pub).verify(
        model, model / "model.sig"
    )
    # model-signing signs, bastion verifies (and detects a change)
    (model / "model.sig").unlink()
    hashing = ms.hashing.Config().set_ignored_paths(paths=["model.sig"])
    ms.signing.Config().use_elliptic_key_signer(private_key=priv).set_hashing_config(
        hashing
    ).sign(model, model / "model.sig")
    assert verify(model, pub).ok
    (model / "config.json").write_text('{"layers": 3}')
    assert verify(model, pub, strict=False).changed == ("config.json",)
    # single files too, both ways
    f = model / "weights.bin"
    sign(f, priv, out=tmp_path / "w.sig")
    ms.verifying.Config().use_elliptic_key_verifier(public_key=pub).verify(f, tmp_path / "w.sig")
    ms.signing.Config().use_elliptic_key_signer(private_key=priv).sign(f, tmp_path / "w2.sig")
    assert verify(f, pub, signature=tmp_path / "w2.sig").files == {".": manifest_of(f)["."]}
    # and a tampered bastion signature is rejected by model-signing
    sign(model, priv)
    (model / "config.json").write_text('{"layers": 4}')
    with pytest.raises(ValueError, match=r"config\.json"):
        ms.verifying.Config().use_elliptic_key_verifier(public_key=pub).verify(
            model, model / "model.sig"
        )
