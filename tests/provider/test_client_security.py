"""The client secret and tokens go only where they belong, and never into logs."""

from __future__ import annotations

import logging
from urllib.parse import parse_qs

import httpx
import pytest
import structlog

from gatewayd.provider.client import (
    AmbiguousSubmit,
    AuthError,
    ProviderClient,
    ProviderError,
    ProviderUnavailable,
    Rejected,
)

SECRET = "s3cr3t-Pa55-do-not-leak"
TOKEN = "tok-abcdef-0123456789-very-secret"


class Recorder:
    """A MockTransport standing in for two hosts: an auth host and an API host."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        host, path = request.url.host, request.url.path
        if host == "auth.example.test" and path == "/oauth/token":
            form = parse_qs(request.content.decode())
            if form.get("client_secret") != [SECRET]:
                return httpx.Response(401, json={"message": f"bad secret {form.get('client_secret')}"})
            return httpx.Response(200, json={"access_token": TOKEN, "token_type": "Bearer", "expires_in": 3600})
        if host != "api.example.test":
            return httpx.Response(200, json={"stolen": True})
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return httpx.Response(401, json={"message": "no"})
        if path.endswith("/user"):
            return httpx.Response(200, json={"client_id": 12, "extension_id": None, "timezone": "Europe/Moscow", "access": "full"})
        if path == "/api/ver1.0/extension/7/fax/":
            return httpx.Response(302, headers={"Location": "https://evil.example.test/steal"})
        if path.endswith("/fax/"):
            return httpx.Response(200, json={"fax_mailto": "a@b.test"})
        if path.endswith("/fax/out/") and request.method == "POST":
            return httpx.Response(201, json={"id": 1, "dst_num": "1", "status": "ready_to_send", "datetime": "2025-01-01 10:00:00"})
        if "/fax/out/" in path:
            return httpx.Response(400, json={"message": f"echo {request.headers.get('authorization')}"})
        return httpx.Response(404, json={"message": "Record not found"})


def _client(rec: Recorder, secret: str = SECRET, **kw) -> ProviderClient:
    return ProviderClient(
        "https://api.example.test/api/ver1.0",
        "https://auth.example.test/oauth/token",
        "app",
        secret,
        transport=httpx.MockTransport(rec),
        **kw,
    )


async def test_secret_only_to_token_host_and_token_only_to_api_host() -> None:
    rec = Recorder()
    async with _client(rec) as client:
        await client.get_user()
        await client.get_fax_mailto(122)
        await client.send_fax(122, "1", b"%PDF-1.4")
        with pytest.raises(Rejected):
            await client.get_sent_fax(122, 5)
    hosts = {r.url.host for r in rec.requests}
    assert hosts == {"auth.example.test", "api.example.test"}
    for r in rec.requests:
        body = r.content
        if r.url.host == "auth.example.test":
            assert SECRET.encode() in body
            assert "authorization" not in r.headers
        else:
            assert SECRET.encode() not in body
            assert SECRET not in str(r.url)
            assert r.headers["authorization"] == f"Bearer {TOKEN}"
        assert TOKEN not in str(r.url)
        assert r.headers["accept-encoding"] == "gzip"


async def test_redirect_is_not_followed() -> None:
    rec = Recorder()
    async with _client(rec) as client:
        with pytest.raises(Rejected) as exc:
            await client.get_fax_mailto(7)  # answered with a 302 to another host
        assert exc.value.http_status == 302
    assert [r.url.host for r in rec.requests] == ["auth.example.test", "api.example.test"]


async def test_requests_to_other_hosts_are_refused() -> None:
    rec = Recorder()
    async with _client(rec) as client:
        with pytest.raises(ProviderError, match="unconfigured host"):
            await client._http.get("https://evil.example.test/api/ver1.0/user")
    assert rec.requests == []


@pytest.mark.parametrize("bad", ["../../oauth/token", "a/b", "..", "x?y=1", "%2e%2e", ""])
async def test_path_arguments_cannot_escape(bad: str) -> None:
    rec = Recorder()
    async with _client(rec) as client:
        with pytest.raises((ValueError, TypeError)):
            await client.download_received_fax(122, bad)
        with pytest.raises((ValueError, TypeError)):
            await client.get_sent_fax(122, bad)  # type: ignore[arg-type]
    assert rec.requests == []


async def test_repr_and_errors_do_not_show_secrets() -> None:
    rec = Recorder()
    async with _client(rec) as client:
        assert SECRET not in repr(client)
        with pytest.raises(Rejected) as exc:
            await client.get_sent_fax(122, 5)  # the server echoes the Authorization header
        assert TOKEN not in str(exc.value) and "***" in str(exc.value)
        assert TOKEN not in (exc.value.message or "")
    async with _client(rec, secret=SECRET + "x") as client:
        with pytest.raises(AuthError) as exc2:
            await client.get_user()  # the server echoes the wrong secret
        assert SECRET not in str(exc2.value)


async def test_logs_never_contain_secret_or_token(caplog, sim, make_client, pdf_bytes) -> None:
    """A run full of faults, with every stdlib logger (httpx, aiohttp) at DEBUG
    and structlog captured: neither the secret nor any token appears."""
    caplog.set_level(logging.DEBUG)
    secret = sim.client_secret = "sim-secret-" + "q" * 20
    client = make_client(client_secret=secret)
    bad = make_client(client_secret="wrong-" + secret)
    with structlog.testing.capture_logs() as captured:
        await client.get_user()
        sim.expire_tokens()
        await client.get_fax_mailto(122)
        sim.fail_next(2, "/extension/*")
        await client.get_fax_mailto(122)
        sim.drop_after_commit()
        with pytest.raises(AmbiguousSubmit) as e1:
            await client.send_fax(122, "123", pdf_bytes)
        sim.fail_next(10, "/extension/*")
        with pytest.raises(ProviderUnavailable) as e2:
            await client.get_fax_mailto(122)
        with pytest.raises(AuthError) as e3:
            await bad.get_user()
    texts = [caplog.text, repr(captured), str(e1.value), str(e2.value), str(e3.value),
             str(client.last_error), str(bad.last_error)]
    assert sim.tokens_issued
    for text in texts:
        assert secret not in text
        for token in sim.tokens_issued:
            assert token not in text
    assert any(e["event"] == "provider.retrying" for e in captured)  # logs were captured
