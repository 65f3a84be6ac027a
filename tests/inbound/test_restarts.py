"""The daemon as a real process, SIGKILLed at random points while faxes
arrive: at the end every fax reached every recipient exactly once.

The provider simulator and the mail sink run in the test process; the
daemon (`python -m gatewayd run -c FILE`) talks to them over loopback. Kills
land anywhere (start-up, listing, download, conversion, the queue commit,
an SMTP session before DATA) except inside the one window no SMTP client
can close: between the end of its DATA and reading the relay's 250 (see
RecordingSink). The seed is printed on failure; INBOUND_KILL_SEED replays it.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from pathlib import Path

import pytest

from support.inbound import attachments, by_uuid, config_data, pdf_info, to_toml, wait_until
from support.process import GatewayProcess

from gatewayd.store import Store
from support.ports import free_port  # noqa: F401 (also a public name here)

ROUNDS = 8
MAX_ROUNDS = 20  # more rounds while fewer than 2 kills have hit work in flight


def relay_commit_pending(state_dir: Path, sink) -> bool:
    """True while an email the sink already holds is still pending in the outbox."""
    from email import message_from_bytes

    if not (state_dir / "gatewayd.sqlite3").exists():
        return False
    delivered = {str(m.message["Message-ID"]) for m in sink.messages}
    store = Store(state_dir)
    try:
        pending = store.list_mail(state="pending", limit=10_000)
    finally:
        store.close()
    return any(str(message_from_bytes(m.message)["Message-ID"]) in delivered for m in pending)




async def start_daemon(cfg: Path, log: Path) -> GatewayProcess:
    # Not waiting for it to listen: a kill may land anywhere, start-up included.
    return await GatewayProcess(cfg, log).start()


@pytest.mark.timeout(240)  # up to MAX_ROUNDS rounds of a few seconds each
async def test_sigkill_at_random_points_never_loses_or_duplicates_a_fax(sim, sink, tmp_path, faxes):
    seed = int(os.environ.get("INBOUND_KILL_SEED") or time.time_ns() % 1_000_000)
    rng = random.Random(seed)
    sim.extensions[122].fax_mailto = "alice@x.test,bob@y.test"
    sim.extensions[123].fax_mailto = "carol@z.test"
    recipients = {122: {"alice@x.test", "bob@y.test"}, 123: {"carol@z.test"}}
    cfg = tmp_path / "gatewayd.toml"
    data = config_data(sim, sink, tmp_path / "state", smtp={"listen": f"127.0.0.1:{free_port()}"})
    data["mail"]["admin"] = []
    cfg.write_text(to_toml(data))
    log = tmp_path / "daemon.log"
    samples = list(faxes.values())
    injected: dict[str, tuple[int, int]] = {}  # uuid -> (extension, pages)
    kills: list[float] = []
    outstanding: list[int] = []  # faxes injected but not yet delivered, at each kill

    def inject() -> None:
        ext = rng.choice((122, 123))
        sample = rng.choice(samples)
        uuid = sim.inject_received(ext, sample.data, caller_id=f"7495{rng.randrange(10**7):07d}")
        injected[uuid] = (ext, sample.pages)

    for round_no in range(MAX_ROUNDS):
        # At least ROUNDS kills, and at least two of them with faxes in
        # flight (random timing cannot promise that in a fixed number).
        if round_no >= ROUNDS and sum(1 for n in outstanding if n) >= 2:
            break
        for _ in range(rng.randint(0, 2)):
            inject()
        proc = await start_daemon(cfg, log)
        lifetime = rng.uniform(0.2, 3.0)
        started = time.monotonic()
        while time.monotonic() - started < lifetime:
            await asyncio.sleep(rng.uniform(0.05, 0.6))
            if rng.random() < 0.4:
                inject()
        # Not inside the one window no SMTP client can close: the relay said
        # 250 but the daemon has not committed it yet. Known exactly from the
        # store, so a loaded machine cannot make the test flaky.
        await wait_until(lambda: sink.quiet_for(0.2) and not relay_commit_pending(tmp_path / "state", sink), timeout=30, interval=0.01)
        proc.signal(signal.SIGKILL)  # no await since the check: nothing ran in between
        kills.append(time.monotonic() - started)
        outstanding.append(len(set(injected) - set(by_uuid(sink.messages))))
        assert await proc.wait(10) == -signal.SIGKILL
    inject()

    expected = sum(len(recipients[ext]) for ext, _ in injected.values())
    proc = await start_daemon(cfg, log)
    try:
        await wait_until(lambda: sum(len(m.rcpt_tos) for m in sink.messages) >= expected, timeout=40)
        await asyncio.sleep(2.5)  # a few more polls: anything extra would show up now
    finally:
        proc.signal(signal.SIGTERM)
        code = await proc.wait(10)
    context = f"seed={seed} kills at {[round(k, 2) for k in kills]}, outstanding {outstanding}; daemon log {log}"
    assert code == 0, context
    # The kills must have hit work in flight, or this test proves nothing.
    assert sum(1 for n in outstanding if n) >= 2, context

    mails = by_uuid(sink.messages)
    assert set(mails) == set(injected), context
    for uuid, (ext, pages) in injected.items():
        got = sorted(r for m in mails[uuid] for r in m.rcpt_tos)
        assert got == sorted(recipients[ext]), f"{uuid}: {got}; {context}"
        assert len({m.message["Message-ID"] for m in mails[uuid]}) == 1, context  # one email per fax
        [(_, _, pdf)] = attachments(mails[uuid][0].message)
        assert pdf_info(pdf)[0] == pages
    store = Store(tmp_path / "state")
    try:
        rows = store.list_received(limit=10_000)
    finally:
        store.close()
    assert {r.uuid: r.state for r in rows} == {u: "relayed" for u in injected}, context
    assert sim.count_requests("DELETE") == 0


async def test_held_fax_goes_out_after_sighup_reload_of_the_real_daemon(sim, sink, tmp_path, faxes):
    cfg = tmp_path / "gatewayd.toml"
    data = config_data(sim, sink, tmp_path / "state", smtp={"listen": f"127.0.0.1:{free_port()}"})
    cfg.write_text(to_toml(data))
    log = tmp_path / "daemon.log"
    uuid = sim.inject_received(123, faxes["g4"].data)  # 123 has no fax_mailto
    proc = await start_daemon(cfg, log)
    try:
        def held() -> bool:
            store = Store(tmp_path / "state")
            try:
                row = store.get_received(uuid)
            finally:
                store.close()
            return row is not None and row.state == "no_recipient"

        await wait_until(lambda: log.exists() and b"inbound_fax_held" in log.read_bytes(), timeout=20)
        assert held()
        await asyncio.sleep(1.5)  # more polls: it stays held, nothing is sent
        assert sink.messages == []
        data["inbound"]["routes"] = {"78123092631": ["night@x.test"]}
        cfg.write_text(to_toml(data))
        proc.signal(signal.SIGHUP)
        await sink.wait_for(1, timeout=15)
        await asyncio.sleep(1.5)
    finally:
        proc.signal(signal.SIGTERM)
        code = await proc.wait(10)
    assert code == 0, log.read_text()
    [mail] = by_uuid(sink.messages)[uuid]
    assert mail.rcpt_tos == ("night@x.test",)
    assert pdf_info(attachments(mail.message)[0][2])[0] == faxes["g4"].pages
