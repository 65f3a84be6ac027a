"""Crash test: the real daemon (``python -m gatewayd run``) is SIGKILLed at
random points while clients send, and restarted, for a few rounds, with the
provider simulator sometimes committing a fax and then dropping the answer,
and sometimes slow enough that the kill lands mid-upload. At the end every
message answered 250 reached the simulator exactly once, and none twice."""

from __future__ import annotations

import asyncio
import collections
import random
from pathlib import Path

from support.corpus import good_message, make_pdf
from support.e2f import DOMAIN, SENDER, RawSMTP, config_data, free_port, merge, wait_for, write_config
from support.process import GatewayProcess

from gatewayd.store import Store

PDF = make_pdf(1, text="crash test")
NUMBERS = [f"+7495123{i:04d}" for i in range(5)]


class DaemonProcess:
    """The daemon restarted on the same config, port and log (support.process)."""

    def __init__(self, config: Path, log: Path, port: int) -> None:
        self.log = log
        self.process = GatewayProcess(config, log, port=port)
        self.starts = 0

    async def start(self) -> None:
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"--- start {self.starts}\n".encode())
        await self.process.start()
        await self.process.wait_listening()

    async def kill(self) -> None:
        self.process.kill()
        await self.process.wait(10)

    async def terminate(self) -> int:
        code, _ = await self.process.terminate(timeout=5)
        return code


async def test_sigkill_while_sending_never_loses_or_duplicates(tmp_path: Path, sim) -> None:
    rng = random.Random(20250602)
    port = free_port()
    state = tmp_path / "state"
    data = merge(config_data(state, base_url=sim.base_url, token_url=sim.token_url, smtp_port=port),
                 {"log": {"level": "info", "format": "json"}})
    daemon = DaemonProcess(write_config(tmp_path / "config.toml", data), tmp_path / "daemon.log", port)
    await daemon.start()

    answered: dict[int, str] = {}  # job id -> number, for every 250
    unanswered: list[str] = []  # connection lost before a reply: may or may not be stored
    refused: list[str] = []
    stop = asyncio.Event()

    async def client(worker: int) -> None:
        n = 0
        while not stop.is_set():
            # A small pool of numbers: several jobs to one number are in flight
            # together, the case where a lost answer is easiest to misattribute.
            number = NUMBERS[(worker + n) % len(NUMBERS)]
            n += 1
            subject = f"worker {worker} message {n}"
            raw = good_message([("doc.pdf", "application/pdf", PDF)], subject=subject, message_id=f"<{worker}.{n}@crash.test>")
            try:
                c = await RawSMTP.connect(port)
            except OSError:
                await asyncio.sleep(0.05)  # the daemon is down; a new message once it is back
                continue
            try:
                _, _, reply = await c.send(raw, sender=SENDER, recipients=(f"{number}@{DOMAIN}",))
            except (OSError, ConnectionError, asyncio.TimeoutError):
                unanswered.append(subject)
                continue
            finally:
                await c.close()
            if reply.startswith("250 2.0.0 queued as "):
                answered[int(reply.split()[-1])] = number
            elif reply:
                refused.append(reply)

    clients = [asyncio.create_task(client(w)) for w in range(3)]
    try:
        faults = [
            lambda: None,
            lambda: sim.drop_after_commit(3),  # committed, answer lost: AmbiguousSubmit
            lambda: sim.add_latency(0.4, "/extension/*/fax/out/", method="POST", count=None),  # kills land mid-upload
            lambda: sim.drop_after_commit(2),
        ]
        for fault in faults:
            sim.clear_faults()
            fault()
            await asyncio.sleep(rng.uniform(0.8, 2.0))
            await daemon.kill()
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            await daemon.start()
        sim.clear_faults()
        await asyncio.sleep(1.0)
    finally:
        stop.set()
        await asyncio.gather(*clients, return_exceptions=True)

    assert refused == [], refused[:5]
    assert len(answered) >= 20, "too few messages got through to prove anything"
    store = Store(state)
    try:
        def drained() -> bool:
            counts = store.job_counts()
            return not counts.get("queued") and not counts.get("submitting")

        await wait_for(drained, timeout=60, interval=0.2, what="every stored job to be submitted")
        jobs = {j.id: j for j in store.list_jobs(limit=100_000)}
    finally:
        store.close()
    assert await daemon.terminate() == 0

    faxes = sim.sent_faxes()
    by_job = collections.Counter(int(f.filename.removeprefix("fax-").removesuffix(".pdf")) for f in faxes)
    duplicates = {k: v for k, v in by_job.items() if v > 1}
    assert not duplicates, f"sent twice: {duplicates}"
    for job_id, number in answered.items():
        assert by_job[job_id] == 1, f"job {job_id} ({number}) answered 250 but sent {by_job[job_id]} times"
        assert jobs[job_id].number == number and jobs[job_id].provider_id is not None
    # Each job owns the fax made from its own upload (the file name carries the job id).
    by_id = {f.id: f for f in faxes}
    wrong = {j.id: by_id[j.provider_id].filename for j in jobs.values() if by_id[j.provider_id].filename != f"fax-{j.id}.pdf"}
    assert not wrong, f"jobs adopted another job's fax: {wrong}"
    # Whatever was stored (also when the 250 was lost to a kill) was sent exactly once.
    assert set(by_job) == set(jobs)
    provider_ids = [j.provider_id for j in jobs.values()]
    assert len(provider_ids) == len(set(provider_ids)) == len(faxes)
    # The faults really happened: answers were lost and reconciled against the provider's list.
    log = daemon.log.read_text()
    assert log.count('"sender_reconciled"') >= 1, "no lost answer was reconciled"
    assert sim.count_requests("GET", "/extension/*/fax/out/") >= 1
    print(f"{len(answered)} answered, {len(unanswered)} unanswered, {len(faxes)} faxes, {daemon.starts} starts, "
          f"{log.count('sender_reconciled')} adopted, {log.count('sender_requeued_after_reconcile')} requeued after reconciling")
