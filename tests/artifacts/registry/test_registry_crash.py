"""Crash safety and multi-process concurrency of pushes, on every backend."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from bastion.artifacts.registry import Registry
from bastion.errors import RegistryError

Make = Callable[..., Registry]


def _file(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


_KILLER = textwrap.dedent("""
    import os, signal, sys
    from bastion.artifacts.registry import Registry, audit, core, storage
    meta, store, path, point = sys.argv[1:5]
    def die(*a, **k):
        os.kill(os.getpid(), signal.SIGKILL)
    if point == "upload":  # half the blobs stored at their addresses
        for cls in (storage.LocalStorage, storage.S3Storage):
            orig = cls.commit
            calls = []
            def commit(self, key, final, _orig=orig, _calls=calls):
                out = _orig(self, key, final)
                _calls.append(out)
                if len(_calls) == 2:
                    die()
                return out
            cls.commit = commit
    elif point == "before_commit":
        Registry._commit_version = die
    elif point == "inside_transaction":
        orig_append = audit.append
        def append(session, **kw):
            if kw.get("action") == "push":
                session.flush()
                die()
            return orig_append(session, **kw)
        core.audit.append = append
    reg = Registry(meta, store, actor="alice", scanner=lambda p: ("clean", {}))
    reg.push("victim", path)
    sys.exit(3)
""")


@pytest.mark.parametrize("point", ["upload", "before_commit", "inside_transaction"])
def test_killed_push_leaves_no_visible_version(make_registry: Make, urls: tuple[str, str],
                                               model_dir: Path, point: str) -> None:
    reg = make_registry()
    proc = subprocess.run([sys.executable, "-c", _KILLER, *urls, str(model_dir), point],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    with pytest.raises(RegistryError, match="no model named 'victim'"):
        reg.get("victim")
    assert reg.list() == []
    v = reg.push("victim", model_dir)
    assert v.version == 1
    assert reg.verify_audit_log().ok


_PUSHER = textwrap.dedent("""
    import sys
    from bastion.artifacts.registry import Registry
    meta, store, path = sys.argv[1:4]
    reg = Registry(meta, store, actor="alice", scanner=lambda p: ("clean", {}))
    for _ in range(2):
        print(reg.push("multi", path).version)
""")


@pytest.mark.slow
def test_concurrent_pushes_from_processes(make_registry: Make, urls: tuple[str, str],
                                          tmp_path: Path) -> None:
    make_registry().push("multi", _file(tmp_path, "seed", b"seed"))  # creates the model
    procs = [subprocess.Popen([sys.executable, "-c", _PUSHER, *urls,
                               str(_file(tmp_path, f"p{i}", f"proc {i}".encode()))],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(3)]
    versions: list[int] = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        versions.extend(int(line) for line in out.split())
    assert sorted(versions) == list(range(2, 8))
    assert make_registry().verify_audit_log().ok


