"""SIGTERM to ``gatewayd run`` in the middle of DATA: the client gets ``421``
or its transaction completes (``250`` with the job stored); the daemon exits
0 within 10 s (SPEC section 2); nothing is half-stored (the jobs are exactly
the ones answered 250, every document whole, SQLite ``integrity_check`` ok,
or PostgreSQL's rows whole). On both backends (issue 17)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from support.backends import Backend
from support.reliability import (
    DOMAIN,
    NUMBERS,
    SENDER,
    config_data,
    free_port,
    job_ids,
    message,
    pdf_bytes,
    read_reply,
    start_daemon,
    stuffed,
)

from gatewayd.provider.simulator import run_simulator


async def open_data(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A session that has just been told 354."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert (await read_reply(reader)).startswith("220")
    for line in ["EHLO client.test", f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{NUMBERS[0]}@{DOMAIN}>", "DATA"]:
        writer.write(line.encode() + b"\r\n")
        reply = await read_reply(reader)
        assert reply.startswith(("250", "354")), reply
    return reader, writer


async def final_reply(reader: asyncio.StreamReader) -> str:
    try:
        return await read_reply(reader, timeout=15)
    except (ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
        return f"conn: {exc}"


@pytest.mark.timeout(90)
async def test_sigterm_in_the_middle_of_data(tmp_path: Path, backend: Backend) -> None:
    async with run_simulator(send_delays=(0.1, 0.1)) as sim:
        port = free_port()
        data = config_data(backend.state_dir, sim=sim, smtp_port=port, **backend.config_overrides())
        daemon = await start_daemon(tmp_path, data)
        body = stuffed(message(pdf_bytes(1, padding=600_000, seed=5), subject="sigterm"))
        half = len(body) // 2
        # Three sessions in DATA: one stalls for good, one finishes right after
        # the signal, one finishes 1.5 s later (still within the grace).
        sessions = [await open_data(port) for _ in range(3)]
        for _, writer in sessions:
            writer.write(body[:half])
            await writer.drain()
        await asyncio.sleep(0.3)
        code_task = asyncio.create_task(daemon.terminate(timeout=10))
        await asyncio.sleep(0.1)
        stalled, quick, late = sessions
        quick[1].write(body[half:])
        await quick[1].drain()

        async def finish_late() -> str:
            await asyncio.sleep(1.5)
            with contextlib.suppress(OSError):
                late[1].write(body[half:])
                await late[1].drain()
            return await final_reply(late[0])

        replies = await asyncio.gather(final_reply(stalled[0]), final_reply(quick[0]), finish_late())
        # A new client after the signal is not served.
        refused = ""
        with contextlib.suppress(OSError):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            refused = await final_reply(r)
            w.close()
        code, seconds = await code_task
        for _, writer in sessions:
            writer.close()

    assert code == 0, daemon.log_tail()
    assert seconds < 10.0, f"took {seconds:.1f} s to stop"
    assert replies[0].startswith("421"), replies  # stalled mid-DATA: told to come back later
    for reply in replies[1:]:
        assert reply.startswith(("421", "250 2.0.0 queued as ")), replies
    assert refused == "" or refused.startswith(("421", "conn")), refused
    acknowledged = [i for r in replies for i in job_ids(r)]
    assert [j[0] for j in backend.stored_jobs()] == sorted(acknowledged), (replies, backend.stored_jobs())
    backend.assert_documents_whole()  # on SQLite: no .tmp-* file left either
    assert backend.integrity() == "ok"
