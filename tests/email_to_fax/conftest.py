"""Fixtures for the email-to-fax tests. Helpers live in tests/support/e2f.py
and the shared hostile corpus in tests/support/corpus.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest


from support.e2f import config_data

from gatewayd.provider.simulator import ProviderSimulator, run_simulator


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def data(state_dir: Path) -> dict:
    """The base configuration as TOML-ready data (no simulator)."""
    return config_data(state_dir)


@pytest.fixture
async def sim() -> AsyncIterator[ProviderSimulator]:
    # Fast state machine: submitted faxes are "sent" within a fraction of a second.
    async with run_simulator(send_delays=(0.05, 0.05)) as s:
        yield s


@pytest.fixture
def sim_data(state_dir: Path, sim: ProviderSimulator) -> dict:
    """The base configuration pointing at the simulator."""
    return config_data(state_dir, base_url=sim.base_url, token_url=sim.token_url)
