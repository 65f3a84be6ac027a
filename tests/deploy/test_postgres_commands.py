"""The ``gatewayd`` commands on a PostgreSQL store, as real processes
(``python -m gatewayd ... -c CONFIG``) against a real PostgreSQL 15
(tests/support/postgres.py): ``check-config`` connects and names the schema,
``send``, ``jobs``, ``job``, ``cancel``, ``retry``, ``received`` and ``purge``
work on the shared database, and ``backup`` says it does not apply
(docs/operations.md, The command line; Backup and restore)."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from support.foundation import gatewayd
from support.postgres import PgServer
from support.reliability import NUMBERS, config_data, free_port, pdf_bytes
from tomli_w import dumps as to_toml

from gatewayd.provider.simulator import run_simulator
from gatewayd.store import FAILED, ReceivedFax, Store
from gatewayd.store.migrations import MIGRATIONS

NOWHERE = SimpleNamespace(base_url="http://127.0.0.1:9/", token_url="http://127.0.0.1:9/oauth/token")


def write(tmp_path: Path, pg_url: str, password: str, sim: Any = NOWHERE, **storage: Any) -> Path:
    data = config_data(tmp_path / "state", sim=sim, smtp_port=free_port())
    data["storage"].update({"database_url": pg_url, "database_password": password, **storage})
    path = tmp_path / "config.toml"
    path.write_text(to_toml(data), encoding="utf-8")
    return path


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout


def test_check_config_connects_and_names_the_schema(tmp_path: Path, pg_server: PgServer, pg_url: str) -> None:
    cfg = write(tmp_path, pg_url, pg_server.password)
    out = ok(gatewayd("check-config", "-c", str(cfg)))
    assert f"database    PostgreSQL {pg_url}" in out and f"no schema yet (this gatewayd: {len(MIGRATIONS)}" in out, out
    Store(tmp_path / "state", database_url=pg_url, database_password=pg_server.password).close()  # the daemon's first start
    out = ok(gatewayd("check-config", "-c", str(cfg)))
    assert f"; schema {len(MIGRATIONS)} (this gatewayd: {len(MIGRATIONS)})" in out, out


@pytest.mark.parametrize("fault", ["password", "server"])
def test_check_config_fails_clearly_when_the_database_cannot_be_reached(tmp_path: Path, pg_server: PgServer, pg_url: str,
                                                                         fault: str) -> None:
    password = "not the password" if fault == "password" else pg_server.password
    url = pg_url if fault == "password" else pg_url.replace(f":{pg_server.port}/", f":{free_port()}/")
    cfg = write(tmp_path, url, password)
    result = gatewayd("check-config", "-c", str(cfg))
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "CANNOT CONNECT" in result.stdout
    assert result.stderr.splitlines()[-1].startswith(f"gatewayd check-config: the database {url}: CANNOT CONNECT: "), result.stderr
    assert ("password authentication failed" if fault == "password" else "Connection refused") in result.stderr
    assert "Traceback" not in result.stderr
    assert password not in result.stdout + result.stderr


def test_sqlite_check_config_names_the_schema_read_only(tmp_path: Path) -> None:
    data = config_data(tmp_path / "state", sim=NOWHERE, smtp_port=free_port())
    cfg = tmp_path / "config.toml"
    cfg.write_text(to_toml(data), encoding="utf-8")
    out = ok(gatewayd("check-config", "-c", str(cfg)))
    assert f"database    SQLite in {tmp_path / 'state'}; no schema yet" in out, out
    assert not (tmp_path / "state").exists()  # nothing made
    Store(tmp_path / "state").close()
    out = ok(gatewayd("check-config", "-c", str(cfg)))
    assert f"; schema {len(MIGRATIONS)} (this gatewayd: {len(MIGRATIONS)})" in out, out


async def test_send_jobs_job_cancel_retry_on_postgresql(tmp_path: Path, pg_server: PgServer, pg_url: str) -> None:
    async with run_simulator(send_delays=(0.05, 0.05)) as sim:
        cfg = write(tmp_path, pg_url, pg_server.password, sim=sim)
        store = Store(tmp_path / "state", database_url=pg_url, database_password=pg_server.password)
        try:
            pdf = tmp_path / "letter.pdf"
            pdf.write_bytes(pdf_bytes(2))
            first = int(ok(gatewayd("send", NUMBERS[0], str(pdf), "-c", str(cfg))).strip().removeprefix("queued as "))
            second = int(ok(gatewayd("send", NUMBERS[1], str(pdf), "-c", str(cfg))).strip().removeprefix("queued as "))
            # The document is a row of the database, not a file of this node.
            job = store.get_job(first)
            assert store.read_document(job.document).startswith(b"%PDF")
            assert not any((tmp_path / "state" / "documents").rglob("*.pdf"))

            listing = ok(gatewayd("jobs", "-c", str(cfg)))
            assert f"{first:>6}  " in listing and f"{second:>6}  " in listing and NUMBERS[0] in listing, listing
            shown = ok(gatewayd("job", str(first), "-c", str(cfg)))
            assert "state:           queued" in shown and "(new) -> queued" in shown, shown
            assert gatewayd("job", "999999", "-c", str(cfg)).stderr == "gatewayd job: no job 999999\n"

            ok(gatewayd("cancel", str(first), "-c", str(cfg)))
            assert store.get_job(first).state == "canceled"

            # A failed job at the provider: retry asks the simulator to queue it again.
            fax = await sim_fax(sim, second)
            assert store.transition(second, "submitting", "test", expect=["queued"])
            store.take_provider_id(second, "submitted", "test", expect=["submitting"], provider_id=fax, provider_status="queued")
            assert store.transition(second, FAILED, "busy", expect=["submitted"])
            # In a thread: the simulator answers on this test's event loop.
            out = ok(await asyncio.to_thread(gatewayd, "retry", str(second), "-c", str(cfg)))
            assert store.get_job(second).state == "submitted", out
        finally:
            store.close()


# store/received.py's listing and store/retention.py's purge steps on
# PostgreSQL come with branch contract (issue 17, the store contract suite):
# strict, so the merge that brings them turns these markers into failures to remove.


def test_received_and_purge_on_postgresql(tmp_path: Path, pg_server: PgServer, pg_url: str) -> None:
    cfg = write(tmp_path, pg_url, pg_server.password)
    store = Store(tmp_path / "state", database_url=pg_url, database_password=pg_server.password)
    try:
        store.hold_received(ReceivedFax("rx-uuid-1", 122, "74950000001", "78120000001", "2024-01-01 10:00:00", 1000, 0.0,
                                        "no_recipient", (), None, None, ""), "no route for 78120000001")
        out = ok(gatewayd("received", "-c", str(cfg)))
        assert "rx-uuid-1" in out and "74950000001" in out, out

        out = ok(gatewayd("purge", "-c", str(cfg)))
        assert out.startswith("retention: "), out
        out = ok(gatewayd("purge", "--dry-run", "-c", str(cfg)))
        assert "nothing was changed (--dry-run)" in out, out
    finally:
        store.close()


async def sim_fax(sim: Any, job_id: int) -> int:
    """A fax the simulator failed, for job ``job_id`` (created through its API as gatewayd would)."""
    from gatewayd.provider.client import ProviderClient

    number = NUMBERS[1].lstrip("+")
    sim.set_outcome(number, ["failed", "sent"])
    client = ProviderClient(sim.base_url, sim.token_url, "demo", "demo")
    try:
        sent = await client.send_fax(122, number, pdf_bytes(1), f"fax-{job_id}.pdf")
        for _ in range(200):
            if (await client.get_sent_fax(122, sent.id)).status == "failed":
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the simulator never failed the fax")
    finally:
        await client.aclose()
    return int(sent.id)


def test_jobs_on_a_machine_where_no_daemon_ran_yet(tmp_path: Path, pg_server: PgServer, pg_url: str) -> None:
    """On PostgreSQL the queue is in the database: an administrator's machine with the configuration and
    no state directory of its own lists it (on SQLite the command says the daemon has not run yet)."""
    cfg = write(tmp_path, pg_url, pg_server.password)
    assert not (tmp_path / "state").exists()
    out = ok(gatewayd("jobs", "-c", str(cfg)))
    assert out.splitlines()[0].split()[:3] == ["ID", "CREATED", "STATE"], out


def test_backup_says_it_does_not_apply_to_postgresql(tmp_path: Path, pg_server: PgServer, pg_url: str) -> None:
    cfg = write(tmp_path, pg_url, pg_server.password)
    result = gatewayd("backup", str(tmp_path / "copy"), "-c", str(cfg))
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr.splitlines()[-1].startswith(f"gatewayd backup: backup does not apply to a PostgreSQL store ({pg_url})"), result.stderr
    assert "pg_dump" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "copy").exists()
