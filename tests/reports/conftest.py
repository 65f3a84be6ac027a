"""Fixtures for the tracking/report/outbox tests. Helpers live in
tests/support/reports.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


from support.reports import Gateway, OffsetClock, make_config

from gatewayd.config import Config
from gatewayd.mailsink import MailSink
from gatewayd.provider.simulator import ProviderSimulator, SimClock, run_simulator


@pytest.fixture
def sim_clock() -> SimClock:
    return SimClock(frozen=True)


@pytest.fixture
async def sim(sim_clock: SimClock) -> AsyncIterator[ProviderSimulator]:
    async with run_simulator(clock=sim_clock) as s:
        yield s


@pytest.fixture
async def sink(tmp_path: Path) -> AsyncIterator[MailSink]:
    async with MailSink(maildir=tmp_path / "mail") as s:
        yield s


@pytest.fixture
def clock() -> OffsetClock:
    return OffsetClock()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
async def make_gateway(state_dir: Path, sim: ProviderSimulator, sink: MailSink, clock: OffsetClock) -> AsyncIterator[Callable[..., Gateway]]:
    """Factory: each call is a new daemon run on the same state directory."""
    running: list[Gateway] = []

    def factory(config: Config | None = None, **mail: Any) -> Gateway:
        gw = Gateway(config or make_config(state_dir, sim, sink, **mail), clock)
        running.append(gw)
        return gw

    yield factory
    for gw in running:
        if not gw.rt.stopping.is_set():
            await gw.stop()


@pytest.fixture
async def gateway(make_gateway: Callable[..., Gateway]) -> Gateway:
    return make_gateway()


@pytest.fixture
def offline(state_dir: Path, clock: OffsetClock) -> Iterator[Callable[..., Gateway]]:
    """Gateways without provider or relay: the outbox rows are inspected."""
    made: list[Gateway] = []

    def factory(**mail: object) -> Gateway:
        gw = Gateway(make_config(state_dir, None, None, **mail), clock)
        made.append(gw)
        return gw

    yield factory
    for gw in made:
        if not gw.rt.stopping.is_set():
            gw.rt.stopping.set()
            gw.store.close()
