"""The per-client limits asked over a listener process's channel
(gatewayd/email_to_fax/smtp_processes.py, ``RemoteClientLimits``; docs/smtp.md,
"Limits per client"), over a real socket pair, with the main process's side
played by the test: answers are matched to questions, a session that went
before its answer gives a late "yes" back, and no answer or a closed channel
refuses (the limits are never waived)."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator

import pytest

from support.foundation import base_config

from gatewayd.config import MAX_AUTO_PROCESSES, auto_processes, load_config_data
from gatewayd.email_to_fax.smtp_processes import LimitsUnavailable, RemoteClientLimits, frame, receive


class MainSide:
    """The main process's end of the channel, answering by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def question(self) -> tuple:
        return await asyncio.wait_for(receive(self.reader), 5)

    def answer(self, kind: str, request: int, value: bool) -> None:
        self.writer.write(frame((kind, request, value)))


@pytest.fixture
async def channel() -> AsyncIterator[tuple[RemoteClientLimits, MainSide, asyncio.Task[None]]]:
    ours, theirs = socket.socketpair()
    w_reader, w_writer = await asyncio.open_unix_connection(sock=ours)
    m_reader, m_writer = await asyncio.open_unix_connection(sock=theirs)
    limits = RemoteClientLimits(w_writer, timeout=0.5)

    async def dispatch() -> None:  # what the worker's channel reader does with answers
        while True:
            kind, *rest = await receive(w_reader)
            if kind in ("client_open", "auth_blocked"):
                limits.answer(rest[0], rest[1])

    task = asyncio.create_task(dispatch())
    yield limits, MainSide(m_reader, m_writer), task
    task.cancel()
    w_writer.close()
    m_writer.close()


async def test_answers_go_to_their_questions(channel) -> None:
    limits, main, _ = channel
    first = asyncio.create_task(limits.open("192.0.2.1"))
    second = asyncio.create_task(limits.auth_blocked("192.0.2.2"))
    q1, q2 = await main.question(), await main.question()
    assert q1[0] == "client_open" and q1[2] == "192.0.2.1"
    assert q2[0] == "auth_blocked" and q2[2] == "192.0.2.2"
    main.answer("auth_blocked", q2[1], True)  # answered out of order
    main.answer("client_open", q1[1], False)
    assert await first is False
    assert await second is True
    limits.close("192.0.2.1")
    limits.auth_failed("192.0.2.2")
    assert await main.question() == ("client_close", "192.0.2.1")
    assert await main.question() == ("auth_failed", "192.0.2.2")


async def test_a_late_yes_is_given_back(channel) -> None:
    limits, main, _ = channel
    session = asyncio.create_task(limits.open("192.0.2.7"))
    question = await main.question()
    session.cancel()  # the client went before the answer came
    with pytest.raises(asyncio.CancelledError):
        await session
    main.answer("client_open", question[1], True)
    assert await main.question() == ("client_close", "192.0.2.7")


async def test_no_answer_refuses_and_a_late_yes_is_given_back(channel) -> None:
    limits, main, _ = channel
    with pytest.raises(LimitsUnavailable):
        await asyncio.gather(limits.open("192.0.2.8"), main.question())
    # the question was asked; its answer comes after the timeout
    main.answer("client_open", 1, True)
    assert await main.question() == ("client_close", "192.0.2.8")
    with pytest.raises(LimitsUnavailable):
        await limits.auth_blocked("192.0.2.8")


async def test_a_closed_channel_refuses(channel) -> None:
    limits, _, _ = channel
    limits._writer.close()
    with pytest.raises(LimitsUnavailable):
        await limits.open("192.0.2.9")
    with pytest.raises(LimitsUnavailable):
        await limits.auth_blocked("192.0.2.9")
    limits.close("192.0.2.9")  # nothing to tell: no error


def test_processes_default_to_auto(tmp_path) -> None:
    # docs/configuration.md, [smtp]: "auto", one per core this process may
    # run on (its CPU affinity), at most MAX_AUTO_PROCESSES.
    data = base_config(tmp_path / "state")
    del data["smtp"]["processes"]
    cores = len(os.sched_getaffinity(0))
    assert load_config_data(data).smtp.processes == min(MAX_AUTO_PROCESSES, cores) == auto_processes()
    data["smtp"]["processes"] = "auto"
    assert load_config_data(data).smtp.processes == auto_processes()
    data["smtp"]["processes"] = 7  # explicit counts are kept, past the cap of "auto" too
    assert load_config_data(data).smtp.processes == 7


def test_auto_is_capped(monkeypatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)))
    assert auto_processes() == MAX_AUTO_PROCESSES == 4
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    assert auto_processes() == 1
