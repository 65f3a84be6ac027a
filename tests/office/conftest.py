"""Fixtures for the office-document tests: real LibreOffice (slow: each test
is kept to a few small documents). Helpers in tests/support/office.py; the
email-to-fax helpers (tests/support/e2f.py) are shared."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from support.e2f import config_data
from support.office import make_documents

from gatewayd.provider.simulator import ProviderSimulator, run_simulator


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
async def sim() -> AsyncIterator[ProviderSimulator]:
    async with run_simulator(send_delays=(0.05, 0.05)) as s:
        yield s


@pytest.fixture
def sim_data(state_dir: Path, sim: ProviderSimulator) -> dict:
    data = config_data(state_dir, base_url=sim.base_url, token_url=sim.token_url)
    data["smtp"]["max_message_size"] = "40MB"
    data["documents"] = {"cover_page": "never"}
    return data


@pytest.fixture(scope="session")
def documents(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """DOCX, ODT, XLSX made by a real (cold) LibreOffice, RTF, TXT and HTML by hand; each with its own words."""
    return make_documents(tmp_path_factory.mktemp("docs"))
