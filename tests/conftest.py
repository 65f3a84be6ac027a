"""Fixtures every test folder may use: the PostgreSQL server of the store tests (tests/support/postgres.py) and the store contract suite's backends (tests/support/stores.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.postgres import PgServer, fresh_database, running_server
from support.stores import BACKENDS, StoreFactory, factory


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


@pytest.fixture(params=BACKENDS)
def store_backend(request: pytest.FixtureRequest) -> str:
    """The store contract suite (tests/support/stores.py): every test that asks runs once on SQLite, once on PostgreSQL."""
    return str(request.param)


@pytest.fixture
def open_store(store_backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[StoreFactory]:
    """``open_store(**kwargs) -> Store`` on ``store_backend``; every call reaches the same store (same state_dir, same database); all closed at the end."""
    url, password = "", None
    if store_backend == "postgresql":
        server: PgServer = request.getfixturevalue("pg_server")
        url, password = request.getfixturevalue("pg_url"), server.password
    with factory(store_backend, tmp_path / "state", url, password) as made:
        yield made


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    """A daemon run in the test process freezes what exists once it is ready
    (gatewayd/memory.py): give the objects back to the collector afterwards,
    or every test's cyclic garbage from before would stay for the session."""
    yield
    if gc.get_freeze_count():
        gc.unfreeze()
