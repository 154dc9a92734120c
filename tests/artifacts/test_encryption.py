"""Envelope encryption: round trips, tamper, truncation, reordering and wrong keys."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from bastion.artifacts.encryption import (
    MAGIC,
    decrypt_file,
    encrypt_file,
    generate_kek,
    load_kek,
    read_header,
)
from bastion.errors import ConfigurationError, DecryptionError

CHUNK = 64
TAG = 16


@pytest.fixture
def kek() -> bytes:
    return bytes(range(32))


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    p = tmp_path / "data.bin"
    p.write_bytes(os.urandom(CHUNK * 5 + 17))
    return p


def _enc(plain: Path, kek: bytes, **kw: object) -> Path:
    out = plain.with_suffix(".enc")
    encrypt_file(plain, out, kek, chunk_size=CHUNK, **kw)  # type: ignore[arg-type]
    return out


def _body_offset(path: Path) -> int:
    with open(path, "rb") as fh:
        read_header(fh)
        return fh.tell()


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK * 3, CHUNK * 5 + 17])
def test_round_trip_many_chunks(tmp_path: Path, kek: bytes, size: int) -> None:
    src = tmp_path / "in.bin"
    data = os.urandom(size)
    src.write_bytes(data)
    enc = _enc(src, kek, metadata={"dataset": "digits", "rows": 3})
    blob = enc.read_bytes()
    assert blob.startswith(MAGIC)
    assert data[:16] not in blob or size < 16
    n_chunks = max(1, -(-size // CHUNK))
    assert len(blob) == _body_offset(enc) + size + n_chunks * TAG
    meta = decrypt_file(enc, tmp_path / "out.bin", kek)
    assert meta == {"dataset": "digits", "rows": 3}
    assert (tmp_path / "out.bin").read_bytes() == data


def test_each_object_has_its_own_data_key(plain: Path, kek: bytes, tmp_path: Path) -> None:
    a = encrypt_file(plain, tmp_path / "a.enc", kek, chunk_size=CHUNK)
    b = encrypt_file(plain, tmp_path / "b.enc", kek, chunk_size=CHUNK)
    with open(a, "rb") as fa, open(b, "rb") as fb:
        ha, hb = read_header(fa)[0], read_header(fb)[0]
    assert ha["wrapped_key"] != hb["wrapped_key"]
    assert ha["kek_id"] == hb["kek_id"]
    assert a.read_bytes()[-64:] != b.read_bytes()[-64:]


def test_flipped_ciphertext_byte_fails_and_writes_nothing(
    plain: Path, kek: bytes, tmp_path: Path
) -> None:
    enc = _enc(plain, kek)
    data = bytearray(enc.read_bytes())
    data[_body_offset(enc) + CHUNK + TAG + 3] ^= 0x80  # inside chunk 1
    enc.write_bytes(bytes(data))
    out = tmp_path / "out.bin"
    with pytest.raises(DecryptionError, match="chunk 1 failed authentication"):
        decrypt_file(enc, out, kek)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.bin")]


@pytest.mark.parametrize("cut", ["chunk_boundary", "mid_chunk", "header"])
def test_truncation_detected(plain: Path, kek: bytes, tmp_path: Path, cut: str) -> None:
    enc = _enc(plain, kek)
    data = enc.read_bytes()
    body = _body_offset(enc)
    end = {"chunk_boundary": body + 2 * (CHUNK + TAG), "mid_chunk": len(data) - 5,
           "header": body - 3}[cut]
    enc.write_bytes(data[:end])
    with pytest.raises(DecryptionError):
        decrypt_file(enc, tmp_path / "out.bin", kek)
    assert not (tmp_path / "out.bin").exists()


def test_reordered_and_appended_chunks_detected(plain: Path, kek: bytes, tmp_path: Path) -> None:
    enc = _enc(plain, kek)
    data = enc.read_bytes()
    body = _body_offset(enc)
    c = CHUNK + TAG
    chunks = [data[body + i * c: body + (i + 1) * c] for i in range(2)]
    swapped = data[:body] + chunks[1] + chunks[0] + data[body + 2 * c:]
    enc.write_bytes(swapped)
    with pytest.raises(DecryptionError, match="chunk 0"):
        decrypt_file(enc, tmp_path / "o1", kek)
    enc.write_bytes(data + data[body: body + c])
    with pytest.raises(DecryptionError):
        decrypt_file(enc, tmp_path / "o2", kek)


def test_metadata_is_authenticated(plain: Path, kek: bytes, tmp_path: Path) -> None:
    enc = _enc(plain, kek, metadata={"owner": "alice"})
    data = enc.read_bytes()
    forged = data.replace(b'"owner": "alice"', b'"owner": "mally"')
    assert forged != data
    enc.write_bytes(forged)
    with pytest.raises(DecryptionError, match="chunk 0"):
        decrypt_file(enc, tmp_path / "out.bin", kek)


def test_wrong_key(plain: Path, kek: bytes, tmp_path: Path) -> None:
    enc = _enc(plain, kek)
    with pytest.raises(DecryptionError, match=r"wrong key-encryption key.*key id"):
        decrypt_file(enc, tmp_path / "out.bin", bytes(32))
    with pytest.raises(ConfigurationError, match="32 bytes"):
        decrypt_file(enc, tmp_path / "out.bin", b"short")
    not_ours = tmp_path / "plain.enc"
    not_ours.write_bytes(b"PK\x03\x04 something else")
    with pytest.raises(DecryptionError, match="bad magic"):
        decrypt_file(not_ours, tmp_path / "out.bin", kek)


def test_load_kek_from_file_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = generate_kek(tmp_path / "kek")
    assert path.stat().st_mode & 0o777 == 0o600
    key = load_kek(path)
    assert len(key) == 32
    assert key == base64.b64decode(path.read_text().strip())
    with pytest.raises(FileExistsError):
        generate_kek(path)
    monkeypatch.setenv("BASTION_KEK", key.hex())
    assert load_kek() == key
    monkeypatch.setenv("MY_KEK", base64.b64encode(key).decode())
    assert load_kek(env="MY_KEK") == key
    monkeypatch.delenv("BASTION_KEK")
    with pytest.raises(ConfigurationError, match="BASTION_KEK"):
        load_kek()
    (tmp_path / "bad").write_text("too short")
    with pytest.raises(ConfigurationError, match="256-bit"):
        load_kek(tmp_path / "bad")


def test_header_is_json_with_expected_fields(plain: Path, kek: bytes) -> None:
    enc = _enc(plain, kek, metadata={"k": "v"})
    with open(enc, "rb") as fh:
        header, digest = read_header(fh)
    assert header["alg"] == "AES-256-GCM" and header["wrap"] == "AES-KW"
    assert header["chunk_size"] == CHUNK and header["metadata"] == {"k": "v"}
    assert len(base64.b64decode(header["wrapped_key"])) == 40
    assert len(digest) == 32
    assert json.loads(json.dumps(header)) == header


class _Zeros:
    """A readable stream of ``n`` bytes that never exists in memory as a whole."""

    def __init__(self, n: int) -> None:
        self.left = n

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        self.left -= size
        return bytes(size)


class _Sink:
    """A writable stream that only counts bytes (and keeps the last few)."""

    def __init__(self) -> None:
        self.n = 0
        self.tail = b""

    def write(self, data: bytes) -> int:
        self.n += len(data)
        self.tail = (self.tail + bytes(data))[-64:]
        return len(data)


def test_streaming_memory_stays_bounded(kek: bytes) -> None:
    import io
    import tracemalloc

    from bastion.artifacts.encryption import decrypt_stream, encrypt_stream

    total, chunk = 48 << 20, 1 << 20
    tracemalloc.start()
    try:
        sink = _Sink()
        encrypt_stream(_Zeros(total), sink, kek, chunk_size=chunk)  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sink.n > total
    assert peak < 8 * chunk, f"peak {peak} bytes: the whole object was buffered"
    # and a small object decrypts through the same streaming path
    buf = io.BytesIO()
    encrypt_stream(io.BytesIO(b"abc" * 100), buf, kek, chunk_size=7)
    out = io.BytesIO()
    buf.seek(0)
    decrypt_stream(buf, out, kek)
    assert out.getvalue() == b"abc" * 100
