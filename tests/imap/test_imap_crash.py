"""SIGKILL of the real daemon between "jobs committed" and "message moved".

How the window is hit, honestly and without any hook in the production code:
the window between the enqueue commit and the IMAP MOVE is a few
milliseconds, too short to kill a process in reliably. So Dovecot is started
with an ACL that refuses inserts into the processed mailbox. The daemon
(``python -m gatewayd run -c FILE``, imap enabled, against this Dovecot and
the provider simulator) then commits the job, submits the fax, and fails to
move the message: it sits exactly in the window, and stays there. It is
killed with SIGKILL in that state; Dovecot comes back without the ACL; a new
daemon starts on the same state directory. It must find the message again,
recognise it by its intake key (Message-ID + SHA-256), queue nothing new,
and move it -- one fax at the provider, the message in Processed.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from support.imap import Dovecot, config_data, fax_message, free_port, to_toml, wait_for
from support.process import GatewayProcess

from gatewayd.provider.simulator import run_simulator
from gatewayd.store import Store

def jobs(state: Path) -> list:
    store = Store(state)
    try:
        return store.list_jobs(limit=100)
    finally:
        store.close()


async def test_sigkill_between_enqueue_and_move_sends_one_fax(dovecot: Dovecot, tmp_path: Path) -> None:
    await asyncio.to_thread(dovecot.restart, deny_insert=("Processed",), graceful=False)
    state = tmp_path / "state"
    log = tmp_path / "gatewayd.log"
    async with run_simulator(send_delays=(0.05, 0.05)) as sim:
        data = config_data(dovecot, state, idle=True, base_url=sim.base_url, smtp_port=free_port())
        data["provider"]["token_url"] = sim.token_url
        config = tmp_path / "config.toml"
        config.write_text(to_toml(data), encoding="utf-8")

        daemon = await GatewayProcess(config, log).start()
        try:
            await dovecot.append(fax_message(subject="crash test"))
            # In the window: the job is committed, the fax is at the provider,
            # the message is still in INBOX because its move was refused.
            await wait_for(lambda: "imap_move_failed" in log.read_text(errors="replace"), timeout=20,
                           what="the refused move (daemon log)")
            await wait_for(lambda: len(sim.sent_faxes()) == 1, timeout=10, what="the fax at the provider")
            assert len(jobs(state)) == 1
            assert await dovecot.counts("INBOX", "Processed") == (1, 0)
            daemon.signal(signal.SIGKILL)
            assert await daemon.wait(10) == -signal.SIGKILL
        finally:
            daemon.kill()  # only if still running
            await daemon.wait(10)

        await asyncio.to_thread(dovecot.restart, deny_insert=(), graceful=False)
        daemon = await GatewayProcess(config, log).start()
        try:
            await wait_for(lambda: dovecot.counts("INBOX", "Processed"), timeout=1)  # server answers
            await wait_for(lambda: _moved(dovecot), timeout=20, what="the message in Processed")
            await asyncio.sleep(1.0)  # time for a duplicate to show up, if there were one
            assert len(sim.sent_faxes()) == 1
            [job] = jobs(state)
            assert job.subject == "crash test" and job.source == "imap"
            assert "intake_duplicate" in log.read_text(errors="replace")
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(15) == 0
        finally:
            daemon.kill()  # only if still running
            await daemon.wait(10)
    assert await dovecot.counts("INBOX", "Processed", "Failed") == (0, 1, 0)


async def _moved(dovecot: Dovecot) -> bool:
    return await dovecot.counts("INBOX", "Processed") == (0, 1)
