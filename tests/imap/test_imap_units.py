"""The IMAP intake's pure parts: transport choice, names, recipients, keys,
header-only identity, the reply marker, and the daemon wiring."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from types import MappingProxyType

import aioimaplib
import pytest
from support.imap import Dovecot, config_data, load

from gatewayd.config import NumbersConfig
from gatewayd.daemon import Runtime, build_services
from gatewayd.email_to_fax.errors import DestinationNotAllowed, NotAFaxNumber
from gatewayd.email_to_fax.imap import ImapIntake, _Identity, fax_recipients, intake_key
from gatewayd.email_to_fax.imap_session import (
    SecretFilter,
    connection_security,
    install_secret_filter,
    mailbox_name,
    uid_set,
)
from gatewayd.email_to_fax.policy import NumberPolicy
from gatewayd.health import Health
from gatewayd.leadership import Leased
from gatewayd.metrics import Metrics
from gatewayd.store import Store


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("127.0.0.1", 143, "plain"),
        ("::1", 143, "plain"),
        ("localhost", 143, "plain"),
        ("127.0.0.5", 143, "plain"),
        ("127.0.0.1", 993, "tls"),
        ("127.0.0.1", 1143, "tls"),  # plain only on the well-known port, as documented
        ("imap.example.com", 143, "tls"),  # never plain across a network
        ("192.0.2.10", 143, "tls"),
        ("10.0.0.1", 993, "tls"),
    ],
)
def test_connection_security(host: str, port: int, expected: str) -> None:
    assert connection_security(host, port) == expected


@pytest.mark.parametrize(
    ("name", "wire"),
    [
        ("INBOX", '"INBOX"'),
        ("Processed", '"Processed"'),
        ("Fax & Co", '"Fax &- Co"'),
        ('odd "name" \\ here', '"odd \\"name\\" \\\\ here"'),
        ("Факсы/Отправлено", '"&BCQEMAQ6BEEESw-/&BB4EQgQ,BEAEMAQyBDsENQQ9BD4-"'),
        ("Entwürfe", '"Entw&APw-rfe"'),  # RFC 3501 5.1.3 example style
    ],
)
def test_mailbox_name_quotes_and_encodes(name: str, wire: str) -> None:
    assert mailbox_name(name) == wire


def test_uid_set() -> None:
    assert uid_set([3, 1, 2, 7, 9, 10, 10]) == "1:3,7,9:10"
    assert uid_set([5]) == "5"


def test_intake_key_depends_on_message_id_and_every_byte() -> None:
    a = intake_key("<a@x>", b"raw")
    assert a == intake_key(" <a@x> ", b"raw")
    assert a != intake_key("<a@x>", b"raw ")
    assert a != intake_key("<b@x>", b"raw")
    assert intake_key(None, b"raw").startswith("imap::")


def _headers(**values: tuple[str, ...]) -> MappingProxyType:
    return MappingProxyType({"To": (), "Cc": (), "Delivered-To": (), "X-Original-To": (), **values})


def test_fax_recipients() -> None:
    numbers = NumberPolicy(NumbersConfig(deny=("+7809",)))
    plan = fax_recipients(
        _headers(
            To=("fax+78123092631@example.com", "someone@example.com", "fax@example.com"),
            Cc=("fax+8-495-123-45-67@example.com", "fax+123@other.example.org", "other+74951234567@example.com"),
            **{"Delivered-To": ("fax+78123092631@example.com",), "X-Original-To": ("fax+7-812-309-26-31@example.com",)},
        ),
        ["fax@example.com"],
        numbers,
    )
    assert [d.number for d in plan.destinations] == ["+78123092631", "+74951234567"]  # same number once
    assert plan.refused == ()
    assert "fax+7-812-309-26-31@example.com" in plan.addresses

    plan = fax_recipients(_headers(To=("fax+abc@example.com", "fax+78091234567@example.com")), ["fax@example.com"], numbers)
    assert plan.destinations == ()
    assert [type(r) for r in plan.refused] == [NotAFaxNumber, DestinationNotAllowed]


def test_fax_recipients_uses_every_configured_address() -> None:
    numbers = NumberPolicy(NumbersConfig())
    plan = fax_recipients(_headers(To=("scan+78123092631@corp.example",)), ["fax@example.com", "scan@corp.example"], numbers)
    assert [d.number for d in plan.destinations] == ["+78123092631"]


def test_identity_from_header_never_guesses_a_sender() -> None:
    one = _Identity.from_header(
        b"Authentication-Results: mx.example.com;\r\n dmarc=pass header.from=example.com\r\n"
        b"From: Alice <alice@example.com>\r\nMessage-ID: <m@example.com>\r\nSubject: Hi\r\n\r\n"
    )
    assert one.from_addr == "alice@example.com" and one.message_id == "<m@example.com>" and one.subject == "Hi"
    assert one.authentication_results == ("mx.example.com; dmarc=pass header.from=example.com",)
    assert _Identity.from_header(b"From: a@example.com\r\nFrom: b@example.com\r\n\r\n").from_addr is None
    assert _Identity.from_header(b"From: a@example.com, b@example.com\r\n\r\n").from_addr is None
    assert _Identity.from_header(b"From: undisclosed\r\n\r\n").from_addr is None
    assert _Identity.from_header(b"\xff\xfe\x00garbage").from_addr is None


def test_secret_filter_drops_login_lines_only() -> None:
    f = SecretFilter()

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("aioimaplib.aioimaplib", logging.DEBUG, __file__, 1, msg, None, None)

    assert not f.filter(record("Sending : b'ABCD1 LOGIN \"fax\" \"pa\\\\\"ss\"\\r\\n'"))
    assert f.filter(record("Sending : b'ABCD2 NOOP\\r\\n'"))
    assert f.filter(record("Received : b'* 1 EXISTS'"))


@pytest.mark.parametrize(
    "template",
    [
        "Sending : %s",  # today's wording
        "-> %s",  # a new wording
        "wrote %r to the transport",  # the bytes' repr
        "command %s timed out",
        "continuation line appended to pending sync command %s : b'+ '",
    ],
)
@pytest.mark.parametrize("password", ['s3cr3t-Pass', 'pa"ss\\word', "päss wört"])
def test_secret_filter_fails_closed_when_aioimaplib_changes_its_log_text(template: str, password: str) -> None:
    """Whatever aioimaplib's log text becomes, the password is never written."""
    filt = install_secret_filter(password)
    quoted = aioimaplib.quoted(password)
    lines = [
        f"A1 LOGIN fax {quoted}",
        f"A1 login fax {quoted}",  # a lower-case command
        f"A1 XLOGON fax {quoted}",  # a command we have never heard of
        f"fax {password}",  # the password as given
        f"fax {quoted}",  # as quoted on the wire
    ]
    captured: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(self.format(record))

    handler = Capture(logging.DEBUG)
    for name in ("aioimaplib.aioimaplib", "aioimaplib"):
        logger = logging.getLogger(name)
        old_level = logger.level
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)
        try:
            for line in lines:
                arg: object = (line + "\r\n").encode() if "%r" in template else line
                logger.debug(template, arg)
                logger.debug(template % (arg,))
            logger.debug("harmless %s", "NOOP")
        finally:
            logger.removeHandler(handler)
            logger.setLevel(old_level)
    assert captured, "the filter dropped everything, harmless lines too"
    text = "\n".join(captured)
    for rendering in {password, quoted, repr(password)[1:-1], repr(quoted.encode())[2:-1], repr(password.encode())[2:-1]}:
        assert rendering not in text, text
    assert all("harmless" in c for c in captured), captured
    assert filt.redact(f"CommandTimeout: A1 LOGIN fax {quoted}") == "CommandTimeout: A1 LOGIN fax <redacted>"


def test_secret_filter_drops_a_record_it_cannot_format() -> None:
    record = logging.LogRecord("aioimaplib.aioimaplib", logging.DEBUG, __file__, 1, "%s %s", ("one",), None)
    assert not SecretFilter().filter(record)


def test_reply_marker_queues_once_and_is_pruned(open_store) -> None:
    """On both store backends (the store contract suite, tests/support/stores.py)."""
    now = [1000.0]
    store = open_store(clock=lambda: now[0])
    try:
        assert store.imap_queue_reply_once("k1", "gw@example.com", ["a@example.com"], b"mail", ref="<m>")
        assert not store.imap_queue_reply_once("k1", "gw@example.com", ["a@example.com"], b"mail again")
        assert [m.message for m in store.list_mail(kind="reply")] == [b"mail"]
        now[0] = 5000.0
        assert store.imap_queue_reply_once("k2", "gw@example.com", ["a@example.com"], b"other")
        assert store.imap_prune_reply_markers(before=2000.0) == 1
        assert store.imap_queue_reply_once("k1", "gw@example.com", ["a@example.com"], b"much later")
        assert store.imap_prune_reply_markers(before=2000.0) == 0
    finally:
        store.close()


def test_daemon_wires_the_imap_service_only_when_enabled(tmp_path: Path, dovecot: Dovecot) -> None:
    config = load(tmp_path, config_data(dovecot, tmp_path / "state"))
    store = Store(config.state_dir)
    try:
        rt = Runtime(config=config, store=store, provider=None, metrics=Metrics(), health=Health())
        services = build_services(rt)
        imap = [s for s in services if s.name == "imap"]
        # one mailbox, polled by one node at a time: under the "imap" lease (gatewayd/leadership.py)
        assert len(imap) == 1 and isinstance(imap[0], Leased) and isinstance(imap[0].service, ImapIntake)
        # listeners last: the sender is built before the mailbox poller
        names = [s.name for s in services]
        assert names.index("sender") < names.index("imap")
        rt.config = dataclasses.replace(config, imap=dataclasses.replace(config.imap, enabled=False))
        assert not [s for s in build_services(rt) if s.name == "imap"]
    finally:
        store.close()
