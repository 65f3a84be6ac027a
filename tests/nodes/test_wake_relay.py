"""The wake relay on PostgreSQL (gatewayd/wakerelay.py): a wake in one process reaches the others.

Real parts: a real PostgreSQL 15 (tests/support/postgres.py), the provider
simulator over HTTP, gateways wired by ``build_services`` in the test's
event loop (support/gateway.py) and ``gatewayd send`` as a real process.
Each sender's idle poll is made long (``IDLE``), so a job is POSTed within
``SOON`` only when a wake-up reached the node that drains its extension: the
tests fail without the relay, they do not measure it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from support.foundation import gatewayd
from support.gateway import InProcessGateway, in_process
from support.postgres import PgServer
from support.reliability import FAST_SENDER, NUMBERS, config_data, free_port, load, message, pdf_bytes, smtp_send, wait_until
from tomli_w import dumps as to_toml

from gatewayd.config import Config
from gatewayd.email_to_fax.sender import LEASE_PREFIX, Sender
from gatewayd.provider.simulator import run_simulator
from gatewayd.store import NewJob
from gatewayd.wakerelay import CHANNEL, COALESCE, WakeRelay, parse_payload

IDLE = 300.0  # the senders' idle poll: never reached in a test
SOON = 15.0  # a relayed wake is heard in milliseconds; this is only the give-up time
EXTENSION = 122  # config_data's provider.extension
SLOW = dataclasses.replace(FAST_SENDER, idle_poll=IDLE)


def pg_config(tmp_path: Path, sim: Any, pg_server: PgServer, pg_url: str, node: str) -> dict[str, Any]:
    data = config_data(tmp_path / node, sim=sim, smtp_port=free_port())
    data["storage"].update({"database_url": pg_url, "database_password": pg_server.password, "node_name": node})
    return data


@contextlib.asynccontextmanager
async def gateway(config: Config, *, services: set[str]) -> AsyncIterator[InProcessGateway]:
    """One node running ``services`` (its sender idle for ``IDLE`` s without a wake-up)."""
    async with in_process(config, only=services, replace={"sender": lambda rt: Sender(rt, SLOW)}) as gw:
        yield gw


def relay(gw: InProcessGateway) -> WakeRelay:
    found = gw.service("wakeups")
    assert isinstance(found, WakeRelay)
    return found


def posted(sim: Any) -> int:
    return len(sim.sent)


async def test_a_job_taken_in_on_one_node_is_sent_at_once_by_the_node_holding_its_extension(
        tmp_path: Path, pg_server: PgServer, pg_url: str) -> None:
    async with run_simulator(send_delays=(0.05, 0.05)) as sim:
        a_config = load(pg_config(tmp_path, sim, pg_server, pg_url, "gw-a"))
        b_config = load(pg_config(tmp_path, sim, pg_server, pg_url, "gw-b"))
        async with gateway(a_config, services={"wakeups", "sender"}) as a, gateway(b_config, services={"wakeups", "sender", "smtp"}) as b:
            # gw-a drains the extension (it holds its lease, as in the middle of a drain): gw-b's sender leaves it alone.
            assert a.store.take_lease(LEASE_PREFIX + str(EXTENSION), "gw-a", 600.0).held
            await wait_until(lambda: relay(a).connections and relay(b).connections, SOON, "both relays listening")
            await asyncio.sleep(0.3)  # both senders past their first pass, napping for IDLE

            reply = await smtp_send(b.port, message(pdf_bytes(1), subject="via gw-b"))
            m = re.fullmatch(r"250 2\.0\.0 queued as (\d+)", reply)
            assert m, reply
            job_id = int(m.group(1))
            await wait_until(lambda: posted(sim) == 1, SOON, "gw-a POSTing the job gw-b took in")
            job = a.store.get_job(job_id)
            assert (job.node, job.claimed_by) == ("gw-b", "gw-a")
            assert relay(a).heard >= 1


async def test_gatewayd_send_wakes_the_running_daemon(tmp_path: Path, pg_server: PgServer, pg_url: str) -> None:
    async with run_simulator(send_delays=(0.05, 0.05)) as sim:
        data = pg_config(tmp_path, sim, pg_server, pg_url, "gw-a")
        cfg = tmp_path / "config.toml"
        cfg.write_text(to_toml(data), encoding="utf-8")
        async with gateway(load(data), services={"wakeups", "sender"}) as gw:
            await wait_until(lambda: relay(gw).connections, SOON, "the relay listening")
            await asyncio.sleep(0.3)  # the sender past its first pass, napping for IDLE
            pdf = tmp_path / "letter.pdf"
            pdf.write_bytes(pdf_bytes(1))
            # In a thread: the gateway and the simulator run on this test's event loop.
            done = await asyncio.to_thread(gatewayd, "send", NUMBERS[0], str(pdf), "-c", str(cfg))
            assert done.returncode == 0, (done.stdout, done.stderr)
            job_id = int(done.stdout.strip().removeprefix("queued as "))
            await wait_until(lambda: posted(sim) == 1, SOON, "the daemon POSTing the job `gatewayd send` queued")
            assert gw.store.get_job(job_id).state in ("submitted", "sent")


async def test_a_burst_of_wakes_is_a_few_notifies(tmp_path: Path, pg_server: PgServer, pg_url: str, pg_database: str) -> None:
    async with run_simulator() as sim:
        config = load(pg_config(tmp_path, sim, pg_server, pg_url, "gw-a"))
        # The test's own LISTEN connection counts what the gateway sends.
        with pg_server.connect(pg_database, autocommit=True) as listener:
            listener.execute(f"LISTEN {CHANNEL}")
            async with in_process(config, only={"wakeups"}) as gw:
                origin = relay(gw).origin

                async def heard(wait: float) -> list[list[str]]:
                    notes = await asyncio.to_thread(lambda: list(listener.notifies(timeout=wait)))
                    return [names for o, names in (parse_payload(n.payload) for n in notes) if o == origin]

                # 500 wakes in one turn of the loop (intake at full speed): one NOTIFY with every name.
                for _ in range(500):
                    gw.rt.wake("sender")
                gw.rt.wake("outbox")
                gw.rt.wake("purge")  # not relayed: a purge round is this node's own
                assert await heard(3.0) == [["outbox", "sender"]]

                # 300 wakes spread over many turns: at most one NOTIFY per COALESCE seconds.
                began = time.monotonic()
                for n in range(300):
                    gw.rt.wake("sender")
                    if n % 10 == 0:
                        await asyncio.sleep(0.005)
                elapsed = time.monotonic() - began
                spread = await heard(2.0)
                assert 1 <= len(spread) <= elapsed / COALESCE + 2, (len(spread), elapsed)
                assert all(names == ["sender"] for names in spread)
                assert relay(gw).publisher.notified == 1 + len(spread)


async def test_the_relay_listens_again_after_the_database_restarts(tmp_path: Path, pg_server: PgServer, pg_url: str) -> None:
    async with run_simulator(send_delays=(0.05, 0.05)) as sim:
        config = load(pg_config(tmp_path, sim, pg_server, pg_url, "gw-a"))
        async with gateway(config, services={"wakeups", "sender"}) as gw:
            await wait_until(lambda: relay(gw).connections == 1, SOON, "the relay listening")
            pg_server.stop()
            pg_server.start()
            await wait_until(lambda: relay(gw).connections == 2, 60, "the relay listening again")
            await asyncio.sleep(0.5)  # the sender's pass after the reconnect's own wake, then its nap for IDLE
            assert posted(sim) == 0
            # A job queued elsewhere (another node's intake), told over the channel only.
            pdf = pdf_bytes(1)
            job_id = gw.store.enqueue_jobs(gw.store.save_document(pdf), 1, len(pdf), [
                NewJob(number=NUMBERS[0], dst_num=NUMBERS[0].lstrip("+"), extension=EXTENSION, report_to="", source="cli")])[0]
            with pg_server.connect(pg_url.rsplit("/", 1)[1], autocommit=True) as other:
                other.execute("SELECT pg_notify(%s, %s)", (CHANNEL, "gw-b/1/test:sender"))
            await wait_until(lambda: posted(sim) == 1, SOON, "the job POSTed after the wake relayed")
            assert gw.store.get_job(job_id).state in ("submitted", "sent")
            assert relay(gw).heard >= 1

