"""The test PostgreSQL of tests/support/postgres.py: it starts unprivileged, each
test gets its own database, the store's role needs its password, and the
server can be stopped and started again (the outage tests need that)."""

from __future__ import annotations

import os
import subprocess

import psycopg
import pytest
from support.postgres import PG_PASSWORD, ROLE, PgServer, fresh_database, pg_bindir


def test_binaries_found_under_usr_lib_postgresql() -> None:
    bindir = pg_bindir()
    assert str(bindir).startswith("/usr/lib/postgresql/")
    assert (bindir / "initdb").is_file()


def test_server_runs_unprivileged_on_loopback(pg_server: PgServer) -> None:
    with pg_server.admin() as conn:
        version = conn.execute("SHOW server_version_num").fetchone()[0]
        listen = conn.execute("SHOW listen_addresses").fetchone()[0]
        fsync = conn.execute("SHOW fsync").fetchone()[0]
    assert int(version) >= 150000
    assert listen == "127.0.0.1"
    assert fsync == "off"
    if os.getuid() == 0:
        owner = subprocess.run(["ps", "-o", "user=", "-p", str(pg_server.proc.pid)], capture_output=True, text=True).stdout.strip()
        assert owner == "nobody"


def test_role_is_not_superuser_and_owns_its_database(pg_server: PgServer, pg_url: str, pg_database: str) -> None:
    with psycopg.connect(pg_url, password=pg_server.password) as conn:
        user, superuser = conn.execute("SELECT current_user, usesuper FROM pg_user WHERE usename = current_user").fetchone()
        owner = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()").fetchone()[0]
        conn.execute("CREATE TABLE t (x int)")  # the owner may create its tables in public
    assert (user, superuser, owner) == (ROLE, False, ROLE)


def test_fresh_databases_are_independent(pg_server: PgServer, pg_url: str) -> None:
    with psycopg.connect(pg_url, password=PG_PASSWORD, autocommit=True) as conn:
        conn.execute("CREATE TABLE jobs (id int)")
        conn.execute("INSERT INTO jobs VALUES (1)")
    with fresh_database(pg_server) as other:
        assert other not in pg_url
        with pg_server.connect(other) as conn:
            tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0]
            assert tables == 0
    with pg_server.admin() as conn:
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (other,)).fetchone()[0] == 0


def test_password_auth_and_a_wrong_password_is_refused(pg_server: PgServer, pg_url: str, pg_database: str) -> None:
    with psycopg.connect(pg_url, password=PG_PASSWORD) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with pg_server.admin() as conn:
        assert conn.execute("SELECT rolpassword LIKE 'SCRAM-SHA-256$%%' FROM pg_authid WHERE rolname = %s", (ROLE,)).fetchone() == (True,)
    for wrong in ("wrong", PG_PASSWORD + "x", ""):
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(pg_url, password=wrong, connect_timeout=5)
    # The Unix socket asks for the password too (only the admin superuser is trusted).
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(pg_server.socket_url(pg_database), password="wrong", connect_timeout=5)
    with psycopg.connect(pg_server.socket_url(pg_database), password=PG_PASSWORD) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (ROLE,)


def test_stop_and_start_keep_data_and_port(pg_server: PgServer, pg_url: str, pg_database: str) -> None:
    port = pg_server.port
    with psycopg.connect(pg_url, password=PG_PASSWORD, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (x int)")
        conn.execute("INSERT INTO kept VALUES (42)")
    held = psycopg.connect(pg_url, password=PG_PASSWORD, autocommit=True)
    with pg_server.stopped():
        assert not pg_server.running
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(pg_url, password=PG_PASSWORD, connect_timeout=2)
        with pytest.raises(psycopg.OperationalError):
            held.execute("SELECT 1")
    held.close()
    assert pg_server.running and pg_server.port == port
    with psycopg.connect(pg_url, password=PG_PASSWORD) as conn:
        assert conn.execute("SELECT x FROM kept").fetchall() == [(42,)]


def test_terminate_backends_cuts_the_database_connections(pg_server: PgServer, pg_url: str, pg_database: str) -> None:
    conns = [psycopg.connect(pg_url, password=PG_PASSWORD, autocommit=True) for _ in range(2)]
    try:
        assert pg_server.terminate_backends(pg_database) == 2
        for conn in conns:
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
        with psycopg.connect(pg_url, password=PG_PASSWORD) as conn:  # new connections still work
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        for conn in conns:
            conn.close()


def test_missing_postgresql_fails_naming_the_package(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import support.postgres as pg

    (tmp_path / "15" / "bin").mkdir(parents=True)  # a version directory without the server in it
    monkeypatch.setattr(pg, "PG_ROOT", tmp_path)
    with pytest.raises(pg.PostgresMissing, match="postgresql-15"):
        pg.pg_bindir()
