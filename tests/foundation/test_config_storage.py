"""[storage] database_url, database_password(_file) and lease (issue 17):
parsed and checked at load, the password never printed, and handed to the
store beside the URL. The URLs that check-config reads point at the test's
real PostgreSQL (tests/support/postgres.py), so they stay true once
check-config connects to the database."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from support.foundation import gatewayd
from support.postgres import PG_PASSWORD, PgServer
from gatewayd.config import ConfigError, config_warnings, load_config, redact_url
from gatewayd.runtime import store_from_config

SECRET = "hunter2-db-secret"


def problems_of(write_config, storage: dict, **kw) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write_config({"storage": storage}), env={}, **kw)
    return info.value.problems


def test_defaults_keep_sqlite_in_state_dir(write_config) -> None:
    c = load_config(write_config(), env={})
    assert (c.storage.database_url, c.storage.database_password, c.storage.lease, c.storage.postgres) == ("", "", 30.0, False)


@pytest.mark.parametrize("url", [
    "postgresql://gatewayd@db.example.com:5432/gatewayd",
    "postgres://gatewayd@db.example.com/gatewayd?sslmode=verify-full",
    "postgresql://gatewayd@/gatewayd?host=/run/postgresql&options=-c%20statement_timeout%3D5000",
    "postgresql://gatewayd@db1.example.com:5432,db2.example.com:5433/gatewayd?target_session_attrs=read-write",
    "postgresql://gatewayd@[::1]:5432/gatewayd",
])
def test_postgresql_urls_are_accepted(write_config, url: str) -> None:
    c = load_config(write_config({"storage": {"database_url": url, "lease": "2m"}}), env={})
    assert c.storage.database_url == url and c.storage.postgres
    assert c.storage.lease == 120.0


@pytest.mark.parametrize("url", [
    "mysql://gatewayd@db.example.com/gatewayd",
    "sqlite:///var/lib/gatewayd/gatewayd.db",
    "db.example.com:5432",
    "postgresql:gatewayd",
    "POSTGRESQL://gatewayd@db.example.com/gatewayd",
    "postgresql://gatewayd@db.example.com/gatewayd?no_such_parameter=1",
    "postgresql://gatewayd@db.example.com:99999/gatewayd",
    "postgresql://gatewayd@db.example.com:abc/gatewayd",
    "postgresql://gatewayd@db.example.com/gate way",
    5,
    True,
])
def test_other_values_are_refused_naming_the_key(write_config, url) -> None:
    problems = problems_of(write_config, {"database_url": url})
    assert len(problems) == 1 and problems[0].startswith("storage.database_url: "), problems


@pytest.mark.parametrize("url", [
    f"mysql://gatewayd:{SECRET}@db.example.com/gatewayd",
    f"postgresql://gatewayd:{SECRET}@db.example.com/gatewayd?no_such_parameter=1",
    f"postgresql://gatewayd@db.example.com/gatewayd?password={SECRET}&no_such_parameter=1",
    f"postgresql://gatewayd:{SECRET}@db.example.com:abc/gatewayd",
    # libpq's own messages quote the part they could not read:
    f"postgresql://gatewayd:{SECRET}%zz@db.example.com/gatewayd",
    f"postgresql://gatewayd:{SECRET}%00@db.example.com/gatewayd",
    f"postgresql://gatewayd@db.example.com/gatewayd?password={SECRET}%zz",
    f"postgresql://gatewayd:{SECRET}@[db.example.com/gatewayd",
    f"postgresql://gatewayd:{SECRET}/x@db.example.com/gatewayd?no_such_parameter=1",
])
def test_a_refused_url_is_shown_without_its_password(write_config, url: str) -> None:
    problems = problems_of(write_config, {"database_url": url})
    assert problems[0].startswith("storage.database_url: ") and "***" in problems[0], problems
    assert SECRET not in "\n".join(problems)


def test_redact_url() -> None:
    assert redact_url("postgresql://gatewayd@db/gatewayd") == "postgresql://gatewayd@db/gatewayd"
    assert redact_url(f"postgresql://gatewayd:{SECRET}@db:5432/gatewayd") == "postgresql://gatewayd:***@db:5432/gatewayd"
    assert redact_url("postgresql://u:p%40ss%3Aw@db/x?sslmode=require&PASSWORD=abc&x=1") == "postgresql://u:***@db/x?sslmode=require&PASSWORD=***&x=1"
    assert redact_url("postgresql://u:a@b/c@db/x#f") == "postgresql://u:***@db/x#f"
    assert redact_url("postgresql://u:s@[db/x") == "postgresql://u:***@[db/x"
    assert redact_url("postgresql://u@db/x?password=s#f") == "postgresql://u@db/x?password=***#f"
    assert redact_url("") == ""


def test_password_inline_or_from_a_file_never_both(write_config, tmp_path) -> None:
    url = "postgresql://gatewayd@db.example.com/gatewayd"
    c = load_config(write_config({"storage": {"database_url": url, "database_password": SECRET}}), env={})
    assert c.storage.database_password == SECRET
    (tmp_path / "database-password").write_text(SECRET + "\n")
    c = load_config(write_config({"storage": {"database_url": url, "database_password_file": "database-password"}}), env={})
    assert c.storage.database_password == SECRET
    assert SECRET not in repr(c)
    both = problems_of(write_config, {"database_url": url, "database_password": SECRET, "database_password_file": "database-password"})
    assert [p.split(":")[0] for p in both] == ["storage.database_password"] and "not both" in both[0]
    missing = problems_of(write_config, {"database_url": url, "database_password_file": "nowhere"})
    assert missing[0].startswith("storage.database_password_file: file not found"), missing


def test_password_needs_postgresql_and_only_one_place(write_config, tmp_path) -> None:
    lonely = problems_of(write_config, {"database_password": SECRET})
    assert len(lonely) == 1 and lonely[0].startswith("storage.database_password: only used with a PostgreSQL"), lonely
    (tmp_path / "database-password").write_text(SECRET + "\n")
    lonely_file = problems_of(write_config, {"database_password_file": "database-password"})
    assert lonely_file[0].startswith("storage.database_password: only used with a PostgreSQL"), lonely_file
    twice = problems_of(write_config, {"database_url": f"postgresql://gatewayd:{SECRET}@db/gatewayd", "database_password": "other"})
    assert twice[0].startswith("storage.database_password: storage.database_url holds a password too"), twice
    assert SECRET not in "\n".join(twice + lonely)


@pytest.mark.parametrize(("lease", "ok"), [("5s", True), ("30s", True), ("10m", True), (60, True),
                                            ("4s", False), ("0", False), ("11m", False), ("1h", False), ("soon", False), (True, False)])
def test_lease_bounds(write_config, lease, ok: bool) -> None:
    if ok:
        assert load_config(write_config({"storage": {"lease": lease}}), env={}).storage.lease >= 5
    else:
        problems = problems_of(write_config, {"lease": lease})
        assert len(problems) == 1 and problems[0].startswith("storage.lease: "), problems


def test_check_config_names_the_database_without_the_password(write_config, tmp_path, pg_server: PgServer, pg_url: str) -> None:
    (tmp_path / "database-password").write_text(PG_PASSWORD + "\n")
    path = write_config({"storage": {"database_url": pg_url, "database_password_file": "database-password", "lease": "15s"}})
    result = gatewayd("check-config", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert f"database    PostgreSQL {pg_url} (password from storage.database_password); leases 15s" in result.stdout
    assert PG_PASSWORD not in result.stdout + result.stderr
    assert "storage.database_url" not in result.stderr  # no warning: the password is in its own file


def test_a_password_in_the_url_works_but_is_shown_as_stars_and_warned_about(write_config, pg_server: PgServer, pg_database: str) -> None:
    url = f"postgresql://gatewayd:{quote(PG_PASSWORD, safe='')}@127.0.0.1:{pg_server.port}/{pg_database}"
    path = write_config({"storage": {"database_url": url}})
    result = gatewayd("check-config", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert f"database    PostgreSQL postgresql://gatewayd:***@127.0.0.1:{pg_server.port}/{pg_database}; leases 30s" in result.stdout
    assert "storage.database_url: holds a password" in result.stderr
    for shown in (result.stdout + result.stderr, repr(load_config(path, env={}))):
        assert quote(PG_PASSWORD, safe="") not in shown and PG_PASSWORD not in shown
    assert any(w.startswith("storage.database_url:") for w in config_warnings(load_config(path, env={})))


def test_sqlite_is_named_in_check_config(write_config) -> None:
    path = write_config()
    result = gatewayd("check-config", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert f"database    SQLite in {load_config(path, env={}).state_dir}" in result.stdout


def test_the_store_gets_the_url_and_the_password_apart(write_config, tmp_path, pg_server: PgServer, pg_url: str) -> None:
    (tmp_path / "database-password").write_text(PG_PASSWORD + "\n")
    c = load_config(write_config({"storage": {"database_url": pg_url, "database_password_file": "database-password"}}), env={})
    store = store_from_config(c)
    try:
        # Connected with the password from the file: it is in neither the URL nor where the store says it is.
        assert store.dialect == "postgresql" and store.ping()
        assert store.database_url == pg_url and PG_PASSWORD not in store.database_url and PG_PASSWORD not in store.where
    finally:
        store.close()
    sqlite = store_from_config(load_config(write_config(), env={}))
    try:
        assert (sqlite.database_url, sqlite.dialect) == ("", "sqlite")
    finally:
        sqlite.close()
