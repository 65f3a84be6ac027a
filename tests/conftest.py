"""Fixtures every test folder may use: the PostgreSQL server of the store tests (tests/support/postgres.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.postgres import PgServer, fresh_database, running_server


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL per pytest process (per xdist worker), started by the first test that asks for it."""
    with running_server() as server:
        yield server


@pytest.fixture
def pg_database(pg_server: PgServer) -> Iterator[str]:
    """The name of a new empty database on ``pg_server`` owned by its role; dropped afterwards."""
    with fresh_database(pg_server) as name:
        yield name


@pytest.fixture
def pg_url(pg_server: PgServer, pg_database: str) -> str:
    """``postgresql://gatewayd@127.0.0.1:PORT/<fresh database>``; its password is ``pg_server.password``."""
    return pg_server.url(pg_database)
