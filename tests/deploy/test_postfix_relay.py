"""docs/deployment.md's Postfix set-up is no open relay to the phone network.

The snippet between the ``postfix-main.cf``, ``postfix-transport``,
``postfix-fax_access`` and ``dovecot-auth-listener`` markers is run as
written in front of a real ``gatewayd run`` and the provider simulator, with
users logging in through a real Dovecot auth socket (docs/security.md; issue:
the documented relay used to accept the fax domain from anyone). Only
loopback addresses: every process listens on 127.0.0.1.

gatewayd's own mail goes back out through the same Postfix, as the
``gatewayd-behind-postfix`` block's ``[mail] relay`` says, and Postfix
delivers the status report to the sender's domain (here a mail sink on
127.0.0.1, through a transport map entry only the test adds): the
walk-through's last step, "get its report" (docs/deployment.md, step 5).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from support.deploy import REPO, doc_block
from support.postfix import AuthDovecot, PrivatePostfix
from support.service import DOMAIN, NUMBER, Gateway, NotifySocket, Ports, RawSmtp, clean_env, fax_email, gateway_config, write_config

from gatewayd.mailsink import MailSink
from gatewayd.provider.simulator import ProviderSimulator

USER, PASSWORD = "alice", "s3cret-for-the-test"
CONFIGURATION = REPO / "docs" / "configuration.md"
SENDER = "alice@example.com"  # matches the doc's [[senders]] "*@example.com"
# gatewayd's login at Postfix for its reports (see documented_gatewayd).
GATEWAY_USER, GATEWAY_PASSWORD = "gatewayd", "relay-password-for-the-test"


def documented_gatewayd(smtp_port: int, postfix_port: int) -> dict[str, Any]:
    """[smtp], [[senders]] and [mail] as docs/deployment.md's gatewayd-behind-postfix
    block gives them, with only what a private instance must change (asserted)."""
    doc = tomllib.loads(doc_block("gatewayd-behind-postfix"))
    assert doc["smtp"]["listen"] == "127.0.0.1:2525" and doc["smtp"]["domains"] == [DOMAIN], doc
    assert doc["mail"]["relay"] == "127.0.0.1:25", doc
    return {
        "senders": doc["senders"],
        # gatewayd listens on a free port here, not the documented 2525.
        "smtp": {**doc["smtp"], "listen": f"127.0.0.1:{smtp_port}"},
        "mail": {
            # The private Postfix listens on a free port, not 25. And its
            # mynetworks (127.0.0.2/32) leaves out 127.0.0.1, where gatewayd
            # connects from, so gatewayd logs in through Dovecot SASL as the
            # doc says to when loopback is not in mynetworks.
            "relay": doc["mail"]["relay"].replace(":25", f":{postfix_port}"),
            "username": GATEWAY_USER,
            "password": GATEWAY_PASSWORD,
        },
    }


def documented_postfix(postfix: PrivatePostfix, gateway_port: int, sink_port: int) -> tuple[str, dict[str, str]]:
    """main.cf and the lookup tables as docs/deployment.md writes them, with
    only what a private instance must change (each substitution asserted)."""
    snippet = doc_block("postfix-main.cf")
    # The tables live in the instance's own directory, not /etc/postfix.
    for name in ("transport", "fax_access"):
        assert f"hash:/etc/postfix/{name}" in snippet
        snippet = snippet.replace(f"hash:/etc/postfix/{name}", f"hash:{postfix.conf / name}")
    transport = doc_block("postfix-transport")
    # gatewayd listens on a free port here, not the documented 2525.
    assert "smtp:[127.0.0.1]:2525" in transport
    transport = transport.replace("smtp:[127.0.0.1]:2525", f"smtp:[127.0.0.1]:{gateway_port}")
    # Not in the doc: the senders' own domain, where a real Postfix would
    # deliver locally or to its MX, goes to the test's mail sink on loopback.
    transport += f"example.com    smtp:[127.0.0.1]:{sink_port}\n"
    # The snippet sets no mynetworks; the instance's base does: 127.0.0.2/32,
    # so the test's client on 127.0.0.1 is "outside mynetworks" (any Internet
    # host for a real Postfix) while staying on loopback.
    main_cf = postfix.base_main_cf("mynetworks = 127.0.0.2/32") + "\n# docs/deployment.md, postfix-main.cf:\n" + snippet
    return main_cf, {"transport": transport, "fax_access": doc_block("postfix-fax_access")}


@pytest.fixture
def pdf() -> bytes:
    from gatewayd.demo import sample_pdf

    return sample_pdf()


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    sim = ProviderSimulator(send_delays=(0.2, 0.4))
    await sim.start()
    sink = await MailSink().start()  # example.com's mailboxes
    postfix = PrivatePostfix.create()
    dovecot = AuthDovecot.create(USER, PASSWORD, {GATEWAY_USER: GATEWAY_PASSWORD})
    notify_socket = NotifySocket(tmp_path)
    gateway: Gateway | None = None
    try:
        # gatewayd with the doc's matching settings (deployment.md, after the snippet).
        ports = Ports()
        documented = documented_gatewayd(ports.smtp, postfix.port)
        data = gateway_config(
            tmp_path / "state", ports, provider_url=sim.base_url, token_url=sim.token_url,
            senders=documented["senders"], smtp=documented["smtp"], mail=documented["mail"],
        )
        gateway = Gateway(write_config(tmp_path / "config.toml", data), tmp_path, clean_env(NOTIFY_SOCKET=notify_socket.address))
        await gateway.start()
        await notify_socket.wait_for("READY=1", timeout=30)

        main_cf, tables = documented_postfix(postfix, ports.smtp, sink.port)
        postfix.configure(main_cf, tables)
        postfix.start()  # creates the queue's private/ directory, where Dovecot's socket goes
        listener = doc_block("dovecot-auth-listener")
        assert "/var/spool/postfix/private/auth" in listener
        socket_path = postfix.queue / "private" / "auth"  # smtpd_sasl_path = private/auth, relative to the queue
        dovecot.start(listener.replace("/var/spool/postfix/private/auth", str(socket_path)), socket_path)
        yield {"sim": sim, "postfix": postfix, "dovecot": dovecot, "port": postfix.port, "gateway": gateway, "sink": sink}
    finally:
        postfix.remove()
        dovecot.remove()
        if gateway is not None:
            await gateway.stop()
        notify_socket.close()
        await sink.stop()
        await sim.stop()


async def transaction(port: int, *, login: bool, sender: str = SENDER, data: bytes | None = None) -> list[str]:
    """EHLO [AUTH] MAIL RCPT [DATA]; the replies, stopping at the first refusal."""
    client, banner = await RawSmtp.connect(port)
    replies = [banner]
    try:
        replies.append(await client.command("EHLO client.example.net"))
        if login:
            token = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
            replies.append(await client.command(f"AUTH PLAIN {token}"))
        replies.append(await client.command(f"MAIL FROM:<{sender}>"))
        replies.append(await client.command(f"RCPT TO:<{NUMBER}@{DOMAIN}>"))
        if data is None or not replies[-1].startswith("250"):
            return replies
        replies.append(await client.command("DATA"))
        client.writer.write(data.replace(b"\r\n.", b"\r\n..") + b"\r\n.\r\n")
        await client.writer.drain()
        replies.append(await client.reply())
        return replies
    finally:
        await client.close()


async def until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout}s")


async def test_the_documented_postfix_refuses_strangers_and_relays_users(relay: dict[str, Any], pdf: bytes) -> None:
    sim, postfix = relay["sim"], relay["postfix"]
    message = fax_email(SENDER, f"{NUMBER}@{DOMAIN}", pdf)

    # A stranger (not in mynetworks, not logged in) claiming a trusted
    # envelope sender: refused at RCPT for the fax domain.
    replies = await transaction(relay["port"], login=False, data=message)
    assert replies[-1].startswith("554 5.7.1"), (replies, postfix.maillog()[-2000:])
    assert "Recipient address rejected" in replies[-1], replies

    # A user of the domain, logged in through Dovecot: accepted, relayed to
    # gatewayd, and the fax reaches the provider.
    replies = await transaction(relay["port"], login=True, data=message)
    assert replies[2].startswith("235"), (replies, relay["dovecot"].log_tail())
    assert replies[-1].startswith("250"), (replies, postfix.maillog()[-2000:])

    def faxed() -> bool:
        return len(sim.sent) >= 1

    await until(faxed, 60, "the fax at the provider simulator (maillog:\n" + postfix.maillog()[-2000:] + ")")
    # Exactly one: the stranger's message never reached gatewayd.
    await asyncio.sleep(1)
    assert len(sim.sent) == 1, json.dumps([f.dst_num for f in sim.sent.values()])
    assert "status=sent" in postfix.maillog()


async def test_the_report_comes_back_through_postfix(relay: dict[str, Any], pdf: bytes) -> None:
    # The walk-through's end (docs/deployment.md, step 5): a fax sent through
    # Postfix, and its status report received through Postfix, the relay
    # the doc's [mail] section names.
    sim, postfix, sink = relay["sim"], relay["postfix"], relay["sink"]
    message = fax_email(SENDER, f"{NUMBER}@{DOMAIN}", pdf, subject="first fax")
    replies = await transaction(relay["port"], login=True, data=message)
    assert replies[-1].startswith("250"), (replies, postfix.maillog()[-2000:])
    await until(lambda: len(sim.sent) >= 1, 60, "the fax at the provider simulator (maillog:\n" + postfix.maillog()[-2000:] + ")")

    def reported() -> bool:
        return any(SENDER in m.rcpt_tos for m in sink.messages)

    await until(reported, 90, "the report in the sink (maillog:\n" + postfix.maillog()[-3000:] + "\n" + relay["dovecot"].log_tail() + ")")
    (report,) = [m for m in sink.messages if SENDER in m.rcpt_tos]
    # docs/reports.md: "Fax to <number> <outcome>: <original subject>".
    assert report.message["Subject"] == f"Fax to {NUMBER} sent: first fax", report.message["Subject"]
    # It went through Postfix (its Received: line), after gatewayd logged in.
    assert "mx.example.com" in str(report.message["Received"]), report.message["Received"]
    log = postfix.maillog()
    assert f"sasl_username={GATEWAY_USER}" in log, log[-3000:]
    assert f"to=<{SENDER}>, relay=127.0.0.1[127.0.0.1]:{sink.port}" in log, log[-3000:]


def largest_gatewayd_message() -> int:
    """smtp.max_message_size's default, as docs/configuration.md gives it (and the code has it)."""
    from gatewayd.config import SmtpConfig, parse_size

    row = re.search(r"^\| `max_message_size` \| [^|]+ \| `\"([^\"]+)\"` \|", CONFIGURATION.read_text(encoding="utf-8"), re.M)
    assert row, "docs/configuration.md has no max_message_size row with a default"
    documented = parse_size(row.group(1))
    assert documented == SmtpConfig().max_message_size
    return documented


def test_the_documented_postfix_takes_gatewayds_largest_message() -> None:
    # Postfix's default (10240000) capped faxes at ~7.5 MB of PDF once
    # base64-encoded, while gatewayd takes 10 MB documents (issue 21, item 7).
    limits = re.findall(r"^message_size_limit\s*=\s*(\d+)\s*$", doc_block("postfix-main.cf"), re.M)
    assert len(limits) == 1, "the Postfix snippet sets no message_size_limit"
    assert int(limits[0]) >= largest_gatewayd_message(), (limits, largest_gatewayd_message())


async def test_a_9_mb_document_goes_through_postfix_and_is_faxed(relay: dict[str, Any]) -> None:
    from support.reliability import pdf_bytes

    sim, postfix = relay["sim"], relay["postfix"]
    document = pdf_bytes(1, padding=9_000_000, seed=21)
    message = fax_email(SENDER, f"{NUMBER}@{DOMAIN}", document, subject="nine megabytes")
    assert len(message) > 12_000_000 > 10_240_000  # over Postfix's default limit
    replies = await transaction(relay["port"], login=True, data=message)
    assert replies[-1].startswith("250"), (replies, postfix.maillog()[-2000:])
    await until(lambda: len(sim.sent) >= 1, 120, "the 9 MB fax at the provider simulator (maillog:\n" + postfix.maillog()[-2000:] + ")")
    (fax,) = sim.sent.values()
    assert fax.dst_num == NUMBER.lstrip("+"), fax  # (gatewayd rewrites the PDF: the unused filler is gone)


async def test_a_wrong_password_is_refused(relay: dict[str, Any]) -> None:
    client, _ = await RawSmtp.connect(relay["port"])
    try:
        await client.command("EHLO client.example.net")
        token = base64.b64encode(f"\0{USER}\0wrong".encode()).decode()
        assert (await client.command(f"AUTH PLAIN {token}")).startswith("535"), relay["dovecot"].log_tail()
        await client.command(f"MAIL FROM:<{SENDER}>")
        assert (await client.command(f"RCPT TO:<{NUMBER}@{DOMAIN}>")).startswith("554 5.7.1")
    finally:
        await client.close()
