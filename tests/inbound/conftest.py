"""Fixtures for the fax-to-email tests: the provider simulator and the mail
sink on 127.0.0.1, faxes made by ghostscript once per session, and a harness
factory. Helpers live in tests/support/inbound.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest


from support.inbound import FaxSample, Harness, RecordingSink, make_config, make_faxes

from gatewayd.config import Config
from gatewayd.provider.simulator import ProviderSimulator, run_simulator


@pytest.fixture(scope="session")
def faxes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, FaxSample]:
    return make_faxes(tmp_path_factory.mktemp("faxes"))


@pytest.fixture
async def sim() -> AsyncIterator[ProviderSimulator]:
    async with run_simulator() as s:
        yield s


@pytest.fixture
async def sink(tmp_path: Path) -> AsyncIterator[RecordingSink]:
    async with RecordingSink(maildir=tmp_path / "mail") as s:
        yield s


@pytest.fixture
def config_factory(sim: ProviderSimulator, sink: RecordingSink, tmp_path: Path) -> Callable[..., Config]:
    def factory(**sections: dict[str, Any]) -> Config:
        return make_config(sim, sink, tmp_path / "state", **sections)

    return factory


@pytest.fixture
async def make_harness(config_factory: Callable[..., Config]) -> AsyncIterator[Callable[..., Any]]:
    made: list[Harness] = []

    async def factory(*, first_lookback: float | None = None, **sections: dict[str, Any]) -> Harness:
        h = await Harness(config_factory(**sections), first_lookback=first_lookback).start()
        made.append(h)
        return h

    yield factory
    for h in made:
        await h.close()
