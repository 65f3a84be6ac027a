"""More SMTP listener processes (``smtp.processes`` > 1).

One Python process answers SMTP on one core (the GIL). With
``smtp.processes = N`` the daemon runs N-1 more processes that do nothing
but listen and take mail in: each has its own listening socket on every
``smtp.listen`` address, all in one ``SO_REUSEPORT`` group, so the kernel
spreads new connections over the processes. Every process runs the same
``SmtpListener`` and ``Intake`` on the same state directory (SQLite WAL
takes writers from several processes; a 250 still means committed). The
sender, tracker, reports, outbox, IMAP and HTTP stay in the main process.

The main process (``ListenerProcesses``):

* makes each worker's sockets itself (so a privileged port or port 0 needs
  nothing more of the worker) and hands them over at ``exec``, then closes
  its copies: a socket in the group that nobody accepts on would swallow
  its share of the connections;
* sends the running configuration over a socket pair, at start and after
  every reload (the workers never read the file: no race with an edit);
* restarts a worker that dies, with backoff (connections waiting in a dead
  worker's queue are reset; SMTP clients try again), and kills (then
  restarts) one that has not reported for 30 s: a worker reports every
  second, so silence means its event loop is stuck, and its socket would
  keep its share of the connections waiting forever;
* at stop, sends SIGTERM to every worker at once: each gives its sessions
  the listener's grace, as the main process does, then SIGKILL.

A worker (``python -m gatewayd.email_to_fax.smtp_worker``) sends back
what only the main process can act on: "wake the sender" after a commit,
and its SMTP reply counts for ``/metrics``. It asks the main process the
per-client limits (``RemoteClientLimits``: may this address open one more
session, has it failed AUTH too often): the main process counts them for
every process (gatewayd/email_to_fax/throttle.py), and gives back the
sessions a worker had counted when that worker ends. It stops when the main process
goes away (the socket pair closes; also ``PR_SET_PDEATHSIG``). This module
is the main process's side and the channel both sides speak.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from gatewayd.backoff import backoff_delay
from gatewayd.config import Config
from gatewayd.email_to_fax.throttle import ClientThrottle
from gatewayd.logs import get_logger
from gatewayd.runtime import Runtime

log = get_logger(__name__)

_HEADER = struct.Struct(">I")
_MAX_FRAME = 16 << 20  # a configuration is a few KB; anything larger is a bug
READY_TIMEOUT = 60.0  # a worker imports everything before it says ready
REPORT_EVERY = 1.0  # seconds between reports (reply counts, or just "alive") to the main process
WORKER_MODULE = "gatewayd.email_to_fax.smtp_worker"  # a worker's entry point (``python -m``)
LIMITS_TIMEOUT = 10.0  # seconds a worker waits for the main process to answer a per-client question


class WorkerError(Exception):
    """A listener process could not be started."""


class LimitsUnavailable(Exception):
    """A listener process could not get an answer about a client's limits from the main process."""


class ListenerTuning(Protocol):
    """What the main process reads of ``SmtpTuning`` (which it hands to every worker)."""

    @property
    def process_stall_timeout(self) -> float: ...


# ------------------------------------------------------------------ channel


def frame(message: tuple[Any, ...]) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


async def receive(reader: asyncio.StreamReader) -> tuple[Any, ...]:
    """One message from the other end; ``EOFError`` when it is gone.

    Only ever between the main process and a child it started, over a
    socket pair nobody else holds: pickle is safe here.
    """
    try:
        header = await reader.readexactly(_HEADER.size)
        (size,) = _HEADER.unpack(header)
        if size > _MAX_FRAME:
            raise EOFError(f"frame of {size} bytes")
        message = pickle.loads(await reader.readexactly(size))
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise EOFError(str(exc)) from None
    if not isinstance(message, tuple) or not message:
        raise EOFError("not a message")
    return message


def _listening_socket(host: str, port: int, backlog: int = 100) -> socket.socket:
    """A socket bound into the ``SO_REUSEPORT`` group of ``host:port``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


# --------------------------------------------------------------- main side


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    writer: asyncio.StreamWriter | None = None
    reader_task: asyncio.Task[None] | None = None
    restarts: int = 0
    started_at: float = 0.0
    last_seen: float = 0.0  # monotonic time of its last message
    ready: asyncio.Future[int] | None = None
    counted: Counter[str] = field(default_factory=Counter)  # its sessions counted per client address


@dataclass
class ListenerProcesses:
    """The main process's side: starts, watches, reconfigures and stops the workers."""

    rt: Runtime
    count: int  # workers, besides the main process's own listener
    tuning: ListenerTuning  # an SmtpTuning, handed to every worker
    addresses: list[tuple[str, int]] = field(default_factory=list)  # bound by the main process (port 0 resolved)
    min_backoff: float = 1.0
    max_backoff: float = 30.0
    workers: list[_Worker] = field(default_factory=list)
    stopping: bool = False
    office: bool = False  # LibreOffice is there for the workers' intake (gatewayd/documents/office.py)
    # The main listener's per-client counts, which count for every process (set by SmtpListener).
    throttle: Callable[[], ClientThrottle] = field(default_factory=lambda: _no_throttle)

    async def start(self, addresses: list[tuple[str, int]]) -> None:
        """Start every worker on ``addresses`` (the ones the main process's
        listener bound) and wait until each listens; raise ``WorkerError`` otherwise."""
        self.addresses = list(addresses)
        self.workers = [_Worker(index=i + 1) for i in range(self.count)]
        try:
            await asyncio.gather(*(self._spawn(w) for w in self.workers))
        except BaseException:
            await self.stop(grace=0.0)
            raise
        self.rt.reload_hooks.append(self.reconfigure)
        log.info("smtp_processes_started", processes=self.count + 1, pids=[w.proc.pid for w in self.workers if w.proc])

    async def _spawn(self, worker: _Worker) -> None:
        sockets = [_listening_socket(host, port) for host, port in self.addresses]
        parent, child = socket.socketpair()
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        try:
            # pass_fds keeps the numbers: the worker wraps the same fds.
            handed = [(s.fileno(), host, port) for s, (host, port) in zip(sockets, self.addresses, strict=True)]
            worker.proc = subprocess.Popen(
                [sys.executable, "-m", WORKER_MODULE, "--control-fd", str(child.fileno()),
                 "--parent", str(os.getpid())],
                pass_fds=[child.fileno(), *(fd for fd, _, _ in handed)], stdin=subprocess.DEVNULL, env=env,
            )
        except BaseException:
            parent.close()
            raise
        finally:
            # The worker has its own copies now; ours must go (see the module's docstring).
            child.close()
            for sock in sockets:
                sock.close()
        worker.started_at = worker.last_seen = time.monotonic()
        worker.ready = asyncio.get_running_loop().create_future()
        # Retrieved even when nobody waits any more (a start that timed out).
        worker.ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        reader, writer = await asyncio.open_unix_connection(sock=parent)
        worker.writer = writer
        writer.write(frame(("start", {"index": worker.index, "config": self.rt.config, "tuning": self.tuning,
                                       "sockets": handed})))
        worker.reader_task = asyncio.create_task(self._listen(worker, reader), name=f"smtp-process-{worker.index}")
        try:
            await asyncio.wait_for(asyncio.shield(worker.ready), timeout=READY_TIMEOUT)
        except TimeoutError:
            raise WorkerError(f"SMTP listener process {worker.index} did not start within {READY_TIMEOUT:.0f} s") from None

    async def _listen(self, worker: _Worker, reader: asyncio.StreamReader) -> None:
        """What a worker tells us, until its end of the channel closes."""
        metrics = self.rt.metrics
        try:
            while True:
                kind, *rest = await receive(reader)
                worker.last_seen = time.monotonic()
                if kind == "wake":
                    self.rt.wake(str(rest[0]))
                elif kind == "replies":
                    for code, n in dict(rest[0]).items():
                        metrics.smtp_replies.labels(str(code)).inc(n)
                elif kind == "client_open":
                    request, address = rest
                    allowed = self.throttle().opened(str(address))
                    if allowed:
                        worker.counted[str(address)] += 1
                    self._answer(worker, ("client_open", request, allowed))
                elif kind == "client_close":
                    self._client_closed(worker, str(rest[0]))
                elif kind == "auth_blocked":
                    request, address = rest
                    self._answer(worker, ("auth_blocked", request, self.throttle().auth_blocked(str(address))))
                elif kind == "auth_failed":
                    self.throttle().auth_failed(str(rest[0]))
                elif kind == "ready":
                    if worker.ready is not None and not worker.ready.done():
                        worker.ready.set_result(int(rest[0]))
                elif kind == "failed":
                    if worker.ready is not None and not worker.ready.done():
                        worker.ready.set_exception(WorkerError(f"SMTP listener process {worker.index}: {rest[0]}"))
        except EOFError:
            pass
        except Exception:  # a bad message must not end the main process's loop
            log.exception("smtp_process_channel_failed", process=worker.index)
        finally:
            if worker.ready is not None and not worker.ready.done():
                worker.ready.set_exception(WorkerError(f"SMTP listener process {worker.index} exited before listening"))
            # Its sessions ended with it (or will, unanswered): they no longer count.
            for address in list(worker.counted):
                for _ in range(worker.counted[address]):
                    self._client_closed(worker, address)

    def _client_closed(self, worker: _Worker, address: str) -> None:
        if worker.counted[address] <= 0:
            return  # not counted (or already given back): never below what the worker holds
        worker.counted[address] -= 1
        if worker.counted[address] == 0:
            del worker.counted[address]
        self.throttle().closed(address)

    @staticmethod
    def _answer(worker: _Worker, message: tuple[Any, ...]) -> None:
        if worker.writer is not None and not worker.writer.is_closing():
            worker.writer.write(frame(message))

    def reconfigure(self, config: Config) -> None:
        """A reload hook: every worker takes the configuration the main process now runs."""
        for worker in self.workers:
            if worker.writer is not None and not worker.writer.is_closing():
                worker.writer.write(frame(("config", config)))

    async def supervise(self) -> None:
        """Restart a worker that ends while the daemon is not stopping, and
        kill one that has stopped talking (runs as the listener's ``run``)."""
        await asyncio.gather(self._stalls(), *(self._watch(w) for w in self.workers))

    async def _stalls(self) -> None:
        """SIGKILL a worker silent for ``tuning.process_stall_timeout``: its event loop is stuck,
        and its socket would hold its share of the connections unanswered."""
        stall_timeout = self.tuning.process_stall_timeout
        while not await self.rt.sleep(min(1.0, stall_timeout / 4)) and not self.stopping:
            now = time.monotonic()
            for worker in self.workers:
                proc = worker.proc
                if proc is None or proc.poll() is not None or worker.ready is None or not worker.ready.done():
                    continue
                if now - worker.last_seen > stall_timeout:
                    log.error("smtp_process_unresponsive", process=worker.index, pid=proc.pid,
                              silent_for=round(now - worker.last_seen, 1))
                    proc.kill()  # _watch sees the exit and starts a new one
                    worker.last_seen = now

    async def _watch(self, worker: _Worker) -> None:
        attempt = 0  # restarts since the worker last ran fine for a long while
        while not self.stopping:
            proc = worker.proc
            if proc is not None:
                code = await _wait_exit(proc)
                if self.stopping or self.rt.stopping.is_set():
                    return  # e.g. systemd's SIGTERM reached the whole cgroup first
                log.error("smtp_process_exited", process=worker.index, pid=proc.pid, code=code)
                self.rt.metrics.service_restarts.labels("smtp").inc()
                worker.restarts += 1
                await self._close_channel(worker)
                worker.proc = None
                if time.monotonic() - worker.started_at > 10 * self.max_backoff:
                    attempt = 0  # it ran fine for a long while
            attempt += 1
            delay = backoff_delay(attempt, base=self.min_backoff, cap=self.max_backoff, low=0.5, high=1.0)
            if await self.rt.sleep(delay) or self.stopping:
                return
            try:
                await self._spawn(worker)
                log.info("smtp_process_restarted", process=worker.index, pid=worker.proc.pid if worker.proc else None)
            except Exception as exc:  # try again after the next backoff
                log.error("smtp_process_restart_failed", process=worker.index, error=f"{type(exc).__name__}: {exc}")
                if worker.proc is not None:
                    if worker.proc.poll() is None:
                        worker.proc.kill()
                    await _wait_exit(worker.proc)
                await self._close_channel(worker)
                worker.proc = None  # already logged: not "exited" a second time

    async def _close_channel(self, worker: _Worker) -> None:
        # The worker has exited: read what it sent last (its final reply
        # counts) up to the end of the channel before closing our side.
        if worker.reader_task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(worker.reader_task, timeout=1.0)
            worker.reader_task = None
        if worker.writer is not None:
            worker.writer.close()
            worker.writer = None

    def terminate(self) -> None:
        """SIGTERM to every worker: each stops taking connections and finishes its sessions."""
        self.stopping = True
        for worker in self.workers:
            if worker.proc is not None and worker.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(signal.SIGTERM)

    async def stop(self, grace: float) -> None:
        """``terminate()``, wait up to ``grace`` seconds, then SIGKILL what is left."""
        self.terminate()
        with contextlib.suppress(ValueError):
            self.rt.reload_hooks.remove(self.reconfigure)
        procs = [w.proc for w in self.workers if w.proc is not None]
        if procs:
            try:
                await asyncio.wait_for(asyncio.gather(*(_wait_exit(p) for p in procs)), timeout=max(grace, 0.01))
            except TimeoutError:
                for proc in procs:
                    if proc.poll() is None:
                        log.warning("smtp_process_killed", pid=proc.pid)
                        proc.kill()
                await asyncio.gather(*(_wait_exit(p) for p in procs))
        for worker in self.workers:
            await self._close_channel(worker)
        log.info("smtp_processes_stopped", processes=len(procs))


def _no_throttle() -> ClientThrottle:
    raise RuntimeError("ListenerProcesses.throttle was not set by the listener")


# ------------------------------------------------------------- worker side


class RemoteClientLimits:
    """``ClientLimits`` of a listener process: the main process counts, asked over the channel.

    A question the main process does not answer within ``timeout`` raises
    ``LimitsUnavailable`` (the session is refused, for now: the limits are
    not waived). A session that ended before its answer came gives a late
    "yes" straight back, so nothing stays counted."""

    def __init__(self, writer: asyncio.StreamWriter, *, timeout: float = LIMITS_TIMEOUT) -> None:
        self._writer = writer
        self._timeout = timeout
        self._requests = itertools.count(1)
        self._pending: dict[int, asyncio.Future[bool]] = {}

    def answer(self, request: int, value: object) -> None:
        """The main process's answer to ``request`` (from the channel's reader)."""
        future = self._pending.pop(int(request), None)
        if future is not None and not future.done():
            future.set_result(bool(value))

    def _send(self, message: tuple[Any, ...]) -> bool:
        if self._writer.is_closing():
            return False
        self._writer.write(frame(message))
        return True

    async def _ask(self, kind: str, address: str) -> asyncio.Future[bool]:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        request = next(self._requests)
        if not self._send((kind, request, address)):
            raise LimitsUnavailable("the channel to the main process is closed")
        self._pending[request] = future
        return future

    async def open(self, address: str) -> bool:
        future = await self._ask("client_open", address)
        try:
            return await asyncio.wait_for(asyncio.shield(future), self._timeout)
        except TimeoutError:
            future.add_done_callback(lambda f: self._give_back(f, address))
            raise LimitsUnavailable(f"no answer from the main process within {self._timeout:g} s") from None
        except asyncio.CancelledError:  # the session went while waiting
            future.add_done_callback(lambda f: self._give_back(f, address))
            raise

    def _give_back(self, future: asyncio.Future[bool], address: str) -> None:
        if not future.cancelled() and future.result():
            self.close(address)

    def close(self, address: str) -> None:
        self._send(("client_close", address))

    async def auth_blocked(self, address: str) -> bool:
        future = await self._ask("auth_blocked", address)
        try:
            return await asyncio.wait_for(future, self._timeout)
        except TimeoutError:
            raise LimitsUnavailable(f"no answer from the main process within {self._timeout:g} s") from None

    def auth_failed(self, address: str) -> None:
        self._send(("auth_failed", address))


async def _wait_exit(proc: subprocess.Popen[bytes]) -> int:
    """The exit code, awaited without a thread (a pidfd where there is one)."""
    if proc.poll() is not None:
        return int(proc.returncode)
    loop = asyncio.get_running_loop()
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        pidfd = -1
    if pidfd >= 0:
        exited = loop.create_future()
        loop.add_reader(pidfd, lambda: None if exited.done() else exited.set_result(None))
        try:
            if proc.poll() is None:
                await exited
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
    while proc.poll() is None:
        await asyncio.sleep(0.1)
    return int(proc.returncode)
