"""``gatewayd run`` on a PostgreSQL store, and the database going away under it.

A real daemon (subprocess) against the provider simulator and a real
PostgreSQL 15 (tests/support/postgres.py), all on 127.0.0.1. With the
server stopped, intake answers ``451 4.3.0`` (never 5xx, never a hang),
``/healthz`` answers 503 naming the database, and the daemon stays up; with
the server back, intake answers 250 again and the queued work goes on,
without a restart. Every 250 reaches the provider exactly once and is in
the database exactly once (docs/operations.md, Database outage).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support.postgres import PgServer
from support.reliability import (
    SPEC_451,
    assert_exactly_once,
    config_data,
    free_port,
    job_ids,
    message,
    pdf_bytes,
    smtp_send,
    start_daemon,
    wait_until,
)
from support.service import http_get

from gatewayd.provider.simulator import run_simulator


def pg_config(tmp_path: Path, sim: Any, pg_server: PgServer, pg_url: str) -> dict[str, Any]:
    data = config_data(tmp_path / "state", sim=sim, smtp_port=free_port())
    data["storage"].update({"database_url": pg_url, "database_password": pg_server.password})
    data["http"] = {"listen": f"127.0.0.1:{free_port()}"}
    return data


def stored_job_ids(pg_server: PgServer, pg_url: str) -> list[int]:
    """Every job id in the database, read with a connection of the test's own."""
    with pg_server.connect(pg_url.rsplit("/", 1)[1]) as conn:
        return [int(r[0]) for r in conn.execute("SELECT id FROM jobs ORDER BY id")]


def job_states(pg_server: PgServer, pg_url: str) -> dict[int, str]:
    with pg_server.connect(pg_url.rsplit("/", 1)[1]) as conn:
        return {int(i): str(s) for i, s in conn.execute("SELECT id, state FROM jobs")}


async def health(port: int) -> tuple[int, dict[str, Any]]:
    status, text = await http_get(port, "/healthz")
    return status, json.loads(text)


@pytest.mark.timeout(240)
async def test_database_outage_answers_451_then_250_and_loses_nothing(tmp_path: Path, pg_server: PgServer, pg_url: str) -> None:
    pdf = pdf_bytes(1)
    acknowledged: list[int] = []
    async with run_simulator(send_delays=(0.2, 0.2)) as sim:
        data = pg_config(tmp_path, sim, pg_server, pg_url)
        http_port = int(data["http"]["listen"].rsplit(":", 1)[1])
        daemon = await start_daemon(tmp_path, data)
        try:
            port = daemon.port
            assert port is not None
            for n in range(2):
                reply = await smtp_send(port, message(pdf, subject=f"before {n}"))
                assert reply.startswith("250 "), reply
                acknowledged.extend(job_ids(reply))
            status, body = await health(http_port)
            assert status == 200, body

            with pg_server.stopped():
                # A message while the database is down: 451, the client keeps it.
                reply = await smtp_send(port, message(pdf, subject="during"), timeout=60)
                assert reply == SPEC_451, reply
                status, body = await health(http_port)
                assert status == 503, body
                problems = " ".join(body["problems"])
                assert "database" in problems and pg_url in problems, body
                assert pg_server.password not in json.dumps(body)
                assert daemon.returncode is None, daemon.log_tail()

            # Back: 250 again, without a restart.
            replies: list[str] = []

            async def accepted() -> bool:
                reply = await smtp_send(port, message(pdf, subject=f"after {len(replies)}"), timeout=60)
                replies.append(reply)
                acknowledged.extend(job_ids(reply))
                assert not reply.startswith("5"), reply
                return reply.startswith("250 ")

            await wait_until_async(accepted, 60, "a 250 after the database came back")
            for n in range(2):
                reply = await smtp_send(port, message(pdf, subject=f"later {n}"))
                assert reply.startswith("250 "), reply
                acknowledged.extend(job_ids(reply))

            # Restarted while idle: every pooled connection is dead; the next message still gets 250.
            pg_server.stop()
            pg_server.start()
            reply = await smtp_send(port, message(pdf, subject="after an idle restart"), timeout=60)
            assert reply.startswith("250 "), reply
            acknowledged.extend(job_ids(reply))

            try:
                await wait_until(lambda: set(acknowledged) <= {j for j, s in job_states(pg_server, pg_url).items() if s == "sent"},
                                 90, "every acknowledged job sent", interval=0.5)
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {job_states(pg_server, pg_url)}\n{daemon.log_tail(8000)}") from None
            stored = stored_job_ids(pg_server, pg_url)
            assert sorted(acknowledged) == stored, (acknowledged, stored)  # in the database exactly once
            assert_exactly_once(sim, acknowledged, stored)
            status, body = await health(http_port)
            assert status == 200, body
            assert daemon.returncode is None
        finally:
            rc = await daemon.stop()
        assert rc == 0, daemon.log_tail()
        log = daemon.log_text()
        assert pg_server.password not in log
        # Workers logged the outage and backed off: none crashed, the daemon never went down.
        assert not daemon.events("service_crashed"), daemon.log_tail(6000)
        assert daemon.events("intake_failed"), "the 451 was not logged"


async def wait_until_async(predicate: Any, timeout: float, what: str) -> None:
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)
