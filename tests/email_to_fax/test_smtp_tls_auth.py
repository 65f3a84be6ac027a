"""STARTTLS, AUTH PLAIN/LOGIN, require_tls, and real mail clients (swaks,
s-nail) against the listener, over real sockets with a certificate made now."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import aiosmtplib
import pytest
from support.corpus import good_message, make_pdf
from support.e2f import DOMAIN, NUMBER_1, NUMBER_2, SENDER, RawSMTP, cert_pair, load, merge, require_tool, run_gateway

from gatewayd.passwords import hash_password

PASSWORD = "correct horse"


@pytest.fixture(scope="module")
def password_hash() -> str:
    return hash_password(PASSWORD)


@pytest.fixture
def tls_data(tmp_path: Path, data: dict, password_hash: str) -> dict:
    cert, key = cert_pair(tmp_path)
    return merge(data, {"smtp": {
        "tls_cert": str(cert), "tls_key": str(key),
        # The test client (127.0.0.1) is a stranger: it must AUTH, and only over TLS.
        "trusted_networks": ["192.0.2.0/24"],
        "users": [{"name": "scanner", "password_hash": password_hash, "extension": 123}],
    }})


def client_tls(tmp_path: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
    return ctx


def pdf_message() -> bytes:
    return good_message([("scan.pdf", "application/pdf", make_pdf(1))], subject="Scan")


async def smtp_client(port: int, tmp_path: Path) -> aiosmtplib.SMTP:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, use_tls=False, tls_context=client_tls(tmp_path), timeout=20)
    await client.connect()
    await client.ehlo()
    return client


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_auth_over_starttls_then_send(tmp_path: Path, tls_data: dict, mechanism: str) -> None:
    async with run_gateway(load(tmp_path, tls_data)) as gw:
        client = await smtp_client(gw.port, tmp_path)
        assert client.supports_extension("starttls")
        assert not client.supports_extension("auth")  # never offered in clear to a stranger
        await client.starttls()
        await client.ehlo()
        assert client.supports_extension("auth")
        assert {"plain", "login"} <= {m.lower() for m in client.server_auth_methods}
        auth = client.auth_plain if mechanism == "PLAIN" else client.auth_login
        response = await auth("scanner", PASSWORD)
        assert response.code == 235
        # An account may use any envelope sender; its extension wins.
        errors, message = await client.sendmail("scanner@anywhere.example", [f"{NUMBER_1}@{DOMAIN}"], pdf_message())
        await client.quit()
        jobs = gw.jobs()
        assert errors == {}
        assert message == f"2.0.0 queued as {jobs[0].id}"
        assert jobs[0].extension == 123
        assert jobs[0].report_to == "scanner@anywhere.example"


async def test_starttls_and_auth_in_every_listener_process(tmp_path: Path, tls_data: dict) -> None:
    """``smtp.processes = 2``: the other listener process builds its own TLS
    context and checks passwords from the configuration it was sent."""
    async with run_gateway(load(tmp_path, merge(tls_data, {"smtp": {"processes": 2}}))) as gw:
        assert gw.listener.processes is not None and len(gw.listener.processes.workers) == 1
        in_main: list[str] = []
        decide = gw.listener.decisions.data

        async def counted(server, envelope, result):  # type: ignore[no-untyped-def]
            reply = await decide(server, envelope, result)
            in_main.append(reply)
            return reply

        gw.listener.decisions.data = counted  # type: ignore[method-assign]
        sent = 16  # the kernel spreads connections: all 16 on one side has odds of 1 in 32,768
        for _ in range(sent):
            client = await smtp_client(gw.port, tmp_path)
            await client.starttls()
            await client.ehlo()
            assert (await client.auth_plain("scanner", PASSWORD)).code == 235
            errors, message = await client.sendmail("scanner@anywhere.example", [f"{NUMBER_1}@{DOMAIN}"], pdf_message())
            await client.quit()
            assert errors == {} and message.startswith("2.0.0 queued as "), message
        jobs = gw.jobs()
        assert len(jobs) == sent and {j.extension for j in jobs} == {123}
        assert 0 < len(in_main) < sent, f"the main process answered {len(in_main)} of {sent}: the other process took none"


async def test_wrong_password_unknown_user_and_lockout(tmp_path: Path, tls_data: dict) -> None:
    async with run_gateway(load(tmp_path, tls_data)) as gw:
        client = await smtp_client(gw.port, tmp_path)
        await client.starttls()
        await client.ehlo()
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as bad:
            await client.auth_plain("scanner", "wrong")
        assert (bad.value.code, bad.value.message) == (535, "5.7.8 authentication credentials invalid")
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as unknown:
            await client.auth_login("nobody", PASSWORD)
        assert unknown.value.code == 535
        # Unauthenticated, the stranger may not send.
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
            await client.mail(SENDER)
        assert (refused.value.code, refused.value.message) == (530, "5.7.0 authentication required")
        # The third failure ends the session.
        with pytest.raises((aiosmtplib.SMTPAuthenticationError, aiosmtplib.SMTPServerDisconnected)):
            await client.auth_plain("scanner", "still wrong")
        with pytest.raises(aiosmtplib.SMTPServerDisconnected):
            await client.noop()
        assert gw.jobs() == []
        assert gw.replies("535") == 3


async def test_no_auth_in_clear_for_strangers(tmp_path: Path, tls_data: dict) -> None:
    async with run_gateway(load(tmp_path, tls_data)) as gw:
        c = await RawSMTP.connect(gw.port)
        assert not any("AUTH" in line for line in c.lines)
        assert (await c.cmd("AUTH PLAIN AHNjYW5uZXIAY29ycmVjdCBob3JzZQ==")).startswith("538 5.7.11 ")
        await c.close()


async def test_auth_in_clear_from_trusted_network(tmp_path: Path, data: dict, password_hash: str) -> None:
    data = merge(data, {"smtp": {"users": [{"name": "scanner", "password_hash": password_hash}]}})
    async with run_gateway(load(tmp_path, data)) as gw:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=gw.port, start_tls=False, use_tls=False, timeout=20)
        await client.connect()
        await client.ehlo()
        assert client.supports_extension("auth")
        await client.auth_plain("scanner", PASSWORD)
        _, message = await client.sendmail("scanner@anywhere.example", [f"{NUMBER_2}@{DOMAIN}"], pdf_message())
        await client.quit()
        assert message.startswith("2.0.0 queued as ")
        assert gw.jobs()[0].extension == 122  # no account extension, no matching rule: provider.extension


async def test_require_tls(tmp_path: Path, tls_data: dict) -> None:
    data = merge(tls_data, {"smtp": {"require_tls": True, "trusted_networks": ["127.0.0.1/32"]}})
    async with run_gateway(load(tmp_path, data)) as gw:
        c = await RawSMTP.connect(gw.port)
        assert "250-STARTTLS" in c.lines
        assert await c.cmd(f"MAIL FROM:<{SENDER}>") == "530 5.7.0 must issue STARTTLS first"
        assert await c.cmd("AUTH PLAIN AHNjYW5uZXIAY29ycmVjdCBob3JzZQ==") == "530 5.7.0 must issue STARTTLS first"
        await c.close()
        client = await smtp_client(gw.port, tmp_path)
        await client.starttls()
        errors, message = await client.sendmail(SENDER, [f"{NUMBER_1}@{DOMAIN}"], pdf_message())
        await client.quit()
        assert message.startswith("2.0.0 queued as ")
        assert len(gw.jobs()) == 1


async def run_tool(*args: str, stdin: bytes = b"", timeout: float = 60) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(stdin), timeout)
    return proc.returncode or 0, out.decode("utf-8", "replace")


async def test_swaks_starttls_auth_and_a_refusal(tmp_path: Path, tls_data: dict) -> None:
    require_tool("swaks")
    pdf = tmp_path / "letter.pdf"
    pdf.write_bytes(make_pdf(2))
    async with run_gateway(load(tmp_path, tls_data)) as gw:
        server = f"127.0.0.1:{gw.port}"
        rc, out = await run_tool("swaks", "--server", server, "--from", SENDER, "--to", f"8-812-309-26-31@{DOMAIN},84951234567@{DOMAIN}",
                                 "--tls", "--auth", "LOGIN", "--auth-user", "scanner", "--auth-password", PASSWORD,
                                 "--attach-type", "application/pdf", "--attach-name", "letter.pdf", "--attach", f"@{pdf}",
                                 "--body", "Two pages follow.")
        jobs = gw.jobs()
        assert rc == 0, out
        assert f"<~  250 2.0.0 queued as {jobs[0].id} {jobs[1].id}" in out
        assert [j.number for j in jobs] == [NUMBER_1, NUMBER_2]
        assert jobs[0].pages == 3  # cover page + 2

        rc, out = await run_tool("swaks", "--server", server, "--from", SENDER, "--to", "someone@elsewhere.example",
                                 "--tls", "--auth", "PLAIN", "--auth-user", "scanner", "--auth-password", PASSWORD)
        assert rc != 0
        assert "<~* 550 5.7.1 relaying denied" in out

        rc, out = await run_tool("swaks", "--server", server, "--from", SENDER, "--to", f"88123092631@{DOMAIN}", "--quit-after", "MAIL")
        assert "<** 530 5.7.0 authentication required" in out
        assert len(gw.jobs()) == 2


async def test_s_nail_sends_a_pdf(tmp_path: Path, data: dict) -> None:
    require_tool("s-nail")
    pdf = tmp_path / "contract.pdf"
    pdf.write_bytes(make_pdf(1))
    home = tmp_path / "home"
    home.mkdir()
    async with run_gateway(load(tmp_path, data)) as gw:
        proc = await asyncio.create_subprocess_exec(
            "s-nail", "-#", "-:/",
            "-S", "v15-compat", "-S", f"mta=smtp://127.0.0.1:{gw.port}", "-S", "smtp-auth=none",
            "-S", f"from={SENDER}", "-S", "sendwait", "-S", "hostname=client.test",
            "-s", "Contract", "-a", str(pdf), f"{NUMBER_1}@{DOMAIN}",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={"HOME": str(home), "PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
        )
        out, _ = await asyncio.wait_for(proc.communicate(b"Please sign.\n"), 60)
        assert proc.returncode == 0, out.decode()
        jobs = gw.jobs()
        assert len(jobs) == 1, out.decode()
        assert jobs[0].subject == "Contract"
        assert jobs[0].pages == 2  # cover page with "Please sign." + the PDF
        assert gw.replies("250") == 1  # the reply to DATA only (docs/operations.md, Metrics)
