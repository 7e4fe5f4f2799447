"""The client's tests run against the real `creditgraph serve` (`$CREDITGRAPH_BIN`, which
scripts/test.sh points at the workspace's build) on both stores: a fresh SQLite file, and a fresh
database of the PostgreSQL cluster `$CREDITGRAPH_TEST_POSTGRES_URL` names (required: these tests
never skip). The LLM provider of runs is `scripted_provider.py`, a test double speaking the OpenAI
protocol (the one thing outside the service)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from creditgraph.testing import CreditgraphServer, ServerStart

HERE = os.path.dirname(__file__)


def fresh_postgres_database() -> str:
    admin = os.environ.get("CREDITGRAPH_TEST_POSTGRES_URL")
    if not admin:
        raise RuntimeError("CREDITGRAPH_TEST_POSTGRES_URL is not set: run the tests with scripts/test.sh")
    name = f"cg_python_{uuid.uuid4().hex[:12]}"
    subprocess.run(["psql", admin, "-q", "-c", f"CREATE DATABASE {name}"], check=True, capture_output=True)
    parts = urlsplit(admin)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


@pytest.fixture(scope="session")
def provider() -> Iterator[str]:
    """The scripted LLM provider's base URL (one process for the session)."""
    process = subprocess.Popen([sys.executable, os.path.join(HERE, "scripted_provider.py")],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    port = process.stdout.readline().strip()
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        process.wait()


@pytest.fixture(params=["sqlite", "postgres"])
def server(request: pytest.FixtureRequest, provider: str) -> Iterator[CreditgraphServer]:
    database = None if request.param == "sqlite" else fresh_postgres_database()
    env = dict(os.environ, CREDITGRAPH_LLM_BASE_URL=provider, CREDITGRAPH_LLM_API_KEY="test")
    with ServerStart(database=database, env=env) as started:
        yield started


def new_account() -> str:
    return f"acct-{uuid.uuid4().hex[:10]}"
