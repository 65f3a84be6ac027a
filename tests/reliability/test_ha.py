"""Three nodes on one PostgreSQL database, under load, one node at a time SIGKILLed or frozen with SIGSTOP (issue 17, the HA test).

Mail goes to all three nodes; received faxes arrive at the provider
throughout. For several rounds one node picked at random is killed
(SIGKILL, restarted a little later) or frozen (SIGSTOP for a while, some
times longer than ``storage.lease`` so its leases are taken over, then
SIGCONT). Afterwards, with every node back:

* every message answered ``250`` reached the provider exactly once, and no
  fax reached it that the database does not know;
* every received fax was mailed exactly once;
* every job's report was mailed exactly once (kills and freezes are kept
  out of the relay's DATA phase and the moment after it, as in the
  single-node kill test: SMTP's own window, RFC 1047; a freeze before DATA
  is fenced by the outbox, docs/deployment.md);
* no job is stuck: every job is sent and reported, every received fax
  relayed, the outbox empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
from pathlib import Path
from typing import Any

import pytest
from support.inbound import RecordingSink
from support.postgres import PgServer
from support.reliability import (
    DOMAIN,
    NUMBERS,
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

from gatewayd.provider.simulator import run_simulator

NODES = 3
# One round each: what happens to which node (the lease holder, or one at random).
PLAN = [("kill", "holder"), ("freeze-long", "holder"), ("freeze", "any"), ("kill", "any"), ("freeze-long", "holder"), ("freeze-long", "any")]
CLIENTS = 3
PACE = 0.15  # each client starts a message at most every PACE seconds
LEASE = 5.0  # storage.lease's minimum: takeovers within a round
INBOUND_TO = "78123092631"


def node_data(tmp_path: Path, i: int, *, sim: Any, sink: RecordingSink, url: str, password: str) -> dict[str, Any]:
    data = config_data(
        tmp_path / f"node{i}" / "state", sim=sim, smtp_port=free_port(), relay=sink.relay,
        storage={"state_dir": str(tmp_path / f"node{i}" / "state"), "database_url": url, "database_password": password,
                 "node_name": f"node{i}", "lease": f"{LEASE:g}s"},
        inbound={"enabled": True, "poll_interval": "1s", "mailto_refresh": "1s", "routes": {INBOUND_TO: ["night@x.test"]}},
    )
    return data


def leader(pg: PgServer, dbname: str) -> int:
    """The node holding the most unexpired leases (0 when none holds any)."""
    rows = db_rows(pg, dbname, "SELECT holder, COUNT(*) FROM leases WHERE expires_at > extract(epoch FROM now()) GROUP BY holder ORDER BY 2 DESC")
    return int(rows[0][0].removeprefix("node")) if rows else 0


def db_rows(pg: PgServer, dbname: str, sql: str) -> list[tuple[Any, ...]]:
    with pg.connect(dbname) as conn:
        return [tuple(r) for r in conn.execute(sql).fetchall()]


@pytest.mark.timeout(420)
async def test_three_nodes_one_killed_or_frozen_at_a_time_nothing_lost_nothing_twice(
    tmp_path: Path, pg_server: PgServer, pg_database: str, pg_url: str,
) -> None:
    rng = random.Random(20261202)
    acknowledged: list[int] = []
    replies: list[str] = []
    injected: list[str] = []
    async with run_simulator(send_delays=(0.2, 0.2)) as sim:
        # Answers come 0.1 s after the fax exists: kills and freezes also land
        # between "the provider has it" and "the node heard of it".
        sim.add_fault("/extension/*/fax/out/", method="POST", count=None, answer_latency=0.1)
        sink = await RecordingSink().start()
        try:
            datas = [node_data(tmp_path, i, sim=sim, sink=sink, url=pg_url, password=pg_server.password) for i in range(NODES)]
            nodes = [await start_daemon(tmp_path / f"node{i}", datas[i], name=f"node{i}") for i in range(NODES)]
            pdfs = [pdf_bytes(1 + i % 2, padding=rng.randrange(0, 30_000), seed=i) for i in range(6)]
            counter = 0
            stop = asyncio.Event()

            async def client(k: int) -> None:
                nonlocal counter
                loop = asyncio.get_running_loop()
                while not stop.is_set():
                    started = loop.time()
                    counter += 1
                    n = counter
                    node = (n + k) % NODES
                    port = int(datas[node]["smtp"]["listen"].rsplit(":", 1)[1])
                    reply = await smtp_send(port, message(pdfs[n % len(pdfs)], subject=f"ha test {n}"),
                                            rcpt=[f"{NUMBERS[n % len(NUMBERS)]}@{DOMAIN}"], timeout=8)
                    replies.append(reply)
                    acknowledged.extend(job_ids(reply))
                    await asyncio.sleep(max(0.0, PACE - (loop.time() - started)))

            async def faxes_arrive() -> None:
                while not stop.is_set():
                    injected.append(sim.inject_received(122, pdfs[len(injected) % len(pdfs)], destination=INBOUND_TO))
                    await asyncio.sleep(rng.uniform(0.5, 1.5))

            load = [asyncio.create_task(client(k)) for k in range(CLIENTS)] + [asyncio.create_task(faxes_arrive())]
            try:
                for action, whom in PLAN:
                    await asyncio.sleep(rng.uniform(1.0, 3.0))
                    # Half the rounds go for the node holding the most leases
                    # (the first start gives one node all of them): the others must take its work over.
                    victim = leader(pg_server, pg_database) if whom == "holder" else rng.randrange(NODES)
                    # Not while the relay is in DATA or has just answered it: a node stopped between its
                    # message's final dot and the commit that marks it sent cannot know the relay took it
                    # (SMTP's own limit, RFC 1047: tests/support/inbound.py, RecordingSink).
                    with contextlib.suppress(AssertionError):
                        await wait_until(lambda: sink.quiet_for(0.3), 5, "a moment without DATA at the relay", interval=0.01)
                    if action == "kill":
                        nodes[victim].kill()
                        await nodes[victim].proc.wait()
                        await asyncio.sleep(rng.uniform(0.5, 2.0))
                        nodes[victim] = await start_daemon(tmp_path / f"node{victim}", datas[victim], name=f"node{victim}")
                    else:
                        pid = nodes[victim].proc.pid
                        os.kill(pid, signal.SIGSTOP)
                        try:
                            # Long: longer than the lease, the others take its work over.
                            await asyncio.sleep(rng.uniform(LEASE + 2, LEASE + 8) if action == "freeze-long" else rng.uniform(1.0, 3.0))
                        finally:
                            os.kill(pid, signal.SIGCONT)
            finally:
                stop.set()
                await asyncio.gather(*load)

            def settled() -> bool:
                jobs = db_rows(pg_server, pg_database, "SELECT state, reported_at IS NOT NULL FROM jobs")
                received = db_rows(pg_server, pg_database, "SELECT state FROM received")
                pending = db_rows(pg_server, pg_database, "SELECT COUNT(*) FROM outbox WHERE state = 'pending'")[0][0]
                return (all(s == "sent" and r for s, r in jobs) and len(received) >= len(injected)
                        and all(s == "relayed" for (s,) in received) and pending == 0)

            try:
                await wait_until(settled, 150, "every job sent and reported, every received fax relayed, the outbox empty")
            except AssertionError:
                states = db_rows(pg_server, pg_database, "SELECT state, COUNT(*) FROM jobs GROUP BY state")
                raise AssertionError(f"not settled: jobs {states}, received "
                                     f"{db_rows(pg_server, pg_database, 'SELECT state, COUNT(*) FROM received GROUP BY state')}\n"
                                     + "\n".join(n.log_tail() for n in nodes)) from None
            codes = [(await n.terminate())[0] for n in nodes]
            assert codes == [0] * NODES, "\n".join(n.log_tail() for n in nodes)
        finally:
            await sink.stop()

        assert len(acknowledged) >= 30, f"too little load to mean anything: {replies[:5]}"
        assert all(r.startswith(("250", "conn", "421", "451")) for r in replies), sorted({r[:40] for r in replies})
        stored = [r[0] for r in db_rows(pg_server, pg_database, "SELECT id FROM jobs")]
        assert_exactly_once(sim, acknowledged, stored)

        # The rounds did what they are for: leases were taken over from a killed or frozen node.
        taken_over = [json.loads(line).get("taken_over_from") for n in range(NODES)
                      for line in (tmp_path / f"node{n}" / f"node{n}.log").read_text(errors="replace").splitlines()
                      if '"lease_taken"' in line]
        assert [t for t in taken_over if t], "no lease was ever taken over: the test did not test a takeover"

        # Every node took mail in.
        by_node = dict(db_rows(pg_server, pg_database, "SELECT node, COUNT(*) FROM jobs GROUP BY node"))
        assert set(by_node) == {f"node{i}" for i in range(NODES)}, by_node

        # Every received fax mailed once, every report mailed once.
        relayed: dict[str, int] = {}
        reports: dict[str, int] = {}
        for mail in sink.messages:
            msg = mail.message
            if msg["X-Fax-UUID"]:
                relayed[str(msg["X-Fax-UUID"])] = relayed.get(str(msg["X-Fax-UUID"]), 0) + 1
            if msg["X-Fax-Job-ID"]:
                reports[str(msg["X-Fax-Job-ID"])] = reports.get(str(msg["X-Fax-Job-ID"]), 0) + 1
        assert {u: c for u, c in relayed.items() if c != 1} == {}, "received faxes mailed more than once"
        assert sorted(relayed) == sorted(injected), "received faxes not mailed"
        assert {j: c for j, c in reports.items() if c != 1} == {}, "reports mailed more than once"
        assert sorted(int(j) for j in reports) == sorted(stored), "jobs without a report"
