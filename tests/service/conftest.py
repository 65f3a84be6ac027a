"""Fixtures for the service tests (systemd integration, reload, health,
metrics, the demo). Helpers live in tests/support/service.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


from support.service import Gateway, NotifySocket, clean_env


@pytest.fixture(scope="session")
def pdf() -> bytes:
    from gatewayd.demo import sample_pdf

    return sample_pdf()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path)
    yield sock
    sock.close()


@pytest.fixture
def abstract_notify_socket() -> Iterator[NotifySocket]:
    sock = NotifySocket(abstract=True)
    yield sock
    sock.close()


@pytest.fixture
async def gateways(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """start(config_path, **env) -> a running ``gatewayd run`` subprocess; all stopped at the end."""
    started: list[Gateway] = []

    async def start(config: Path, **env: str) -> Gateway:
        gw = Gateway(config, tmp_path, clean_env(**env))
        started.append(gw)
        return await gw.start()

    yield start
    for gw in started:
        await gw.stop()
