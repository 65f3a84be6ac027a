"""Unauthenticated SMTP exhaustion (issue 14, item 7; docs/smtp.md, Limits
per client; docs/security.md, "Hardening"): per-address connection limits,
AUTH-failure throttling, a bound on a session's life and commands, and
scrypt on its own bounded executor. Over real sockets."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
from pathlib import Path

import pytest
from support.e2f import RawSMTP, load, merge, run_gateway, wait_for

from gatewayd.email_to_fax.smtp import SmtpTuning
from gatewayd.email_to_fax.throttle import ClientThrottle
from gatewayd.passwords import hash_password

PASSWORD = "correct horse"


@pytest.fixture(scope="module")
def password_hash() -> str:
    return hash_password(PASSWORD)


def plain(user: str, password: str) -> str:
    return "AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()).decode()


async def refused_at_connect(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        line = await asyncio.wait_for(reader.readline(), 5)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # and closed
        return line
    finally:
        writer.close()


async def test_connections_per_client_address(tmp_path: Path, data: dict) -> None:
    # 127.0.0.1 is a stranger here (not in trusted_networks).
    data = merge(data, {"smtp": {"trusted_networks": ["192.0.2.0/24"], "max_connections_per_client": 2}})
    async with run_gateway(load(tmp_path, data)) as gw:
        first = await RawSMTP.connect(gw.port)
        second = await RawSMTP.connect(gw.port)
        assert await refused_at_connect(gw.port) == b"421 4.7.0 too many connections from your address\r\n"
        await first.close()
        await wait_for(lambda: len(gw.listener.sessions) < 2, what="a slot to free up")
        third = await RawSMTP.connect(gw.port)
        assert third.greeting.startswith("220 ")
        await second.close()
        await third.close()
        assert gw.replies("421") == 1


async def test_trusted_networks_share_only_the_global_limit(tmp_path: Path, data: dict) -> None:
    # A relay in trusted_networks (Postfix in front) opens many connections.
    data = merge(data, {"smtp": {"max_connections_per_client": 1}})
    async with run_gateway(load(tmp_path, data)) as gw:
        clients = [await RawSMTP.connect(gw.port) for _ in range(3)]
        assert all(c.greeting.startswith("220 ") for c in clients)
        for c in clients:
            await c.close()


async def test_auth_failures_are_throttled_per_client_address(tmp_path: Path, data: dict, password_hash: str) -> None:
    data = merge(data, {"smtp": {
        "users": [{"name": "scanner", "password_hash": password_hash}],
        "auth_failures_per_client": 3, "auth_failure_window": "10m",
    }})
    async with run_gateway(load(tmp_path, data)) as gw:
        checked: list[str] = []
        real_verify = gw.listener.verify

        async def spy(name: str, password: bytes) -> bool:
            checked.append(name)
            return await real_verify(name, password)

        gw.listener.verify = spy  # type: ignore[method-assign]
        one = await RawSMTP.connect(gw.port)
        assert await one.cmd(plain("scanner", "wrong")) == "535 5.7.8 authentication credentials invalid"
        assert await one.cmd(plain("nobody", "wrong")) == "535 5.7.8 authentication credentials invalid"
        await one.close()
        # Reconnecting does not reset the count: it is per address.
        two = await RawSMTP.connect(gw.port)
        assert await two.cmd(plain("scanner", "again")) == "535 5.7.8 authentication credentials invalid"
        assert len(checked) == 3
        # Now even the right password is not tried (no scrypt run) until the window passes.
        assert await two.cmd(plain("scanner", PASSWORD)) == "454 4.7.0 too many failed authentications, try later"
        await two.close()
        three = await RawSMTP.connect(gw.port)
        assert await three.cmd(plain("scanner", PASSWORD)) == "454 4.7.0 too many failed authentications, try later"
        await three.close()
        assert len(checked) == 3


def test_the_throttle_forgets_failures_after_the_window() -> None:
    now = [1000.0]
    throttle = ClientThrottle(max_connections_per_client=2, auth_failures_per_client=2, auth_failure_window=60.0, clock=lambda: now[0])
    throttle.auth_failed("192.0.2.1")
    throttle.auth_failed("192.0.2.1")
    assert throttle.auth_blocked("192.0.2.1")
    assert not throttle.auth_blocked("192.0.2.2")
    now[0] += 61
    assert not throttle.auth_blocked("192.0.2.1")
    assert throttle.opened("192.0.2.1") and throttle.opened("192.0.2.1")
    assert not throttle.opened("192.0.2.1")
    throttle.closed("192.0.2.1")
    assert throttle.opened("192.0.2.1")


def test_the_throttle_remembers_a_bounded_number_of_addresses() -> None:
    throttle = ClientThrottle(max_connections_per_client=2, auth_failures_per_client=2, auth_failure_window=60.0, clock=lambda: 0.0, max_tracked=100)
    for n in range(10_000):
        throttle.auth_failed(f"2001:db8::{n:x}")
    assert throttle.tracked <= 100


async def test_a_session_cannot_live_forever_by_sending_commands(tmp_path: Path, data: dict) -> None:
    tuning = SmtpTuning(stop_grace=0.5, max_commands=5)
    async with run_gateway(load(tmp_path, data), smtp_tuning=tuning) as gw:
        c = await RawSMTP.connect(gw.port)  # EHLO is the first command
        for _ in range(4):
            assert (await c.cmd("NOOP")).startswith("250")
        assert await c.cmd("NOOP") == "421 4.7.0 session limit reached, closing connection"
        assert await asyncio.wait_for(c.reader.read(), 5) == b""
        await c.close()


async def test_a_session_has_a_total_time_limit_besides_the_idle_timer(tmp_path: Path, data: dict) -> None:
    tuning = SmtpTuning(stop_grace=0.5, command_timeout=30.0, max_session_time=1.0)
    async with run_gateway(load(tmp_path, data), smtp_tuning=tuning) as gw:
        for _attempt in range(3):
            c = await RawSMTP.connect(gw.port)
            reply = ""
            try:
                for _ in range(200):  # a NOOP about every 50 ms keeps the idle timer from ever firing
                    try:  # the limit's 421 comes unasked: read it before sending more
                        reply = (await asyncio.wait_for(c.reader.readline(), 0.05)).decode().strip()
                        break
                    except asyncio.TimeoutError:
                        pass
                    reply = await c.cmd("NOOP")
                    if not reply.startswith("250"):
                        break
            except ConnectionResetError:
                # The timer fired between the look and the NOOP: the closed
                # socket answered the NOOP with a reset, losing the 421. Again.
                await c.close()
                continue
            assert reply == "421 4.7.0 session limit reached, closing connection"
            assert await asyncio.wait_for(c.reader.read(), 5) == b""
            await c.close()
            return
        raise AssertionError("three sessions in a row lost the 421 to a reset")


class _NoDefaultExecutor(concurrent.futures.ThreadPoolExecutor):
    def submit(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("scrypt must not run on the loop's shared default executor")


async def test_scrypt_runs_on_its_own_executor(tmp_path: Path, data: dict, password_hash: str) -> None:
    data = merge(data, {"smtp": {"users": [{"name": "scanner", "password_hash": password_hash}]}})
    async with run_gateway(load(tmp_path, data)) as gw:
        asyncio.get_running_loop().set_default_executor(_NoDefaultExecutor())
        c = await RawSMTP.connect(gw.port)
        assert (await c.cmd(plain("scanner", PASSWORD))).startswith("235 ")
        await c.close()
        assert gw.listener.password_checks.max_workers <= 4


async def test_an_account_has_its_own_hourly_limit(tmp_path: Path, data: dict, password_hash: str) -> None:
    # issue 14, item 9: the envelope sender matches no [[senders]] rule, so
    # only the account's own max_per_hour limits it.
    from support.corpus import good_message, make_pdf
    from support.e2f import DOMAIN, NUMBER_1, NUMBER_2

    data = merge(data, {"smtp": {"users": [{"name": "scanner", "password_hash": password_hash, "max_per_hour": 2}]}})
    raw = good_message([("scan.pdf", "application/pdf", make_pdf(1))])
    async with run_gateway(load(tmp_path, data)) as gw:
        c = await RawSMTP.connect(gw.port)
        assert (await c.cmd(plain("scanner", PASSWORD))).startswith("235 ")
        _, rcpts, reply = await c.send(raw, sender="scanner@nowhere.example", recipients=(f"{NUMBER_1}@{DOMAIN}", f"{NUMBER_2}@{DOMAIN}", f"+78123092632@{DOMAIN}"))
        assert rcpts == ["250 2.1.5 recipient ok", "250 2.1.5 recipient ok", "450 4.7.1 rate limit reached, try later"]
        assert reply.startswith("250 2.0.0 queued as ")
        _, rcpts, reply = await c.send(raw, sender="other@elsewhere.example")
        assert rcpts == ["450 4.7.1 rate limit reached, try later"]
        await c.close()
        assert len(gw.jobs()) == 2
        # A restart does not reset it: the count is in the store.
        assert gw.store.usage_since("smtp.users:scanner", 0) == 2
