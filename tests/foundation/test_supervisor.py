"""The supervisor: a crashed ``run()`` is restarted (with backoff), each restart
is reported to ``on_restart`` and counted, and stopping ends it."""

from __future__ import annotations

import asyncio

import pytest

from gatewayd.supervisor import Supervisor


async def _wait_for(condition: object, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


@pytest.mark.timeout(10)
async def test_a_crashed_service_is_restarted_counted_and_stopped() -> None:
    stopping = asyncio.Event()
    restarted: list[str] = []
    runs = 0
    running = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 3:
            raise RuntimeError(f"crash {runs}")
        running.set()
        await stopping.wait()  # the fourth run stays up until the daemon stops

    supervisor = Supervisor(stopping, min_backoff=0.001, max_backoff=0.01, on_restart=restarted.append)
    supervisor.spawn("flaky", flaky)
    await asyncio.wait_for(running.wait(), timeout=5)

    assert runs == 4
    assert restarted == ["flaky"] * 3
    assert supervisor.restarts == {"flaky": 3}

    stopping.set()
    await supervisor.wait_stopped(2.0)
    task = supervisor.tasks["flaky"]
    assert task.done() and not task.cancelled() and task.exception() is None
    assert runs == 4  # not started again once stopping


@pytest.mark.timeout(10)
async def test_a_service_that_returns_is_restarted_and_a_failing_on_restart_is_ignored() -> None:
    stopping = asyncio.Event()
    runs = 0

    async def returns_at_once() -> None:
        nonlocal runs
        runs += 1

    def broken_hook(name: str) -> None:
        raise ValueError("a metrics bug must not stop the restarts")

    supervisor = Supervisor(stopping, min_backoff=0.001, max_backoff=0.002, on_restart=broken_hook)
    supervisor.spawn("quick", returns_at_once)
    await _wait_for(lambda: runs >= 5)
    assert supervisor.restarts["quick"] >= 4
    stopping.set()
    await supervisor.wait_stopped(2.0)
    assert supervisor.tasks["quick"].done()


@pytest.mark.timeout(10)
async def test_stopping_during_the_backoff_ends_it_at_once() -> None:
    stopping = asyncio.Event()
    runs = 0

    async def crashes() -> None:
        nonlocal runs
        runs += 1
        raise RuntimeError("always")

    supervisor = Supervisor(stopping, min_backoff=30.0, max_backoff=60.0)  # a long first wait
    supervisor.spawn("crashes", crashes)
    await _wait_for(lambda: supervisor.restarts.get("crashes") == 1)
    loop = asyncio.get_running_loop()
    began = loop.time()
    stopping.set()
    await supervisor.wait_stopped(5.0)
    assert loop.time() - began < 1.0
    assert supervisor.tasks["crashes"].done() and not supervisor.tasks["crashes"].cancelled()
    assert runs == 1
