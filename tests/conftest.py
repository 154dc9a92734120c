"""Fixtures shared across the whole suite."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from urllib.parse import urlparse, urlunparse

import pytest
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from bastion.data import load_digits
from bastion.models.zoo import small_mlp, train_classifier

# The suite's models are tiny: one thread is faster than two threads contending for 2 cores
# (torch's own pool and the BLAS pools behind numpy and scikit-learn alike).
torch.set_num_threads(1)
threadpool_limits(1)


@pytest.fixture(scope="session")
def digits_mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A seeded MLP trained on 1,400 shuffled digits, with 300 held-out ``(x, y)``."""
    data = load_digits()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    x, y = data.x[perm], data.y[perm]
    net = train_classifier(small_mlp(64, 10), x[:1400], y[:1400], epochs=15, lr=5e-3, seed=0)
    return net, x[1400:1700], y[1400:1700]


# ------------------------------------------------------------------ real servers (.ci/run)
# PostgreSQL, S3 and Redis tests read BASTION_TEST_POSTGRES_URL, BASTION_TEST_S3_URL and
# BASTION_TEST_REDIS_URL (`eval "$(scripts/start-postgres.sh)"`, ...). Locally an unset
# variable skips the test with that reason; in CI (`CI` set) it fails it.


def _server_url(var: str, script: str) -> str:
    url = os.environ.get(var)
    if url:
        return url
    message = f'{var} is not set: start the server with `eval "$({script})"`'
    if os.environ.get("CI"):
        pytest.fail(f"{message} (required in CI)")
    pytest.skip(message)


@contextlib.contextmanager
def _fresh_postgres_database(prefix: str) -> Iterator[str]:
    base = _server_url("BASTION_TEST_POSTGRES_URL", "scripts/start-postgres.sh")
    import psycopg

    parsed = urlparse(base)
    admin = urlunparse(parsed._replace(scheme="postgresql"))
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunparse(parsed._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def server_url() -> Callable[[str, str], str]:
    """``server_url(VAR, script)``: the test server's URL, or skip (fail in CI) when unset."""
    return _server_url


@pytest.fixture(scope="session")
def fresh_postgres_database() -> Callable[[str], AbstractContextManager[str]]:
    """``with fresh_postgres_database(prefix) as url``: a new database, dropped on exit."""
    return _fresh_postgres_database
