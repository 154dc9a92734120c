"""Fixtures of the access tests: each database test runs on SQLite and on PostgreSQL.

PostgreSQL tests read ``BASTION_TEST_POSTGRES_URL`` (start a server with
``eval "$(scripts/start-postgres.sh)"``). Locally an unset variable skips them with that
reason; in CI (``CI`` set) it fails them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlparse, urlunparse

import pytest

from bastion.access import AccessStore


@pytest.fixture(scope="session")
def postgres_database(fresh_postgres_database: Callable[[str], Any]) -> Iterator[str]:
    """One fresh database on the test server for the session, dropped afterwards."""
    with fresh_postgres_database("bastion_acc") as url:
        yield url


@pytest.fixture
def postgres_url(postgres_database: str) -> Iterator[str]:
    """A URL whose connections work in a fresh schema of the session database (cheaper
    than a database per test); the schema is dropped afterwards."""
    import psycopg

    parsed = urlparse(postgres_database)
    plain = urlunparse(parsed._replace(scheme="postgresql"))
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    query = urlencode({"options": f"-csearch_path={schema}"})
    try:
        yield urlunparse(parsed._replace(query=query))
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty access database, on each backend."""
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path / 'access.db'}"


@pytest.fixture
def make_store(db_url: str) -> Iterator[Callable[..., AccessStore]]:
    """``make_store(**kw)``: stores sharing this test's database (``cache_ttl=0`` default)."""
    made: list[AccessStore] = []

    def make(**kw: Any) -> AccessStore:
        kw.setdefault("cache_ttl", 0)
        store = AccessStore(db_url, **kw)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def store(make_store: Callable[..., AccessStore]) -> AccessStore:
    """A store with an admin ``root``, a consumer ``app`` on model:fraud, an auditor ``eve``
    and a data scientist ``dana`` on model:* and dataset:credit."""
    s = make_store()
    s.add_identity("root", actor="setup")
    s.grant("root", "admin", "*", actor="setup")
    s.add_identity("app", kind="service", actor="root")
    s.grant("app", "consumer", "model:fraud", actor="root")
    s.add_identity("eve", actor="root")
    s.grant("eve", "auditor", "*", actor="root")
    s.add_identity("dana", actor="root")
    s.grant("dana", "data_scientist", "model:*", actor="root")
    s.grant("dana", "data_scientist", "dataset:credit", actor="root")
    return s
