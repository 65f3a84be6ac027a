"""Two gateways on one store, as two nodes (docs/deployment.md, Several nodes): both take mail in
and submit, one follows the faxes (tracker) and sends the emails (reports, outbox) under its
leases; /metrics, /healthz and the jobs say which node does what; a clean stop hands the leases over.

The gateways run in the test's event loop, wired by ``build_services`` (support/gateway.py), on one
SQLite state directory with different ``storage.node_name``; support/leases.py and
tests/nodes/test_leadership.py cover the lease loop itself on both backends and a killed node.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from support.e2f import wait_for
from support.gateway import build_gateway
from support.reliability import FAST_SENDER, NUMBERS, config_data, load, message, pdf_bytes, smtp_send

from gatewayd.config import Config
from gatewayd.email_to_fax.sender import Sender
from gatewayd.email_to_fax.tracker import Tracker
from gatewayd.provider.simulator import run_simulator

TTL = 1.5  # storage.lease, short: gw-b tries to take a free lease every TTL/3
SERVICES = {"sender", "smtp", "tracker", "reports", "outbox", "purge"}
LEASED = ("tracker", "reports", "outbox", "purge")


def node_config(config: Config, node: str) -> Config:
    return dataclasses.replace(config, storage=dataclasses.replace(config.storage, node_name=node))


def gauge(text: str, name: str, **labels: str) -> float | None:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{name}\{{{re.escape(wanted)}\}} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


async def test_two_nodes_share_the_work_and_hand_the_leases_over_at_a_clean_stop(tmp_path: Path) -> None:
    async with run_simulator(send_delays=(0.05, 0.05)) as sim:
        base = load(config_data(tmp_path / "state", sim=sim, smtp_port=2525))
        replace = {"sender": lambda rt: Sender(rt, FAST_SENDER), "tracker": lambda rt: Tracker(rt, max_backoff=1.0)}
        a = build_gateway(node_config(base, "gw-a"), only=SERVICES, replace=replace, lease=TTL)
        b = build_gateway(node_config(base, "gw-b"), only=SERVICES, replace=replace, lease=TTL)
        await a.start()
        try:
            await wait_for(lambda: all(gauge(a.rt.metrics.render().decode(), "gatewayd_lease_held", lease=n) == 1.0 for n in LEASED),
                           what="gw-a holds every lease")
            await b.start()
            try:
                await wait_for(lambda: b.store.leases() and all(l.holder == "gw-a" for l in b.store.leases()), what="gw-b sees gw-a's leases")
                metrics_b = b.rt.metrics.render().decode()
                assert gauge(metrics_b, "gatewayd_node_info", node="gw-b") == 1.0
                assert gauge(a.rt.metrics.render().decode(), "gatewayd_node_info", node="gw-a") == 1.0
                assert all(gauge(metrics_b, "gatewayd_lease_held", lease=n) == 0.0 for n in LEASED), metrics_b
                assert {lease.name for lease in b.store.leases()} == set(LEASED)

                # Mail to gw-b: taken in and submitted there, followed to the end by gw-a's tracker.
                reply = await smtp_send(b.port, message(pdf_bytes(1), subject="via gw-b"), rcpt=[f"{NUMBERS[0]}@fax.example.com"])
                m = re.fullmatch(r"250 2\.0\.0 queued as (\d+)", reply)
                assert m, reply
                job_id = int(m.group(1))
                await wait_for(lambda: a.store.get_job(job_id).state == "sent", timeout=30, what="the fax sent and seen sent")
                job = a.store.get_job(job_id)
                assert job.node == "gw-b"
                assert "tracker" in a.rt.health.polls and "tracker" not in b.rt.health.polls  # the tracker polls on gw-a only
                assert all(lease.holder == "gw-a" for lease in b.store.leases())
            finally:
                await a.stop()  # a clean stop: gw-a releases; gw-b takes over at its next attempt
            await wait_for(lambda: all(gauge(b.rt.metrics.render().decode(), "gatewayd_lease_held", lease=n) == 1.0 for n in LEASED),
                           what="gw-b holds every lease")
            assert all(lease.holder == "gw-b" for lease in b.store.leases())
            await wait_for(lambda: "tracker" in b.rt.health.polls, what="gw-b's tracker polls")
        finally:
            await b.stop()
