"""Fixtures of the registry tests: every backend combination, against real servers.

PostgreSQL and S3 tests read ``BASTION_TEST_POSTGRES_URL`` and ``BASTION_TEST_S3_URL`` (set
them with ``eval "$(scripts/start-postgres.sh)"`` and ``eval "$(scripts/start-s3.sh)"``).
Locally a missing server skips those tests with the reason; in CI (``CI`` set) it fails them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import pytest

from bastion.artifacts.registry import Registry
from bastion.artifacts.signing import generate_keypair

BACKENDS = [
    pytest.param(("sqlite", "file"), id="sqlite-file"),
    pytest.param(("sqlite", "s3"), id="sqlite-s3"),
    pytest.param(("postgres", "file"), id="postgres-file"),
    pytest.param(("postgres", "s3"), id="postgres-s3"),
]


@pytest.fixture
def postgres_url(fresh_postgres_database: Callable[[str], Any]) -> Iterator[str]:
    """A fresh database on the test server, dropped afterwards."""
    with fresh_postgres_database("bastion_t") as url:
        yield url


@pytest.fixture
def s3_url(monkeypatch: pytest.MonkeyPatch, server_url: Callable[[str, str], str]) -> str:
    """A fresh prefix in the test bucket."""
    base = server_url("BASTION_TEST_S3_URL", "scripts/start-s3.sh")
    for var, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_DEFAULT_REGION", "us-east-1")):
        if not os.environ.get(var):
            monkeypatch.setenv(var, value)
    parsed = urlparse(base)
    return urlunparse(parsed._replace(path=f"{parsed.path.rstrip('/')}/t-{uuid.uuid4().hex[:12]}"))


def clean_scanner(path: Path) -> tuple[str, dict[str, Any]]:
    """Stands in for the artifact scanner in tests that are not about scanning."""
    verdict = "unsafe" if any(p.suffix == ".evil" for p in [path, *path.rglob("*")]) else "clean"
    return verdict, {"scanned": path.name}


@pytest.fixture(params=BACKENDS)
def urls(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    meta, store = request.param
    metadata_url = (request.getfixturevalue("postgres_url") if meta == "postgres"
                    else f"sqlite:///{tmp_path / 'registry.db'}")
    storage_url = (request.getfixturevalue("s3_url") if store == "s3"
                   else (tmp_path / "blobs").as_uri())
    return metadata_url, storage_url


@pytest.fixture
def make_registry(urls: tuple[str, str]) -> Iterator[Callable[..., Registry]]:
    """``make_registry(actor="alice", **kw)``: registries sharing this test's database and store."""
    made: list[Registry] = []

    def make(actor: str = "alice", **kw: Any) -> Registry:
        kw.setdefault("scanner", clean_scanner)
        reg = Registry(urls[0], urls[1], actor=actor, **kw)
        made.append(reg)
        return reg

    yield make
    for reg in made:
        reg.close()


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return generate_keypair("ed25519", tmp_path / "signer.pem", tmp_path / "signer.pub")


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    root = tmp_path / "model"
    (root / "sub").mkdir(parents=True)
    (root / "weights.bin").write_bytes(os.urandom(3000))
    (root / "config.json").write_text('{"hidden": 64}')
    (root / "sub" / "labels.txt").write_text("cat\ndog\n")
    return root
