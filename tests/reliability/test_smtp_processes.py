"""``smtp.processes`` > 1 with real processes: ``gatewayd run`` as a
subprocess starts its SMTP listener processes (one ``SO_REUSEPORT`` group on
127.0.0.1), and the tests check what a client, the store, the provider
simulator, ``/metrics`` and the process table see:

* mail from many connections is taken in by both processes, every 250 has
  its job, and the workers' reply counts reach ``/metrics``;
* a job a worker accepted is uploaded at once (the "wake the sender" is
  forwarded to the main process; its idle poll is 5 s);
* a worker killed with SIGKILL is restarted and takes mail again;
* SIGHUP reaches the workers (a sender rule removed: they refuse at once);
* SIGKILL of the main process takes the workers down, and a new run on the
  same port and state directory works;
* SIGTERM: exit 0 within 10 s, no worker left;
* ``check-config`` validates ``smtp.processes``.

The tests whose processes store jobs run on both backends (issue 17): on
PostgreSQL every listener process has its own connections to the database.

Every process a test starts is killed by pid in ``finally``."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tomli_w import dumps as to_toml
from support.backends import Backend
from support.reliability import (
    DOMAIN,
    NUMBERS,
    REPO,
    DaemonProcess,
    config_data,
    faxes_by_job,
    free_port,
    in_process,
    job_ids,
    load,
    message,
    SENDER,
    pdf_bytes,
    read_reply,
    smtp_send,
    start_daemon,
    wait_until,
)

from gatewayd.config import auto_processes
from gatewayd.email_to_fax.smtp import SmtpListener, SmtpTuning
from gatewayd.passwords import hash_password
from gatewayd.provider.simulator import run_simulator

WORKER_MODULE = "gatewayd.email_to_fax.smtp_worker"
NOT_AUTHORISED = "550 5.7.1 sender not authorised"
SENDER_IDLE_POLL = 5.0  # gatewayd.email_to_fax.sender.SenderTuning.idle_poll: not a config key


# ------------------------------------------------------------------ helpers


def events(daemon: DaemonProcess, name: str | None = None) -> list[dict[str, Any]]:
    """The JSON log events of the run (main process and workers share the file)."""
    out = []
    try:
        text = daemon.log_path.read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if name is None or event.get("event") == name:
            out.append(event)
    return out


def proc_state(pid: int) -> str | None:
    """The state letter of ``pid`` (``R``, ``S``, ``Z``...), None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def is_worker(pid: int) -> bool:
    """A live (not zombie) SMTP listener process of gatewayd with this pid."""
    if proc_state(pid) in (None, "Z", "X"):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return WORKER_MODULE.encode() in cmdline


def children(pid: int) -> set[int]:
    out: set[int] = set()
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                out.update(int(c) for c in (task / "children").read_text().split())
    return out


def worker_pids(daemon: DaemonProcess) -> set[int]:
    """Every worker pid the run has had: from its log and its children now."""
    pids: set[int] = set()
    for event in events(daemon, "smtp_processes_started"):
        pids.update(int(p) for p in event.get("pids") or [])
    for event in events(daemon, "smtp_process_restarted"):
        if event.get("pid"):
            pids.add(int(event["pid"]))
    if daemon.proc.returncode is None:
        pids.update(p for p in children(daemon.proc.pid) if is_worker(p))
    return pids


def started_workers(daemon: DaemonProcess) -> list[int]:
    started = events(daemon, "smtp_processes_started")
    assert len(started) == 1, f"expected one smtp_processes_started event:\n{daemon.log_tail()}"
    return [int(p) for p in started[0]["pids"]]


@contextlib.asynccontextmanager
async def gateway(workdir: Path, data: dict[str, Any], *, name: str = "gatewayd") -> AsyncIterator[DaemonProcess]:
    """``gatewayd run``; at the end the main process and every worker it had are killed (by pid)."""
    daemon = await start_daemon(workdir, data, name=name)
    known: set[int] = set()
    try:
        # The main process listens before it starts the workers; ready is after both.
        await wait_event(daemon, "gatewayd_ready", 30)
        known |= worker_pids(daemon)
        yield daemon
    finally:
        with contextlib.suppress(Exception):
            known |= worker_pids(daemon)
        daemon.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(daemon.proc.wait(), 10)
        for pid in known:
            if is_worker(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def processes_config(tmp_path: Path, sim: Any, *, processes: Any = 2, http_port: int | None = None,
                     backend: Backend | None = None, **sections: dict[str, Any]) -> dict[str, Any]:
    overrides = backend.config_overrides() if backend is not None else {}
    data = config_data(tmp_path / "state", sim=sim, smtp_port=free_port(), **overrides, **sections)
    data["smtp"]["processes"] = processes
    if http_port is not None:
        data["http"] = {"listen": f"127.0.0.1:{http_port}"}
    return data


def transactions(daemon: DaemonProcess) -> list[dict[str, Any]]:
    return events(daemon, "smtp_transaction")


def taken_by(daemon: DaemonProcess) -> dict[int, int]:
    """Job id -> the listener process whose transaction accepted it (0: the main process)."""
    out: dict[int, int] = {}
    for event in transactions(daemon):
        for job in event.get("job_ids") or []:
            out[int(job)] = int(event.get("smtp_process") or 0)
    return out


async def send_many(port: int, count: int, *, clients: int, subject: str) -> tuple[list[str], list[str]]:
    """``count`` messages, each on a new connection, from ``clients`` concurrent clients.

    (final replies, every reply the server gave)."""
    pdf = pdf_bytes(1)
    finals: list[str] = []
    transcript: list[str] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)

    async def client() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            rcpt = [f"{NUMBERS[i % len(NUMBERS)]}@{DOMAIN}"]
            finals.append(await smtp_send(port, message(pdf, subject=f"{subject} {i}"), rcpt=rcpt, timeout=15,
                                          transcript=transcript))

    await asyncio.wait_for(asyncio.gather(*(client() for _ in range(clients))), 60)
    return finals, transcript


def metric(port: int, name: str, **labels: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{([^}}]*)\}})? (\S+)$")
    for line in text.splitlines():
        m = pattern.match(line)
        if m and ",".join(sorted((m.group(1) or "").split(","))) == want:
            return float(m.group(2))
    return None


async def wait_event(daemon: DaemonProcess, name: str, timeout: float) -> dict[str, Any]:
    """The first ``name`` event of the run, waited for."""
    found: list[dict[str, Any]] = []

    def seen() -> bool:
        found[:] = events(daemon, name)
        return bool(found)

    try:
        await wait_until(seen, timeout, f"log event {name}")
    except AssertionError:
        raise AssertionError(f"no {name} event within {timeout} s:\n{daemon.log_tail()}") from None
    return found[0]


async def wait_gone(pids: set[int], timeout: float) -> float:
    """Seconds until none of ``pids`` is a live worker; AssertionError after ``timeout``."""
    started = time.monotonic()
    while any(is_worker(p) for p in pids):
        if time.monotonic() - started > timeout:
            alive = sorted(p for p in pids if is_worker(p))
            raise AssertionError(f"worker processes {alive} still running {timeout} s later")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def socket_owners(pids: set[int], server_port: int) -> dict[int, int]:
    """Client port -> pid, for the loopback connections to ``server_port`` whose
    server end is held by one of ``pids`` (from /proc/PID/fd and /proc/net/tcp)."""
    inode_pid: dict[str, int] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inode_pid[target[8:-1]] = pid
    owners: dict[int, int] = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if int(local.split(":")[1], 16) == server_port and inode in inode_pid:
            owners[int(remote.split(":")[1], 16)] = inode_pid[inode]
    return owners


async def open_data(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A session that has just been told 354."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert (await read_reply(reader, 10)).startswith("220")
    for line in ["EHLO client.test", f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{NUMBERS[0]}@{DOMAIN}>", "DATA"]:
        writer.write(line.encode() + b"\r\n")
        reply = await read_reply(reader, 10)
        assert reply.startswith(("250", "354")), reply
    return reader, writer


# -------------------------------------------------------------------- tests


@pytest.mark.timeout(60)
async def test_two_processes_take_mail_in_and_count_replies(tmp_path: Path, backend: Backend) -> None:
    async with run_simulator() as sim:
        http_port = free_port()
        data = processes_config(tmp_path, sim, http_port=http_port, backend=backend)
        async with gateway(tmp_path, data) as daemon:
            workers = started_workers(daemon)
            assert len(workers) == 1 and is_worker(workers[0]), (workers, daemon.log_tail())
            assert workers[0] in children(daemon.proc.pid)

            finals, transcript = await send_many(daemon.port, 40, clients=8, subject="two processes")
            assert all(r.startswith("250 2.0.0 queued as ") for r in finals), sorted(set(finals))
            acknowledged = sorted(j for r in finals for j in job_ids(r))
            assert len(acknowledged) == 40
            assert [j[0] for j in backend.stored_jobs()] == acknowledged

            accepted = [e for e in transactions(daemon) if str(e.get("reply", "")).startswith("250")]
            assert len(accepted) == 40, [e.get("reply") for e in accepted]
            by_process = {int(e.get("smtp_process") or 0) for e in accepted}
            assert by_process == {0, 1}, f"mail taken in only by process(es) {by_process}"
            assert sorted(taken_by(daemon)) == acknowledged

            # Every reply that ends a transaction is counted once, whichever process
            # gave it (the reply to DATA; not EHLO/MAIL/RCPT's: docs/operations.md, Metrics).
            expected = {"250": sum(1 for r in finals if r.startswith("250"))}
            assert expected["250"] == 40 and sum(1 for r in transcript if r.startswith("250")) == 4 * 40
            counted: dict[str, float | None] = {}

            async def counts_arrived() -> bool:
                for code in expected:
                    counted[code] = await asyncio.to_thread(metric, http_port, "gatewayd_smtp_replies_total", code=code)
                return all(counted[c] == expected[c] for c in expected)

            try:
                await wait_until(counts_arrived, 5, "the workers' reply counts in /metrics", interval=0.2)
            except AssertionError:
                raise AssertionError(f"/metrics has {counted}, the clients saw {expected}") from None
            await asyncio.sleep(1.5)  # two more reports: nothing counted twice
            assert await counts_arrived(), (counted, expected)
            assert await asyncio.to_thread(metric, http_port, "gatewayd_service_restarts_total", service="smtp") in (None, 0.0)

            code, seconds = await daemon.terminate()
            assert code == 0 and seconds < 10, (code, seconds, daemon.log_tail())
        assert backend.integrity() == "ok"


@pytest.mark.timeout(90)
async def test_a_worker_wakes_the_sender(tmp_path: Path, backend: Backend) -> None:
    """One message at a time: each sent just after the previous upload, so the
    sender has just begun its idle nap of 5 s; a job a worker accepted must be
    at the provider well before that nap ends."""
    async with run_simulator() as sim:
        data = processes_config(tmp_path, sim, backend=backend)
        pdf = pdf_bytes(1)
        latencies: dict[int, tuple[int, float]] = {}  # job -> (process, seconds from 250 to the provider)
        async with gateway(tmp_path, data) as daemon:
            for i in range(20):
                reply = await smtp_send(daemon.port, message(pdf, subject=f"wake {i}"), timeout=15)
                acked = time.monotonic()
                (job,) = job_ids(reply) or [None]
                assert job is not None, reply
                await wait_until(lambda: job in faxes_by_job(sim), 2 * SENDER_IDLE_POLL + 5, f"job {job} at the provider")
                latencies[job] = (taken_by(daemon).get(job, -1), time.monotonic() - acked)
                if sum(1 for p, _ in latencies.values() if p == 1) >= 3:
                    break
                await asyncio.sleep(0.3)
            code, _ = await daemon.terminate()
            assert code == 0, daemon.log_tail()
        assert -1 not in {p for p, _ in latencies.values()}, (latencies, daemon.log_tail())
        by_worker = {j: s for j, (p, s) in latencies.items() if p == 1}
        assert len(by_worker) >= 1, f"no message went to the worker in {len(latencies)} tries: {latencies}"
        slow = {j: round(s, 2) for j, s in by_worker.items() if s > SENDER_IDLE_POLL / 2}
        assert not slow, f"jobs a worker accepted waited for the sender's idle poll: {slow} (all: {latencies})"


@pytest.mark.timeout(90)
async def test_a_killed_worker_is_restarted(tmp_path: Path, backend: Backend) -> None:
    async with run_simulator() as sim:
        http_port = free_port()
        data = processes_config(tmp_path, sim, http_port=http_port, backend=backend)
        async with gateway(tmp_path, data) as daemon:
            (old,) = started_workers(daemon)
            assert is_worker(old)
            os.kill(old, signal.SIGKILL)
            exited = await wait_event(daemon, "smtp_process_exited", 5)
            assert exited["pid"] == old and exited["process"] == 1 and exited["code"] == -signal.SIGKILL, exited
            restarted = await wait_event(daemon, "smtp_process_restarted", 20)
            new = int(restarted["pid"])
            assert new != old and restarted["process"] == 1
            assert is_worker(new) and new in children(daemon.proc.pid)
            assert not is_worker(old)
            assert await asyncio.to_thread(metric, http_port, "gatewayd_service_restarts_total", service="smtp") == 1.0

            before = len(transactions(daemon))
            finals, _ = await send_many(daemon.port, 30, clients=6, subject="after restart")
            assert all(r.startswith("250 2.0.0 queued as ") for r in finals), sorted(set(finals))
            acknowledged = sorted(j for r in finals for j in job_ids(r))
            assert len(acknowledged) == 30
            assert [j[0] for j in backend.stored_jobs()] == acknowledged
            after = [e for e in transactions(daemon)[before:] if str(e.get("reply", "")).startswith("250")]
            assert sorted(j for e in after for j in e["job_ids"]) == acknowledged
            by_process = {int(e.get("smtp_process") or 0) for e in after}
            assert by_process == {0, 1}, f"after the restart mail was taken in only by process(es) {by_process}"
            assert len(events(daemon, "smtp_process_exited")) == 1, daemon.log_tail()

            code, _ = await daemon.terminate()
            assert code == 0, daemon.log_tail()
        assert not is_worker(new)


@pytest.mark.timeout(60)
async def test_a_stuck_worker_is_killed_and_replaced(tmp_path: Path, backend: Backend) -> None:
    """A worker whose event loop stops (SIGSTOP here) stops reporting: after
    ``process_stall_timeout`` it is killed and a new one takes its place, so
    its socket does not keep its share of the connections waiting."""
    async with run_simulator() as sim:
        config = load(processes_config(tmp_path, sim, backend=backend))
        tuning = SmtpTuning(stop_grace=1.0, process_stall_timeout=2.0)
        async with in_process(config, smtp_tuning=tuning) as h:
            listener = next(s for s in h.services if isinstance(s, SmtpListener))
            assert listener.processes is not None
            worker = listener.processes.workers[0]
            assert worker.proc is not None
            stuck = worker.proc.pid
            os.kill(stuck, signal.SIGSTOP)
            started = time.monotonic()
            try:
                await wait_until(lambda: worker.proc is not None and worker.proc.pid != stuck
                                 and worker.ready is not None and worker.ready.done(), 20, "a new worker in place of the stuck one")
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(stuck, signal.SIGCONT)
            took = time.monotonic() - started
            assert 2.0 <= took < 15, took  # not before the timeout; the restart backoff is at most ~1 s
            assert proc_state(stuck) in (None, "Z"), "the stuck worker was not killed"
            assert h.rt.metrics.service_restarts.labels("smtp")._value.get() == 1.0
            # Every connection is answered again (one in a stuck worker's queue would hang).
            finals, _ = await send_many(h.port, 20, clients=5, subject="after the stall")
            assert all(r.startswith("250 2.0.0 queued as ") for r in finals), sorted(set(finals))
            assert len(backend.stored_jobs()) == 20


@pytest.mark.timeout(60)
async def test_sighup_reaches_the_workers(tmp_path: Path, backend: Backend) -> None:
    async with run_simulator() as sim:
        data = processes_config(tmp_path, sim, backend=backend)
        async with gateway(tmp_path, data) as daemon:
            finals, _ = await send_many(daemon.port, 6, clients=3, subject="before reload")
            assert all(r.startswith("250 2.0.0 queued as ") for r in finals), finals
            jobs_before = [j[0] for j in backend.stored_jobs()]

            data["senders"] = [{"match": ["*@elsewhere.example"]}]  # the test's sender no longer matches
            (tmp_path / "gatewayd.toml").write_text(to_toml(data), encoding="utf-8")
            before = len(transactions(daemon))
            daemon.proc.send_signal(signal.SIGHUP)
            applied = await wait_event(daemon, "reload_applied", 10)
            assert "senders" in applied["changed"] and not applied["needs_restart"], applied
            # The worker gets the configuration over its channel right after
            # the main process applied it: a moment for it to arrive.
            await asyncio.sleep(0.3)

            finals, _ = await send_many(daemon.port, 12, clients=4, subject="after reload")
            assert finals and all(r == NOT_AUTHORISED for r in finals), sorted(set(finals))
            assert [j[0] for j in backend.stored_jobs()] == jobs_before
            refused = [e for e in transactions(daemon)[before:] if e.get("reply") == NOT_AUTHORISED]
            assert len(refused) == 12, (len(refused), daemon.log_tail())
            by_process = {int(e.get("smtp_process") or 0) for e in refused}
            assert by_process == {0, 1}, f"refusals came only from process(es) {by_process}"
            assert not any(str(e.get("reply", "")).startswith("250") for e in transactions(daemon)[before:])

            code, _ = await daemon.terminate()
            assert code == 0, daemon.log_tail()


@pytest.mark.timeout(60)
async def test_workers_stop_when_the_main_process_is_killed(tmp_path: Path, backend: Backend) -> None:
    async with run_simulator() as sim:
        data = processes_config(tmp_path, sim, backend=backend)
        async with gateway(tmp_path, data) as first:
            workers = set(started_workers(first))
            assert workers and all(is_worker(p) for p in workers)
            finals, _ = await send_many(first.port, 4, clients=2, subject="first run")
            assert all(r.startswith("250 ") for r in finals), finals
            # A client in the middle of DATA on a worker when the main process dies:
            # the worker gives it the listener's grace, then 421, and exits.
            sessions: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
            on_worker: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
            try:
                while not on_worker and len(sessions) < 30:
                    reader, writer = await open_data(first.port)
                    writer.write(b"Subject: half a message\r\n\r\n")
                    await writer.drain()
                    sessions.append((reader, writer))
                    owner = socket_owners(workers, first.port).get(writer.get_extra_info("sockname")[1])
                    if owner is not None:
                        on_worker.append((reader, writer))
                assert on_worker, "no connection reached the worker"
                first.kill()  # SIGKILL: the main process does nothing more
                await first.proc.wait()
                seconds = await wait_gone(workers, 6)
                try:
                    told = await read_reply(on_worker[0][0], 5)
                except (ConnectionError, OSError, asyncio.IncompleteReadError) as exc:
                    told = f"conn: {exc}"
            finally:
                for _, writer in sessions:
                    writer.close()
        assert seconds < 6
        assert told.startswith("421 "), f"the worker's session in DATA was told {told!r}"

        # Nothing of the first run holds the port: a new run takes it (and the state directory).
        async with gateway(tmp_path, data, name="gatewayd-second") as second:
            assert len(started_workers(second)) == 1
            finals, _ = await send_many(second.port, 10, clients=4, subject="second run")
            assert all(r.startswith("250 2.0.0 queued as ") for r in finals), sorted(set(finals))
            acknowledged = [j for r in finals for j in job_ids(r)]
            stored = {j[0] for j in backend.stored_jobs()}
            assert set(acknowledged) <= stored and len(stored) == 14
            assert set(taken_by(second)) == set(acknowledged)
            code, _ = await second.terminate()
            assert code == 0, second.log_tail()
        assert backend.integrity() == "ok"


TOO_MANY_FROM_CLIENT = "421 4.7.0 too many connections from your address"


async def greet(port: int) -> tuple[str, asyncio.StreamReader, asyncio.StreamWriter]:
    """A new connection and its first reply line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    line = await read_reply(reader, 10)
    return line, reader, writer


def close_all(conns: list[tuple[str, asyncio.StreamReader, asyncio.StreamWriter]]) -> None:
    for _line, _reader, writer in conns:
        writer.close()


@pytest.mark.timeout(90)
async def test_per_client_limits_count_over_every_process(tmp_path: Path) -> None:
    # docs/smtp.md, "Limits per client": the main process counts for all, so a
    # client has the same limit however the kernel spreads its connections, and
    # the sessions of a worker that dies are given back.
    limit = 6
    async with run_simulator() as sim:
        data = processes_config(tmp_path, sim)
        data["smtp"].update({"trusted_networks": ["192.0.2.0/24"], "max_connections_per_client": limit})
        async with gateway(tmp_path, data) as daemon:
            port = int(data["smtp"]["listen"].rsplit(":", 1)[1])
            worker = started_workers(daemon)[0]
            for _attempt in range(6):
                held = [await greet(port) for _ in range(limit)]
                assert all(line.startswith("220 ") for line, _, _ in held), [line for line, _, _ in held]
                await asyncio.sleep(0.2)  # /proc/net/tcp shows the server ends
                owners = socket_owners({daemon.proc.pid, worker}, port)
                mine = [c for c in held if owners.get(c[2].get_extra_info("sockname")[1]) == worker]
                if mine and len(mine) < limit:
                    break  # both processes hold some of the client's sessions
                close_all(held)
                await asyncio.sleep(0.3)
            else:
                raise AssertionError("six rounds of connections all landed in one process")
            # One more, whichever process takes it: refused.
            extra = [await greet(port) for _ in range(4)]
            assert [line for line, _, _ in extra] == [TOO_MANY_FROM_CLIENT] * 4
            close_all(extra)
            # One closed (in the main process or the worker): one slot again.
            held[0][2].close()
            await asyncio.sleep(0.5)  # its close reaches the main process
            again = await greet(port)
            assert again[0].startswith("220 "), again[0]
            held[0] = again
            await asyncio.sleep(0.2)
            owners = socket_owners({daemon.proc.pid, worker}, port)
            # The worker dies holding some of them: they are given back, no more.
            still_mine = [c for c in held if owners.get(c[2].get_extra_info("sockname")[1]) == worker]
            os.kill(worker, signal.SIGKILL)
            await wait_event(daemon, "smtp_process_exited", 10)
            await asyncio.sleep(0.5)
            freed = len(still_mine)
            after = [await greet(port) for _ in range(freed + 2)]
            lines = [line for line, _, _ in after]
            assert sum(line.startswith("220 ") for line in lines) == freed, (freed, lines)
            assert lines.count(TOO_MANY_FROM_CLIENT) == 2, lines
            close_all(after)
            close_all(held)


@pytest.mark.timeout(90)
async def test_max_connections_is_shared_out(tmp_path: Path) -> None:
    # docs/smtp.md, Limits: smtp.max_connections is the whole listener's; with
    # 2 processes each takes its half (rounded up), so 6 clients at once get 2 sessions at most.
    async with run_simulator() as sim:
        data = processes_config(tmp_path, sim)
        data["smtp"]["max_connections"] = 2
        async with gateway(tmp_path, data) as daemon:
            port = int(data["smtp"]["listen"].rsplit(":", 1)[1])
            conns = [await greet(port) for _ in range(6)]
            lines = [line for line, _, _ in conns]
            accepted = sum(line.startswith("220 ") for line in lines)
            assert 1 <= accepted <= 2, lines
            assert lines.count("421 4.7.0 too many connections") == 6 - accepted, lines
            limits = {e.get("limit") for e in events(daemon, "smtp_too_many_connections")}
            assert limits == {1}, daemon.log_tail()
            close_all(conns)


@pytest.mark.timeout(90)
async def test_auth_failures_count_over_every_process(tmp_path: Path) -> None:
    async with run_simulator() as sim:
        data = processes_config(tmp_path, sim)
        data["smtp"].update({"users": [{"name": "scanner", "password_hash": hash_password("right")}],
                             "auth_failures_per_client": 3, "auth_failure_window": "10m"})
        wrong = "AUTH PLAIN " + base64.b64encode(b"\0scanner\0wrong").decode()
        async with gateway(tmp_path, data) as daemon:
            port = int(data["smtp"]["listen"].rsplit(":", 1)[1])
            replies = []
            for _ in range(9):  # a new connection for each attempt: the kernel spreads them
                line, reader, writer = await greet(port)
                assert line.startswith("220 "), line
                writer.write(b"EHLO client.test\r\n")
                assert (await read_reply(reader, 10)).startswith("250")
                writer.write(wrong.encode() + b"\r\n")
                replies.append((await read_reply(reader, 30))[:3])
                writer.close()
            assert replies == ["535"] * 3 + ["454"] * 6, replies
            owners = {e.get("smtp_process") or 0 for e in events(daemon, "smtp_auth_throttled")}
            assert owners, daemon.log_tail()


# SQLite only: it stores nothing; the listener processes' start and stop are
# the same whichever store the jobs would go to (the tests above run both).
@pytest.mark.timeout(60)
async def test_sigterm_while_idle_stops_everything(tmp_path: Path) -> None:
    async with run_simulator() as sim:
        data = processes_config(tmp_path, sim, processes=3)
        async with gateway(tmp_path, data) as daemon:
            workers = set(started_workers(daemon))
            assert len(workers) == 2 and workers <= children(daemon.proc.pid)
            assert all(is_worker(p) for p in workers)
            code, seconds = await daemon.terminate(timeout=10)
            assert code == 0, daemon.log_tail()
            assert seconds < 10, f"took {seconds:.1f} s to stop"
            left = sorted(p for p in workers if is_worker(p))
            assert not left, f"workers {left} still running after the main process exited"
            stopped = events(daemon, "smtp_process_stopped")
            assert sorted(e.get("smtp_process") for e in stopped) == [1, 2], daemon.log_tail()
            assert not events(daemon, "smtp_process_exited"), "a worker's exit at stop was taken for a crash"


def check_config(tmp_path: Path, processes: Any) -> subprocess.CompletedProcess[str]:
    data = config_data(tmp_path / "state", sim=_NoSim(), smtp_port=2525)
    data["smtp"]["processes"] = processes
    path = tmp_path / "check.toml"
    path.write_text(to_toml(data), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("GATEWAYD_CONFIG", "STATE_DIRECTORY", "CREDENTIALS_DIRECTORY")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "gatewayd", "check-config", "-c", str(path)], capture_output=True,
                          text=True, timeout=30, cwd=REPO, env=env)


class _NoSim:
    """Provider URLs for a configuration that is only checked."""

    base_url = "http://127.0.0.1:9/api/"
    token_url = "http://127.0.0.1:9/token"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("value", [0, 65, "many", True, 2.0], ids=repr)
def test_check_config_refuses_bad_process_counts(tmp_path: Path, value: Any) -> None:
    result = check_config(tmp_path, value)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "smtp.processes:" in result.stderr, result.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("value", ["auto", 4, 64], ids=repr)
def test_check_config_takes_good_process_counts(tmp_path: Path, value: Any) -> None:
    result = check_config(tmp_path, value)
    assert result.returncode == 0, (result.stdout, result.stderr)
    count = auto_processes() if value == "auto" else value
    assert f"; {count} listener process{'es' if count > 1 else ''}\n" in result.stdout, result.stdout
