"""Reading models as an attacker would race them: one read per file, no links, no FIFOs.

Also the command-line robustness of ``sign``/``verify``/``keygen``/``decrypt``: clean one-line
errors, never a hang or a traceback, never partial plaintext after a crash.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from bastion.artifacts import signing
from bastion.artifacts.signing import (
    generate_keypair,
    list_files,
    manifest_of,
    read_file_once,
    read_model,
    sign,
    verify,
)
from bastion.errors import ConfigurationError, InputError


def _run(cli: typer.Typer, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def _finishes(fn: Callable[[], Any], fifo: Path | None = None) -> Any:
    """Run ``fn`` in a thread; fail (and unblock a FIFO reader) if it hangs."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = fn()
        except Exception as exc:
            out["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(20)
    if t.is_alive():
        if fifo is not None:  # open the writing end so the blocked reader returns
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        t.join(5)
        pytest.fail("the call hung on a FIFO")
    if "error" in out:
        raise out["error"]
    return out.get("value")


@pytest.fixture
def model(tmp_path: Path) -> Path:
    root = tmp_path / "model"
    root.mkdir()
    (root / "w.bin").write_bytes(b"weights" * 100)
    return root


def test_fifo_socket_and_device_are_refused_without_hanging(model: Path, tmp_path: Path) -> None:
    priv, pub = generate_keypair("ed25519", tmp_path / "k.pem", tmp_path / "k.pub")
    sign(model, priv)
    fifo = model / "pipe"
    os.mkfifo(fifo)
    for call in (lambda: sign(model, priv), lambda: verify(model, pub),
                 lambda: manifest_of(model), lambda: read_file_once(fifo)):
        with pytest.raises(InputError, match=r"pipe is a FIFO \(named pipe\), not a regular"):
            _finishes(call, fifo)
    fifo.unlink()
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(model / "s.sock"))
        with pytest.raises(InputError, match=r"s\.sock is a socket"):
            _finishes(lambda: list_files(model))
        with pytest.raises(InputError, match=r"s\.sock is a socket"):
            read_file_once(model / "s.sock")
    finally:
        sock.close()
    with pytest.raises(InputError, match="/dev/null is a character device"):
        read_model("/dev/null")


def test_a_link_is_never_followed_even_when_swapped_in(model: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("api-key=hunter2")
    (model / "w.bin").unlink()
    (model / "w.bin").symlink_to(secret)
    with pytest.raises(InputError, match=r"w\.bin is a symbolic link"):
        read_file_once(model / "w.bin")  # a link swapped in after listing: O_NOFOLLOW
    with pytest.raises(InputError, match="symbolic link"):
        signing.hash_file(model / "w.bin")


def test_a_file_that_changes_while_read_is_refused(model: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    target = model / "w.bin"
    real_fdopen = os.fdopen

    class Growing:
        """The reader sees the file grow after its first chunk (another writer)."""

        def __init__(self, fh: Any) -> None:
            self.fh, self.calls = fh, 0

        def read(self, n: int) -> bytes:
            self.calls += 1
            if self.calls == 1:
                with open(target, "ab") as w:
                    w.write(b"MALICIOUS")
            return bytes(self.fh.read(n))

        def __enter__(self) -> Growing:
            return self

        def __exit__(self, *exc: object) -> None:
            self.fh.close()

    def fdopen(fd: int, mode: str = "r", *a: Any, **kw: Any) -> Any:
        fh = real_fdopen(fd, mode, *a, **kw)
        return Growing(fh) if mode == "rb" and kw.get("closefd") is False else fh

    monkeypatch.setattr(signing.os, "fdopen", fdopen)
    with pytest.raises(InputError, match=r"w\.bin changed while it was read"):
        read_file_once(target)


def test_the_copy_is_exactly_the_bytes_hashed(model: Path, tmp_path: Path) -> None:
    (model / "sub").mkdir()
    (model / "sub" / "a.txt").write_text("a")
    read = read_model(model, copy_to=tmp_path / "copy")
    assert manifest_of(tmp_path / "copy") == {k: v for k, (v, _) in read.items()}
    assert oct((tmp_path / "copy" / "w.bin").stat().st_mode & 0o777) == "0o600"


def test_keygen_never_overwrites_and_handles_dangling_links(cli: typer.Typer,
                                                            tmp_path: Path) -> None:
    code, _ = _run(cli, "keygen", str(tmp_path / "a.pem"))
    assert code == 0
    before = (tmp_path / "a.pem.pub").read_bytes()
    # a new private key whose public half would overwrite an existing public key
    code, out = _run(cli, "keygen", str(tmp_path / "b.pem"), str(tmp_path / "a.pem.pub"))
    assert code == 2 and "already exists" in out
    assert (tmp_path / "a.pem.pub").read_bytes() == before and not (tmp_path / "b.pem").exists()
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for kind in ("ed25519", "aes-256"):
        code, out = _run(cli, "keygen", str(tmp_path / "dangling"), "--kind", kind)
        assert code == 2 and "already exists" in out
    assert not (tmp_path / "nowhere").exists()
    with pytest.raises(ConfigurationError, match="already exists"):
        generate_keypair("ed25519", tmp_path / "c.pem", tmp_path / "dangling")
    assert not (tmp_path / "c.pem").exists()


def test_cli_errors_are_one_line_and_escaped(cli: typer.Typer, model: Path,
                                             tmp_path: Path) -> None:
    priv, pub = generate_keypair("ed25519", tmp_path / "k.pem", tmp_path / "k.pub")
    code, out = _run(cli, "sign", str(tmp_path / "t" / "[/x]"), "--key", str(priv))
    assert code == 2 and "[/x]" in out and "Traceback" not in out
    code, out = _run(cli, "sign", str(tmp_path / "[bold red]gone"), "--key", str(priv))
    assert code == 2 and "[bold red]gone" in out
    bad = tmp_path / "bad.sig"
    for text in ("[1, 2]", "not json", '{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3'
                 '+json", "dsseEnvelope": {"payloadType": "x", "payload": "", "signatures": []}}'):
        bad.write_text(text)
        code, out = _run(cli, "verify", str(model), "--key", str(pub), "--signature", str(bad))
        assert code in (1, 2) and "Traceback" not in out and out.startswith("error:"), out
    code, out = _run(cli, "verify", str(model / "w.bin" / "x"), "--key", str(pub))
    assert code == 2 and "Not a directory" in out


_DECRYPT_KILLED = textwrap.dedent("""
    import os, signal, sys
    from bastion.artifacts import encryption
    src, dst, keyfile = sys.argv[1:4]
    real = encryption.decrypt_stream
    def killed(fin, fout, kek):
        class Killer:
            def __init__(self): self.n = 0
            def write(self, data):
                fout.write(data); fout.flush(); os.fsync(fout.fileno())
                self.n += 1
                if self.n == 2:
                    os.kill(os.getpid(), signal.SIGKILL)
                return len(data)
        return real(fin, Killer(), kek)
    encryption.decrypt_stream = killed
    encryption.decrypt_file(src, dst, encryption.load_kek(keyfile))
""")


def test_decrypt_killed_leaves_no_plaintext(tmp_path: Path) -> None:
    from bastion.artifacts.encryption import decrypt_file, encrypt_file, generate_kek, load_kek

    keyfile = generate_kek(tmp_path / "kek")
    plain = b"SECRET-ROW\n" * 40_000
    (tmp_path / "p.csv").write_bytes(plain)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    encrypt_file(tmp_path / "p.csv", out_dir / "d.enc", load_kek(keyfile), chunk_size=4096)
    proc = subprocess.run([sys.executable, "-c", _DECRYPT_KILLED, str(out_dir / "d.enc"),
                           str(out_dir / "d.csv"), str(keyfile)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = sorted(p.name for p in out_dir.iterdir())
    if sys.platform == "linux":  # unnamed (O_TMPFILE) output: nothing survives the kill
        assert left == ["d.enc"]
    # elsewhere a named leftover may survive; the next decryption to the path removes it
    decrypt_file(out_dir / "d.enc", out_dir / "d.csv", load_kek(keyfile))
    assert sorted(p.name for p in out_dir.iterdir()) == ["d.csv", "d.enc"]
    assert (out_dir / "d.csv").read_bytes() == plain
