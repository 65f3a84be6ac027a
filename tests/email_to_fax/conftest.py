"""Fixtures for the email-to-fax tests. Helpers live in e2f_support.py and the
shared hostile corpus in tests/corpus.py (pytest runs with
--import-mode=importlib, so both directories are put on sys.path)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
for _path in (_HERE, _HERE.parent):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from e2f_support import config_data  # noqa: E402

from gatewayd.provider.simulator import ProviderSimulator, run_simulator  # noqa: E402


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
