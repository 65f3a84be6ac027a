"""``gatewayd backup`` under load, then a restore into a new daemon against the
same provider: the provider gets every fax exactly once (docs/operations.md,
Backup and restore).

The backup is taken while SMTP clients keep sending and the daemon keeps
submitting, so the copy holds jobs that are queued or submitting in it but
that the old daemon submits after the backup. The restored daemon must find
those in the provider's list instead of posting them again.

SQLite only: ``gatewayd backup`` copies the state directory's database and
document files; a PostgreSQL store is backed up with PostgreSQL's own tools
(docs/deployment.md, Several nodes on PostgreSQL), and its node's state
directory holds no queue data."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path

import pytest
from support.reliability import (
    DOMAIN,
    NUMBERS,
    REPO,
    assert_exactly_once,
    config_data,
    faxes_by_job,
    free_port,
    integrity,
    job_ids,
    message,
    pdf_bytes,
    smtp_send,
    start_daemon,
    stored_jobs,
    wait_until,
)

from gatewayd.provider.simulator import run_simulator

CLIENTS = 3
PACE = 0.05
SETTLED = {"submitted", "sending", "sent"}


def states(state_dir: Path) -> dict[int, str]:
    return {job_id: state for job_id, state, _, _ in stored_jobs(state_dir)}


def provider_ids(state_dir: Path) -> dict[int, int | None]:
    import sqlite3

    conn = sqlite3.connect(f"file:{state_dir / 'gatewayd.sqlite3'}?mode=ro", uri=True, timeout=15)
    try:
        return dict(conn.execute("SELECT id, provider_id FROM jobs"))
    finally:
        conn.close()


async def run_backup(config: Path, dest: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("GATEWAYD_CONFIG", "STATE_DIRECTORY")}
    env["PYTHONPATH"] = str(REPO)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gatewayd", "backup", "-c", str(config), str(dest),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, f"gatewayd backup exited {proc.returncode}: {err.decode()}"
    return out.decode()


@pytest.mark.timeout(200)
async def test_backup_under_load_then_restore_sends_nothing_twice(tmp_path: Path) -> None:
    acknowledged: list[int] = []
    replies: list[str] = []
    old_state, new_state, copy = tmp_path / "old" / "state", tmp_path / "new" / "state", tmp_path / "backup"
    async with run_simulator(send_delays=(0.2, 0.2)) as sim:
        # Slow answers to the fax POST: a queue builds up, and the backup
        # catches jobs queued and jobs in the middle of their upload.
        sim.add_fault("/extension/*/fax/out/", method="POST", count=None, answer_latency=0.15)
        old_data = config_data(old_state, sim=sim, smtp_port=free_port())
        port = int(old_data["smtp"]["listen"].rsplit(":", 1)[1])
        pdfs = [pdf_bytes(1 + i % 2, padding=2000 * i, seed=i) for i in range(4)]
        counter = 0

        async def client(stop: asyncio.Event) -> None:
            nonlocal counter
            loop = asyncio.get_running_loop()
            while not stop.is_set():
                started = loop.time()
                counter += 1
                n = counter
                reply = await smtp_send(port, message(pdfs[n % len(pdfs)], subject=f"backup test {n}"),
                                        rcpt=[f"{NUMBERS[n % len(NUMBERS)]}@{DOMAIN}"], timeout=10)
                replies.append(reply)
                acknowledged.extend(job_ids(reply))
                await asyncio.sleep(max(0.0, PACE - (loop.time() - started)))

        old = await start_daemon(tmp_path / "old", old_data, name="gatewayd")
        try:
            stop = asyncio.Event()
            clients = [asyncio.create_task(client(stop)) for _ in range(CLIENTS)]
            await asyncio.sleep(1.5)
            summary = await run_backup(tmp_path / "old" / "gatewayd.toml", copy)  # the load goes on meanwhile
            acked_at_backup = len(acknowledged)
            await asyncio.sleep(1.5)  # the old daemon keeps taking mail and sending after the backup
            stop.set()
            await asyncio.gather(*clients)
            assert len(acknowledged) > acked_at_backup, "no mail accepted after the backup"
            # The old daemon submits everything it accepted, then stops.
            await wait_until(lambda: set(states(old_state).values()) <= SETTLED, 90, "the old daemon submitted every job")
        finally:
            code, _ = await old.terminate()
        assert code == 0, old.log_tail()
        assert "backup " in summary and "restore: stop the daemon" in summary, summary

        copied = states(copy)
        unfinished_in_copy = sorted(j for j, s in copied.items() if s in ("queued", "submitting"))
        # Meaningful only if the copy holds jobs the old daemon sent after the backup.
        assert unfinished_in_copy, f"the backup caught no queued job: {copied}"
        sent_by_old = faxes_by_job(sim)
        assert all(j in sent_by_old for j in unfinished_in_copy)
        posts_before = sim.count_requests("POST", "/extension/*/fax/out/")
        assert integrity(copy) == "ok"

        # Restore: a new state directory made from the copy, a new daemon, the same provider.
        shutil.copytree(copy, new_state)
        new_data = config_data(new_state, sim=sim, smtp_port=free_port())
        new = await start_daemon(tmp_path / "new", new_data, name="gatewayd")
        try:
            await wait_until(lambda: set(states(new_state).values()) <= SETTLED, 90,
                             "the restored daemon reconciled every unfinished job")
            await asyncio.sleep(1.0)  # room for a wrong second POST to show
        finally:
            code, _ = await new.terminate()
        assert code == 0, new.log_tail()

    # Nothing was posted by the restored daemon: every job of the copy was found at the provider.
    assert sim.count_requests("POST", "/extension/*/fax/out/") == posts_before, new.log_tail()
    old_jobs = list(states(old_state))
    assert_exactly_once(sim, acknowledged, old_jobs)
    sent = faxes_by_job(sim)
    restored = states(new_state)
    restored_ids = provider_ids(new_state)
    for job_id in acknowledged:
        # Every 250: at the provider once, or (none here) still waiting in the restored queue.
        assert len(sent.get(job_id, [])) == 1 or restored.get(job_id) == "queued", job_id
    for job_id in unfinished_in_copy:
        # The restored job follows the very fax the old daemon sent for it.
        assert restored_ids[job_id] == sent[job_id][0].id, (job_id, restored_ids[job_id], [f.id for f in sent[job_id]])
    assert "restored_from_backup" in new.log_path.read_text(errors="replace")
    assert all(r.startswith("250") for r in replies), sorted({r[:40] for r in replies})
    # The copy itself is a state directory: database and every document.
    assert (copy / "gatewayd.sqlite3").is_file()
    for _, _, sha, size in stored_jobs(copy):
        assert (copy / "documents" / sha[:2] / f"{sha}.pdf").stat().st_size == size
