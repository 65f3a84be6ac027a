"""Fixtures: a simulator on 127.0.0.1 with a frozen clock, and clients that
never really sleep (their sleeps advance their own fake clock)."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pikepdf
import pytest
from PIL import Image

from gatewayd.provider.client import ProviderClient
from gatewayd.provider.simulator import ProviderSimulator, SimClock, run_simulator


class FakeClock:
    """The client's monotonic clock; sleeping advances it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def make_pdf(pages: int = 1) -> bytes:
    pdf = pikepdf.new()
    for _ in range(pages):
        pdf.add_blank_page(page_size=(595, 842))
    buf = io.BytesIO()
    pdf.save(buf)
    return buf.getvalue()


def make_tiff(frames: int = 1, byteorder: str = "<") -> bytes:
    imgs = [Image.new("1", (64, 32), color=i % 2) for i in range(frames)]
    buf = io.BytesIO()
    imgs[0].save(buf, format="TIFF", save_all=True, append_images=imgs[1:], compression="group4")
    data = buf.getvalue()
    assert data[:4] in (b"II*\x00", b"MM\x00*")
    return data


@pytest.fixture
def pdf_bytes() -> bytes:
    return make_pdf(2)


@pytest.fixture
def tiff_bytes() -> bytes:
    return make_tiff(3)


@pytest.fixture
def sim_clock() -> SimClock:
    return SimClock(frozen=True)


@pytest.fixture
async def sim(sim_clock: SimClock) -> AsyncIterator[ProviderSimulator]:
    async with run_simulator(clock=sim_clock) as s:
        yield s


@pytest.fixture
def cclock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def make_client(
    sim: ProviderSimulator, cclock: FakeClock
) -> AsyncIterator[Callable[..., ProviderClient]]:
    clients: list[ProviderClient] = []

    def factory(**kw: Any) -> ProviderClient:
        args = {
            "base_url": sim.base_url,
            "token_url": sim.token_url,
            "client_id": sim.client_id,
            "client_secret": sim.client_secret,
            "timeout": 5.0,
        }
        for key in list(args):
            if key in kw:
                args[key] = kw.pop(key)
        kw.setdefault("sleep", cclock.sleep)
        kw.setdefault("clock", cclock)
        client = ProviderClient(**args, **kw)
        clients.append(client)
        return client

    yield factory
    for c in clients:
        await c.aclose()


@pytest.fixture
def client(make_client: Callable[..., ProviderClient]) -> ProviderClient:
    return make_client()


@pytest.fixture
async def raw(sim: ProviderSimulator) -> AsyncIterator[httpx.AsyncClient]:
    """A plain httpx client with a valid token, for poking the simulator."""
    async with httpx.AsyncClient(base_url=sim.base_url, timeout=5.0) as http:
        resp = await http.post(
            sim.token_url,
            data={"grant_type": "client_credentials", "client_id": "demo", "client_secret": "demo"},
        )
        http.headers["Authorization"] = "Bearer " + resp.json()["access_token"]
        yield http


@pytest.fixture
async def control(sim: ProviderSimulator) -> AsyncIterator[httpx.AsyncClient]:
    """A plain httpx client for the /_sim/ control API."""
    async with httpx.AsyncClient(base_url=sim.url + "/_sim", timeout=5.0) as http:
        yield http


@pytest.fixture
def mkpdf() -> Callable[[int], bytes]:
    return make_pdf


@pytest.fixture
def mktiff() -> Callable[..., bytes]:
    return make_tiff
