"""Shared fixtures: a real database per test (SQLite file, or PostgreSQL on 127.0.0.1:5432).

Each test session makes its own uniquely named PostgreSQL database and drops it at the end;
tests truncate it between them. `CROSSPOST_TEST_PG` overrides the server URL.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from crosspost.queue import Queue

REPO = Path(__file__).resolve().parents[1]
PG_SERVER = os.environ.get("CROSSPOST_TEST_PG", "postgresql://postgres@127.0.0.1:5432")


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("CROSSPOST_ENV_FILE", "/nonexistent/.env")


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session (per xdist worker), dropped after."""
    name = f"crosspost_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{PG_SERVER}/{name}"
    queue = Queue(url)
    queue.upgrade()
    queue.close()
    try:
        yield url
    finally:
        with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _truncate(url: str) -> None:
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as c:
        c.execute(
            "TRUNCATE posts, deliveries, attempts, mirror_posts, mirror_events"
            " RESTART IDENTITY CASCADE"
        )


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every queue test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'queue.db'}"
    url: str = request.getfixturevalue("pg_database")
    _truncate(url)
    return url


@pytest.fixture
def queue(database_url: str) -> Iterator[Queue]:
    q = Queue(database_url)
    q.upgrade()
    yield q
    q.close()


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """The session's PostgreSQL database, emptied: for tests that need PostgreSQL only
    (several worker processes on one queue)."""
    _truncate(pg_database)
    return pg_database
