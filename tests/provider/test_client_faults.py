"""The client under faults: tokens, 401 storms, 429, 5xx, timeouts, lost answers."""

from __future__ import annotations

import asyncio
import datetime as dt

import httpx
import pytest

from gatewayd.provider.client import (
    AmbiguousSubmit,
    AuthError,
    ProviderClient,
    ProviderUnavailable,
    RateLimited,
    Rejected,
)
from gatewayd.provider.simulator import run_simulator

FAX_OUT = "/extension/*/fax/out/"


# ------------------------------------------------------------------ tokens
async def test_token_expired_mid_run_is_renewed(client, sim) -> None:
    await client.get_fax_mailto(122)
    sim.expire_tokens()
    assert await client.get_fax_mailto(122) == ["admin@example.test"]
    assert sim.count_requests("POST", "/oauth/token") == 2
    statuses = [r.status for r in sim.request_log if r.path == "/extension/122/fax/"]
    assert statuses == [200, 401, 200]


async def test_token_expired_by_server_clock(client, sim, sim_clock) -> None:
    await client.get_fax_mailto(122)
    sim_clock.advance(3600)  # the server's clock; the client still trusts its token
    assert await client.get_fax_mailto(122) == ["admin@example.test"]
    assert sim.count_requests("POST", "/oauth/token") == 2


async def test_token_renewed_before_expiry(client, sim, cclock) -> None:
    await client.get_fax_mailto(122)
    cclock.now += 3600 - 61
    await client.get_fax_mailto(122)
    assert sim.count_requests("POST", "/oauth/token") == 1
    cclock.now += 2  # now inside the 60 s margin
    await client.get_fax_mailto(122)
    assert sim.count_requests("POST", "/oauth/token") == 2
    assert all(r.status != 401 for r in sim.request_log)  # renewed without a refusal


async def test_concurrent_calls_share_one_token(client, sim) -> None:
    await asyncio.gather(*(client.get_fax_mailto(122) for _ in range(10)))
    assert sim.count_requests("POST", "/oauth/token") == 1
    sim.expire_tokens()
    await asyncio.gather(*(client.get_fax_mailto(122) for _ in range(10)))
    assert sim.count_requests("POST", "/oauth/token") == 2  # one renewal for all ten 401s


async def test_wrong_secret_is_auth_error_with_one_request(make_client, sim) -> None:
    client = make_client(client_secret="wrong")
    for _ in range(3):
        with pytest.raises(AuthError) as exc:
            await client.get_fax_mailto(122)
        assert exc.value.http_status == 401
    assert sim.count_requests("POST", "/oauth/token") == 3  # one per call, no loop
    assert len(sim.request_log) == 3
    assert "wrong" not in str(exc.value)


async def test_server_always_401_gives_auth_error_after_one_renewal(client, sim) -> None:
    sim.add_fault("/extension/*", status=401, count=None)
    with pytest.raises(AuthError):
        await client.get_fax_mailto(122)
    assert sim.count_requests("GET", "/extension/*") == 2
    assert sim.count_requests("POST", "/oauth/token") == 2
    assert len(sim.request_log) == 4


async def test_401_on_fax_post_is_repeated_once_and_creates_one_fax(client, sim, pdf_bytes) -> None:
    await client.get_user()
    sim.expire_tokens()
    fax = await client.send_fax(122, "74951112233", pdf_bytes)
    assert [r.status for r in sim.request_log if r.method == "POST" and r.path != "/oauth/token"] == [401, 201]
    assert [f.id for f in sim.sent_faxes()] == [fax.id]


async def test_403_is_auth_error_without_renewal(client, sim) -> None:
    await client.get_user()
    sim.add_fault("/extension/*", status=403, count=1)
    with pytest.raises(AuthError) as exc:
        await client.get_fax_mailto(122)
    assert exc.value.http_status == 403
    assert sim.count_requests("POST", "/oauth/token") == 1


async def test_read_only_account_gets_auth_error_on_put() -> None:
    async with run_simulator(access="read_only") as sim:
        async with ProviderClient(sim.base_url, sim.token_url, "demo", "demo") as client:
            with pytest.raises(AuthError) as exc:
                await client.set_fax_mailto(122, ["a@b.test"])
            assert exc.value.status == "user_access_type_deny"


# --------------------------------------------------------------- rate limits
async def test_429_blocks_without_sending(client, sim, cclock) -> None:
    await client.get_fax_mailto(122)
    sim.rate_limit_next(30, path="/extension/*")
    with pytest.raises(RateLimited) as exc:
        await client.get_fax_mailto(122)
    assert exc.value.retry_after == 30
    before = len(sim.request_log)
    for _ in range(20):  # the caller keeps trying: nothing is sent
        with pytest.raises(RateLimited) as exc:
            await client.get_fax_mailto(122)
        assert 0 < exc.value.retry_after <= 30
    with pytest.raises(RateLimited):
        await client.send_fax(122, "123", b"%PDF-1.4 x")
    assert len(sim.request_log) == before
    assert client.blocked_for == 30
    assert cclock.sleeps == []  # never slept on a long block
    cclock.now += 30
    assert await client.get_fax_mailto(122) == ["admin@example.test"]
    assert len(sim.request_log) == before + 1


async def test_short_429_is_waited_once(client, sim, cclock) -> None:
    await client.get_fax_mailto(122)
    sim.rate_limit_next(1, path="/extension/*")
    assert await client.get_fax_mailto(122) == ["admin@example.test"]
    assert cclock.sleeps == [1.0]
    sim.rate_limit_next(2, n=2, path="/extension/*")
    with pytest.raises(RateLimited):
        await client.get_fax_mailto(122)  # the second 429 goes to the caller
    assert cclock.sleeps == [1.0, 2.0]


async def test_429_on_fax_post_is_not_retried(client, sim, pdf_bytes) -> None:
    await client.get_user()
    sim.rate_limit_next(1, path=FAX_OUT)
    with pytest.raises(RateLimited):
        await client.send_fax(122, "123", pdf_bytes)
    assert sim.count_requests("POST", FAX_OUT) == 1
    assert sim.sent_faxes() == []


async def test_hourly_quota(make_client, pdf_bytes) -> None:
    async with run_simulator(hourly_limit=3) as sim:
        client = make_client(base_url=sim.base_url, token_url=sim.token_url)
        for _ in range(3):
            await client.get_fax_mailto(122)
        assert (client.rate_limit_limit, client.rate_limit_remaining) == (3, 0)
        with pytest.raises(RateLimited) as exc:
            await client.get_fax_mailto(122)
        assert 3590 <= exc.value.retry_after <= 3600
        assert exc.value.status == "rate_limit_exceeded"
        n = len(sim.request_log)
        for _ in range(5):
            with pytest.raises(RateLimited):
                await client.list_sent_faxes(122)
        assert len(sim.request_log) == n


async def test_429_on_token_endpoint(client, sim) -> None:
    sim.rate_limit_next(10, path="/oauth/token")
    with pytest.raises(RateLimited) as exc:
        await client.get_fax_mailto(122)
    assert exc.value.retry_after == 10
    assert len(sim.request_log) == 1


# ---------------------------------------------------------- 5xx and timeouts
@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_get_retried_on_5xx(client, sim, cclock, status) -> None:
    await client.get_user()
    sim.fail_next(2, "/extension/*", status=status)
    assert await client.get_fax_mailto(122) == ["admin@example.test"]
    assert sim.count_requests("GET", "/extension/*") == 3
    assert len(cclock.sleeps) == 2
    assert 0 <= cclock.sleeps[0] <= 0.5 and 0 <= cclock.sleeps[1] <= 1.0  # full jitter


async def test_get_gives_up_after_max_attempts(client, sim, cclock) -> None:
    sim.fail_next(100, "/extension/*")
    with pytest.raises(ProviderUnavailable) as exc:
        await client.get_fax_mailto(122)
    assert exc.value.http_status == 503
    assert sim.count_requests("GET", "/extension/*") == 4
    assert len(cclock.sleeps) == 3
    assert client.last_error is not None and "503" in client.last_error
    assert client.last_error_at == cclock.now


@pytest.mark.parametrize(
    "call, method",
    [
        (lambda c: c.set_fax_mailto(123, ["a@b.test"]), "PUT"),
        (lambda c: c.delete_received_fax(122, "0b5e0c2a-0000-4000-8000-000000000000"), "DELETE"),
    ],
)
async def test_put_delete_retried(client, sim, call, method) -> None:
    await client.get_user()
    sim.fail_next(2, "/extension/*", method=method, status=502)
    try:
        await call(client)
    except Exception as exc:  # the DELETE of an unknown uuid ends in 404
        assert type(exc).__name__ == "NotFound"
    assert sim.count_requests(method, "/extension/*") == 3


async def test_max_attempts_one_means_no_retry(make_client, sim) -> None:
    client = make_client(max_attempts=1)
    await client.get_user()
    sim.fail_next(1, "/extension/*")
    with pytest.raises(ProviderUnavailable):
        await client.get_fax_mailto(122)
    assert sim.count_requests("GET", "/extension/*") == 1


async def test_timeout_on_get_is_retried(make_client, sim, cclock) -> None:
    client = make_client(timeout=0.2)
    await client.get_user()
    sim.add_latency(0.5, "/extension/*", count=1)
    assert await client.get_fax_mailto(122) == ["admin@example.test"]
    assert len(cclock.sleeps) == 1


async def test_connection_refused_is_unavailable(make_client, sim) -> None:
    async with run_simulator() as gone:
        base, token = gone.base_url, gone.token_url
    client = make_client(base_url=base, token_url=token)
    with pytest.raises(ProviderUnavailable):
        await client.get_fax_mailto(122)
    with pytest.raises(ProviderUnavailable):
        await client.send_fax(122, "123", b"%PDF-1.4")
    assert client.last_error is not None and "connect" in client.last_error


async def test_token_endpoint_5xx_is_retried(client, sim, cclock) -> None:
    sim.fail_next(1, "/oauth/token", status=502)
    assert await client.get_fax_mailto(122) == ["admin@example.test"]
    assert sim.count_requests("POST", "/oauth/token") == 2


# ------------------------------------------------------------ lost answers
async def test_lost_post_answer_is_ambiguous_and_fax_exists(client, sim, pdf_bytes) -> None:
    await client.get_user()
    sim.drop_after_commit()
    before = dt.datetime.now(dt.timezone.utc)
    with pytest.raises(AmbiguousSubmit) as exc:
        await client.send_fax(122, "74951112233", pdf_bytes)
    err = exc.value
    assert (err.extension_id, err.dst_num) == (122, "74951112233")
    assert err.started_at >= before - dt.timedelta(seconds=1)
    assert sim.count_requests("POST", FAX_OUT) == 1  # never repeated blindly
    # Reconciliation: the fax is there, found by number from started_at on.
    found = await client.list_sent_faxes(122, since=err.started_at - dt.timedelta(seconds=2))
    assert [f.dst_num for f in found] == ["74951112233"]
    assert [r.status for r in sim.request_log if r.method == "POST" and r.path != "/oauth/token"] == [None]


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_post_5xx_is_ambiguous(client, sim, pdf_bytes, status) -> None:
    await client.get_user()
    sim.fail_next(1, FAX_OUT, status=status, method="POST")
    with pytest.raises(AmbiguousSubmit) as exc:
        await client.send_fax(122, "123", pdf_bytes)
    assert exc.value.http_status == status
    assert sim.count_requests("POST", FAX_OUT) == 1


async def test_post_read_timeout_is_ambiguous_and_fax_is_created(make_client, sim, pdf_bytes) -> None:
    client = make_client(timeout=0.2)
    await client.get_user()
    sim.add_fault(FAX_OUT, method="POST", answer_latency=0.4)
    with pytest.raises(AmbiguousSubmit):
        await client.send_fax(122, "123", pdf_bytes)
    for _ in range(50):  # the server finishes the request after the client gave up
        if sim.count_requests("POST", FAX_OUT):
            break
        await asyncio.sleep(0.02)
    assert [f.dst_num for f in sim.sent_faxes()] == ["123"]
    assert sim.count_requests("POST", FAX_OUT) == 1


async def test_dropped_before_processing_is_still_ambiguous(client, sim, pdf_bytes) -> None:
    # The client cannot tell a drop before from a drop after the commit.
    await client.get_user()
    sim.add_fault(FAX_OUT, method="POST", drop=True)
    with pytest.raises(AmbiguousSubmit):
        await client.send_fax(122, "123", pdf_bytes)
    assert sim.sent_faxes() == []


async def test_retry_action_with_lost_answer_is_resolved(client, sim, sim_clock, pdf_bytes) -> None:
    sim.set_outcome("123", ["failed", "sent"])
    fax = await client.send_fax(122, "123", pdf_bytes)
    sim_clock.advance(3)
    sim.add_fault("/extension/*/fax/out/*", method="PUT", commit_then_drop=True)
    got = await client.retry_fax(122, fax.id)  # the repeat gets 409, then it looks
    assert got.status == "ready_to_send"
    assert [r.status for r in sim.request_log if r.method == "PUT"] == [None, 409]
    assert sim.sent_fax(fax.id).attempt == 2


async def test_refused_action_without_lost_answer_is_rejected(client, sim, pdf_bytes) -> None:
    fax = await client.send_fax(122, "123", pdf_bytes)
    with pytest.raises(Rejected):
        await client.retry_fax(122, fax.id)
    assert sim.count_requests("GET", "/extension/*/fax/out/*") == 0


# ---------------------------------------------------- edges via MockTransport
def _token_ok(request: httpx.Request) -> httpx.Response | None:
    if request.url.path == "/oauth/token":
        return httpx.Response(200, json={"access_token": "tok", "token_type": "Bearer", "expires_in": 3600})
    if request.url.path.endswith("/user"):
        return httpx.Response(200, json={"client_id": 12, "extension_id": None, "timezone": "Europe/Moscow", "access": "full"})
    return None


def _mock_client(handler, cclock) -> ProviderClient:
    def route(request: httpx.Request) -> httpx.Response:
        return _token_ok(request) or handler(request)

    return ProviderClient(
        "https://api.example.test/api/ver1.0", "https://api.example.test/oauth/token", "id", "secret",
        transport=httpx.MockTransport(route), sleep=cclock.sleep, clock=cclock,
    )


async def test_post_connect_error_is_unavailable_not_ambiguous(cclock) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with _mock_client(handler, cclock) as client:
        with pytest.raises(ProviderUnavailable):
            await client.send_fax(122, "123", b"%PDF-1.4")


@pytest.mark.parametrize("exc_type", [httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError, httpx.WriteTimeout])
async def test_post_errors_after_connect_are_ambiguous(cclock, exc_type) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc_type("lost", request=request)

    async with _mock_client(handler, cclock) as client:
        with pytest.raises(AmbiguousSubmit):
            await client.send_fax(122, "123", b"%PDF-1.4")


async def test_post_success_without_readable_body_is_ambiguous(cclock) -> None:
    async with _mock_client(lambda r: httpx.Response(201, text="<html>ok</html>"), cclock) as client:
        with pytest.raises(AmbiguousSubmit) as exc:
            await client.send_fax(122, "123", b"%PDF-1.4")
        assert exc.value.http_status == 201


async def test_non_json_error_body_and_x_ratelimit_missing(cclock) -> None:
    async with _mock_client(lambda r: httpx.Response(429, text="slow down"), cclock) as client:
        with pytest.raises(RateLimited) as exc:
            await client.get_fax_mailto(122)
        assert exc.value.retry_after == 60.0  # no header: a safe default


async def test_gzip_answers_are_decoded(cclock) -> None:
    import gzip
    import json

    body = gzip.compress(json.dumps({"fax_mailto": "a@b.test"}).encode())

    def handler(request: httpx.Request) -> httpx.Response:
        assert "gzip" in request.headers["accept-encoding"]
        return httpx.Response(200, content=body, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})

    async with _mock_client(handler, cclock) as client:
        assert await client.get_fax_mailto(122) == ["a@b.test"]


async def test_server_ignoring_paging_does_not_loop(cclock) -> None:
    rows = [{"id": i, "dst_num": "1", "status": "sent", "datetime": "2025-01-01 10:00:00"} for i in range(100)]
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.params.get("page"))
        return httpx.Response(200, json=rows)

    async with _mock_client(handler, cclock) as client:
        faxes = await client.list_sent_faxes(122)
    assert len(faxes) == 100 and calls == ["1", "2"]
