"""What the provider sends back cannot exhaust the gateway (issue 14, item 8;
docs/provider.md, "Limits on answers"; docs/security.md, "Hardening"):
answers are read as a stream with a cap on the decompressed bytes (a gzip
bomb from a real aiohttp server on 127.0.0.1), and rate-limit waits are
finite and clamped."""

from __future__ import annotations

import math
import zlib
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from gatewayd.provider.client import ProviderClient, ProviderUnavailable
from gatewayd.provider.wire import DEFAULT_RATE_LIMIT_WAIT, MAX_RATE_LIMIT_WAIT, MAX_RESPONSE_BYTES, retry_after_seconds

TOKEN = {"access_token": "tok", "token_type": "Bearer", "expires_in": 3600}


def gzip_bomb(decompressed: int) -> bytes:
    """``decompressed`` zero bytes, gzip-compressed (about 1000:1)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = b"\0" * (1 << 20)
    out = [comp.compress(chunk) for _ in range(decompressed // len(chunk))]
    out.append(comp.flush())
    return b"".join(out)


BOMB = gzip_bomb(256 << 20)  # 256 MiB of zeros in ~250 KB


class Hostile:
    """A provider on 127.0.0.1 whose answers are bombs; ``bomb_token`` puts one in the token answer."""

    def __init__(self) -> None:
        self.bomb_token = False
        self.sent = 0

    async def token(self, request: web.Request) -> web.StreamResponse:
        if self.bomb_token:
            return await self.bomb(request)
        return web.json_response(TOKEN)

    async def bomb(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
        await resp.prepare(request)
        for i in range(0, len(BOMB), 16384):
            await resp.write(BOMB[i:i + 16384])
            self.sent += 16384
        await resp.write_eof()
        return resp

    async def big(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/pdf"})
        await resp.prepare(request)
        for _ in range(64):
            await resp.write(b"%" * (64 << 10))  # 4 MiB in all, identity
        await resp.write_eof()
        return resp


@pytest.fixture
async def hostile() -> AsyncIterator[tuple[Hostile, str]]:
    h = Hostile()
    app = web.Application()
    app.router.add_post("/oauth/token", h.token)
    app.router.add_get("/api/ver1.0/user", h.bomb)
    app.router.add_get("/api/ver1.0/extension/7/fax/in/abc", h.big)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield h, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def client(url: str, **kw) -> ProviderClient:
    async def no_sleep(_: float) -> None:
        return None

    return ProviderClient(f"{url}/api/ver1.0", f"{url}/oauth/token", "c", "s", 10.0, sleep=no_sleep, max_attempts=1, **kw)


async def test_a_gzip_bomb_is_cut_at_the_cap(hostile: tuple[Hostile, str]) -> None:
    _, url = hostile
    c = client(url)
    try:
        with pytest.raises(ProviderUnavailable, match=f"larger than {MAX_RESPONSE_BYTES} bytes"):
            await c.get_user()
    finally:
        await c.aclose()


async def test_a_gzip_bomb_in_the_token_answer_is_cut_too(hostile: tuple[Hostile, str]) -> None:
    h, url = hostile
    h.bomb_token = True
    c = client(url)
    try:
        with pytest.raises(ProviderUnavailable, match="larger than"):
            await c.get_user()
    finally:
        await c.aclose()


async def test_a_plain_answer_over_the_cap_is_cut(hostile: tuple[Hostile, str]) -> None:
    _, url = hostile
    c = client(url, max_response_bytes=1 << 20)
    c._user = object()  # type: ignore[assignment]  # skip the time-zone lookup (a bomb here)
    try:
        with pytest.raises(ProviderUnavailable, match=f"larger than {1 << 20} bytes"):
            await c.download_received_fax(7, "abc")
    finally:
        await c.aclose()
    big = client(url, max_response_bytes=8 << 20)
    big._user = object()  # type: ignore[assignment]
    try:
        fax = await big.download_received_fax(7, "abc")
        assert len(fax.data) == 4 << 20
    finally:
        await big.aclose()


def _429(**headers: str) -> httpx.Response:
    return httpx.Response(429, headers=headers, request=httpx.Request("GET", "https://api.example.test/x"))


@pytest.mark.parametrize("value", ["inf", "Infinity", "-inf", "nan", "NaN", "1e400", "-5", "abc", ""])
def test_rate_limit_reset_that_is_not_a_finite_wait_gets_the_default(value: str) -> None:
    wait = retry_after_seconds(_429(**{"X-RateLimit-Reset": value}))
    assert math.isfinite(wait) and wait == DEFAULT_RATE_LIMIT_WAIT


@pytest.mark.parametrize("value", ["999999999", "1e12", str(10 ** 30), "86400"])
def test_rate_limit_reset_waits_are_clamped(value: str) -> None:
    wait = retry_after_seconds(_429(**{"X-RateLimit-Reset": value}))
    assert 0 <= wait <= MAX_RATE_LIMIT_WAIT == 3600


def test_a_sane_reset_is_kept() -> None:
    assert retry_after_seconds(_429(**{"X-RateLimit-Reset": "7"})) == 7
    assert retry_after_seconds(_429(**{"Retry-After": "120"})) == 120
