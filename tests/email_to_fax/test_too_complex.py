"""Messages built to stall a parser (issue 14, item 3) over real SMTP: each is
refused with ``554 5.6.0 malformed message: too complex`` or handled, and
another SMTP session is answered all the while.

The gateway runs in this test's event loop, so a parse that held the loop
would delay the other session's replies by as long. The bound below is a
generous liveness check only; what each input costs is measured by
bench/bench_hostile.py (docs/security.md, Hostile input)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from support.stall_vectors import ACCEPTED, vectors

from support.e2f import DOMAIN, NUMBER_1, RawSMTP, load, merge, run_gateway

# Far above the ~100 ms a message may take, far below the seconds each of
# these took before the caps.
LIVENESS_BOUND = 2.0


@pytest.mark.parametrize("name,build,expected", vectors(), ids=[v[0] for v in vectors()])
async def test_stall_vector_is_refused_or_handled_while_others_are_answered(tmp_path: Path, data: dict, name: str, build, expected: str) -> None:
    raw = build()
    async with run_gateway(load(tmp_path, merge(data, {"smtp": {"max_message_size": "5MB"}}))) as gw:
        hostile = await RawSMTP.connect(gw.port)
        other = await RawSMTP.connect(gw.port)
        mail = await hostile.cmd("MAIL FROM:<alice@example.com>")
        rcpt = await hostile.cmd(f"RCPT TO:<{NUMBER_1}@{DOMAIN}>")
        assert mail.startswith("250") and rcpt.startswith("250"), (mail, rcpt)
        sending = asyncio.create_task(hostile.data(raw))
        latencies: list[float] = []
        while not sending.done():
            start = time.perf_counter()
            assert await other.cmd("NOOP") == "250 OK"
            latencies.append(time.perf_counter() - start)
            await asyncio.sleep(0.005)
        reply = await sending
        assert reply.startswith(expected), (name, reply)
        if expected == ACCEPTED:
            assert len(gw.jobs()) == 1
        else:
            assert gw.jobs() == []
        assert latencies, "the other session was never answered while the message was processed"
        assert max(latencies) < LIVENESS_BOUND, (name, max(latencies))
        assert await hostile.cmd("NOOP") == "250 OK"  # the hostile session is still in step
        await hostile.close()
        await other.close()
