"""SIGKILL of ``gatewayd run`` at random points under load, for several rounds:
every message answered 250 reaches the provider exactly once, no job is sent
twice, and the store stays whole (SQLite integrity or PostgreSQL's rows,
documents). On both backends (issue 17): on PostgreSQL the kill also cuts
the daemon's connections in the middle of its transactions.

The simulator answers each fax POST 0.1 s after creating the fax, so kills
also land between "the provider created it" and "we heard about it": those
jobs must be reconciled (adopted), never posted again."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from support.backends import Backend
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

ROUNDS = 4
CLIENTS = 4
# Each client starts a message at most every PACE seconds: a steady load
# whatever the daemon's intake speed, so the last clean run (whose sender
# does ~10 jobs/s against this simulator) can submit every job in its bound.
PACE = 0.05


@pytest.mark.timeout(200)
@pytest.mark.parametrize("processes", [1, 2])
async def test_sigkill_under_load_every_250_reaches_the_provider_exactly_once(tmp_path: Path, processes: int,
                                                                            backend: Backend) -> None:
    """With 2 listener processes, the worker outlives the SIGKILLed main
    process for its grace and may still answer 250s: they must count too."""
    rng = random.Random(20240101)
    acknowledged: list[int] = []
    replies: list[str] = []
    async with run_simulator(send_delays=(0.2, 0.2)) as sim:
        sim.add_fault("/extension/*/fax/out/", method="POST", count=None, answer_latency=0.1)
        port = free_port()
        data = config_data(backend.state_dir, sim=sim, smtp_port=port, **backend.config_overrides())
        data["smtp"]["processes"] = processes
        pdfs = [pdf_bytes(1 + i % 3, padding=rng.randrange(0, 60_000), seed=i) for i in range(8)]
        counter = 0

        async def client(stop: asyncio.Event) -> None:
            nonlocal counter
            loop = asyncio.get_running_loop()
            while not stop.is_set():
                started = loop.time()
                counter += 1
                n = counter
                rcpts = [f"{NUMBERS[n % len(NUMBERS)]}@{DOMAIN}"] + ([f"{NUMBERS[(n + 1) % len(NUMBERS)]}@{DOMAIN}"] if n % 5 == 0 else [])
                reply = await smtp_send(port, message(pdfs[n % len(pdfs)], subject=f"kill test {n}"), rcpt=rcpts, timeout=10)
                replies.append(reply)
                acknowledged.extend(job_ids(reply))
                if reply.startswith("conn"):
                    await asyncio.sleep(0.05)
                await asyncio.sleep(max(0.0, PACE - (loop.time() - started)))

        for round_no in range(ROUNDS):
            daemon = await start_daemon(tmp_path, data, name="gatewayd")
            stop = asyncio.Event()
            clients = [asyncio.create_task(client(stop)) for _ in range(CLIENTS)]
            await asyncio.sleep(rng.uniform(0.5, 1.8))
            daemon.kill()  # SIGKILL: no cleanup of any kind
            await daemon.proc.wait()
            stop.set()
            await asyncio.gather(*clients)
            assert backend.integrity() == "ok", f"round {round_no}: database damaged"

        # A last clean run submits and reconciles whatever the kills left behind.
        daemon = await start_daemon(tmp_path, data, name="gatewayd")
        try:
            stored = [j[0] for j in backend.stored_jobs()]

            def settled() -> bool:
                states = {s for _, s, _, _ in backend.stored_jobs()}
                return states <= {"submitted", "sending", "sent"}

            try:
                await wait_until(settled, 90, "every stored job submitted to the provider")
            except AssertionError:
                raise AssertionError(f"jobs not all submitted after 90 s: {backend.state_counts()}, {len(sim.sent)} faxes at the provider\n"
                                     f"{daemon.log_tail()}") from None
        finally:
            code, _ = await daemon.terminate()
        assert code == 0, daemon.log_tail()

        assert len(acknowledged) >= 10, f"too little load to mean anything: {replies[:5]}"
        assert all(r.startswith(("250", "conn", "421")) for r in replies), sorted({r[:40] for r in replies})
        assert_exactly_once(sim, acknowledged, stored)
        backend.assert_documents_whole()
        assert backend.integrity() == "ok"
