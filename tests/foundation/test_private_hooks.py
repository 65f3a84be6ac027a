"""Guards for the third-party internals gatewayd relies on.

One test per private hook (docs/architecture.md, "Third-party internals
relied on"). When a library upgrade removes or reshapes one, the test that
fails names the hook and the gatewayd file that needs it, instead of the
gateway failing in production. pyproject.toml pins aiosmtpd and aioimaplib
to compatible releases (``~=``) for the same reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import socket
from collections.abc import AsyncIterator
from email.feedparser import BytesFeedParser
from email.message import Message

import aioimaplib
import aioimaplib.aioimaplib
from aiosmtpd.smtp import SMTP, Envelope

SMTP_PY = "gatewayd/email_to_fax/smtp.py"
SESSION_PY = "gatewayd/email_to_fax/imap_session.py"


def params(func: object) -> list[str]:
    return list(inspect.signature(func).parameters)  # type: ignore[arg-type]


def smtp_instance() -> SMTP:
    async def make() -> SMTP:
        return SMTP(handler=object())

    return asyncio.run(make())


# --------------------------------------------------------------- aiosmtpd


def test_aiosmtpd_smtp_reader_is_the_connection_stream_reader() -> None:
    async def main() -> object:
        made: list[SMTP] = []

        def factory() -> SMTP:
            made.append(SMTP(handler=object()))
            return made[-1]

        server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await reader.readline()  # the greeting: the session is up
            reader_attr = getattr(made[0], "_reader", None)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            return reader_attr
        finally:
            server.close()
            await server.wait_closed()

    reader = asyncio.run(main())
    assert isinstance(reader, asyncio.StreamReader), (
        f"aiosmtpd changed: {SMTP_PY} (FaxSMTP._read_data) relies on SMTP._reader, "
        f"the connection's asyncio.StreamReader, set once connected (got {reader!r})"
    )


def test_aiosmtpd_smtp_reset_timeout() -> None:
    assert hasattr(SMTP, "_reset_timeout"), f"aiosmtpd changed: {SMTP_PY} relies on SMTP._reset_timeout"
    assert params(SMTP._reset_timeout) == ["self", "duration"], (
        f"aiosmtpd changed: {SMTP_PY} calls SMTP._reset_timeout(duration) and _reset_timeout(); "
        f"its signature is now {inspect.signature(SMTP._reset_timeout)}"
    )


def test_aiosmtpd_smtp_set_post_data_state() -> None:
    assert hasattr(SMTP, "_set_post_data_state"), f"aiosmtpd changed: {SMTP_PY} relies on SMTP._set_post_data_state"
    assert params(SMTP._set_post_data_state) == ["self"], (
        f"aiosmtpd changed: {SMTP_PY} overrides and calls SMTP._set_post_data_state(); "
        f"its signature is now {inspect.signature(SMTP._set_post_data_state)}"
    )


def test_aiosmtpd_smtp_create_envelope() -> None:
    assert hasattr(SMTP, "_create_envelope"), f"aiosmtpd changed: {SMTP_PY} relies on SMTP._create_envelope"
    assert params(SMTP._create_envelope) == ["self"], (
        f"aiosmtpd changed: {SMTP_PY} overrides SMTP._create_envelope() to make a FaxEnvelope; "
        f"its signature is now {inspect.signature(SMTP._create_envelope)}"
    )
    assert isinstance(smtp_instance()._create_envelope(), Envelope), (
        f"aiosmtpd changed: {SMTP_PY} expects SMTP._create_envelope() to return an Envelope"
    )


def test_aiosmtpd_smtp_timeout_cb() -> None:
    assert hasattr(SMTP, "_timeout_cb"), f"aiosmtpd changed: {SMTP_PY} relies on SMTP._timeout_cb"
    assert params(SMTP._timeout_cb) == ["self"], (
        f"aiosmtpd changed: {SMTP_PY} overrides SMTP._timeout_cb(); its signature is now "
        f"{inspect.signature(SMTP._timeout_cb)}"
    )
    assert "_timeout_cb" in inspect.getsource(SMTP._reset_timeout), (
        f"aiosmtpd changed: {SMTP_PY} expects SMTP._reset_timeout to schedule self._timeout_cb"
    )


def test_aiosmtpd_smtp_getaddr() -> None:
    # FaxSMTP._getaddr is aiosmtpd's without the class it defines per call:
    # the same answers for what MAIL and RCPT may carry.
    from gatewayd.email_to_fax.smtp import FaxSMTP

    assert params(SMTP._getaddr) == ["self", "arg"], (
        f"aiosmtpd changed: {SMTP_PY} overrides SMTP._getaddr(arg); its signature is now {inspect.signature(SMTP._getaddr)}"
    )
    for name in ("smtp_MAIL", "smtp_RCPT"):
        assert "self._getaddr(" in inspect.getsource(getattr(SMTP, name)), (
            f"aiosmtpd changed: {SMTP_PY} expects SMTP.{name} to parse its address with self._getaddr"
        )
    theirs, ours = smtp_instance(), smtp_instance()
    ours.__class__ = type("Ours", (SMTP,), {"_getaddr": FaxSMTP._getaddr})
    long_local = "a" * 65 + "@example.com"
    for arg in ["", "<a@example.com>", "<a@example.com> SIZE=10", "a@example.com", "<>", "<@x,@y:a@example.com>",
                "<a b@example.com>", "<\"a b\"@example.com>", "junk<", "<a@[127.0.0.1]>", f"<{long_local}>",
                "<a@example.com", "<<a@example.com>>", "a@b@c", " <a@example.com>"]:
        assert ours._getaddr(arg) == theirs._getaddr(arg), arg
    ours.local_part_limit = theirs.local_part_limit = 64
    assert ours._getaddr(f"<{long_local}>") == theirs._getaddr(f"<{long_local}>") == (None, None)


def test_aiosmtpd_smtp_handle_client() -> None:
    # FaxSMTP._handle_client asks the per-client limits before aiosmtpd's greets.
    assert inspect.iscoroutinefunction(SMTP._handle_client) and params(SMTP._handle_client) == ["self"], (
        f"aiosmtpd changed: {SMTP_PY} overrides SMTP._handle_client(); its signature is now "
        f"{inspect.signature(SMTP._handle_client)}"
    )
    assert "self._handle_client()" in inspect.getsource(SMTP.connection_made), (
        f"aiosmtpd changed: {SMTP_PY} expects SMTP.connection_made to start self._handle_client()"
    )
    assert "220 " in inspect.getsource(SMTP._handle_client), (
        f"aiosmtpd changed: {SMTP_PY} expects SMTP._handle_client to send the greeting"
    )


def test_aiosmtpd_smtp_authenticate() -> None:
    assert hasattr(SMTP, "_authenticate"), f"aiosmtpd changed: {SMTP_PY} relies on SMTP._authenticate"
    assert params(SMTP._authenticate) == ["self", "mechanism", "auth_data"], (
        f"aiosmtpd changed: {SMTP_PY} overrides SMTP._authenticate(mechanism, auth_data); "
        f"its signature is now {inspect.signature(SMTP._authenticate)}"
    )
    for method in (SMTP.auth_PLAIN, SMTP.auth_LOGIN):
        assert "self._authenticate(" in inspect.getsource(method), (
            f"aiosmtpd changed: {SMTP_PY} expects SMTP.{method.__name__} to call self._authenticate"
        )


def test_aiosmtpd_smtp_strip_command_keyword() -> None:
    assert hasattr(SMTP, "_strip_command_keyword"), (
        f"aiosmtpd changed: {SMTP_PY} (smtp_MAIL) relies on SMTP._strip_command_keyword"
    )
    assert params(SMTP._strip_command_keyword) == ["self", "keyword", "arg"], (
        f"aiosmtpd changed: {SMTP_PY} calls SMTP._strip_command_keyword(keyword, arg); "
        f"its signature is now {inspect.signature(SMTP._strip_command_keyword)}"
    )
    assert smtp_instance()._strip_command_keyword("FROM:", "FROM:<a@example.com> SIZE=10") == "<a@example.com> SIZE=10"


def test_aiosmtpd_smtp_tls_protocol() -> None:
    smtp = smtp_instance()
    assert hasattr(smtp, "_tls_protocol") and smtp._tls_protocol is None, (
        f"aiosmtpd changed: {SMTP_PY} (FaxSMTP.tls) reads SMTP._tls_protocol, None until STARTTLS"
    )


def test_aiosmtpd_smtp_auth_require_tls() -> None:
    smtp = smtp_instance()
    assert isinstance(getattr(smtp, "_auth_require_tls", None), bool), (
        f"aiosmtpd changed: {SMTP_PY} (FaxSMTP.connection_made) sets SMTP._auth_require_tls per connection"
    )
    assert "_auth_require_tls" in inspect.getsource(SMTP), (
        f"aiosmtpd changed: {SMTP_PY} expects SMTP to consult self._auth_require_tls before AUTH"
    )


def test_aiosmtpd_smtp_methods_table() -> None:
    smtp = smtp_instance()
    table = getattr(smtp, "_smtp_methods", None)
    assert isinstance(table, dict) and "NOOP" in table and "MAIL" in table, (
        f"aiosmtpd changed: {SMTP_PY} (FaxSMTP._counted) wraps SMTP._smtp_methods, the command name -> method table"
    )
    assert "self._smtp_methods.get(command)" in inspect.getsource(SMTP._handle_client), (
        f"aiosmtpd changed: {SMTP_PY} expects SMTP._handle_client to look every command up in self._smtp_methods"
    )


# ------------------------------------------------------------- aioimaplib


async def _imap4_on_a_closed_port() -> AsyncIterator[aioimaplib.IMAP4]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = aioimaplib.IMAP4(host="127.0.0.1", port=port, timeout=1)
    try:
        yield client
    finally:
        task = getattr(client, "_client_task", None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


def test_aioimaplib_imap4_protocol() -> None:
    async def main() -> object:
        async for client in _imap4_on_a_closed_port():
            return getattr(client, "protocol", None)
        return None

    protocol = asyncio.run(main())
    assert isinstance(protocol, aioimaplib.IMAP4ClientProtocol), (
        f"aioimaplib changed: {SESSION_PY} relies on IMAP4.protocol (an IMAP4ClientProtocol) for every command"
    )
    for name in ("idle_queue", "idle_done", "has_pending_idle_command", "wait_for_idle_response", "transport"):
        assert hasattr(protocol, name), f"aioimaplib changed: {SESSION_PY} relies on IMAP4.protocol.{name}"


def test_aioimaplib_imap4_client_task() -> None:
    async def main() -> object:
        async for client in _imap4_on_a_closed_port():
            return getattr(client, "_client_task", None)
        return None

    task = asyncio.run(main())
    assert isinstance(task, asyncio.Task), (
        f"aioimaplib changed: {SESSION_PY} (ImapSession.close) cancels IMAP4._client_task, the connect task"
    )


def test_aioimaplib_loggers_are_under_its_package_name() -> None:
    module_logger = getattr(aioimaplib.aioimaplib, "log", None)
    assert isinstance(module_logger, logging.Logger) and module_logger.name.startswith("aioimaplib"), (
        f"aioimaplib changed: {SESSION_PY} (install_secret_filter) filters the password out of the "
        f"loggers named aioimaplib.*; its logger is now {module_logger!r}"
    )


# ---------------------------------------------------------------- stdlib


def test_asyncio_streamreader_limit() -> None:
    async def make() -> asyncio.StreamReader:
        return asyncio.StreamReader(limit=12345)

    reader = asyncio.run(make())
    assert getattr(reader, "_limit", None) == 12345, (
        "asyncio changed: gatewayd/email_to_fax/fastdata.py (read_data) raises StreamReader._limit "
        "for long DATA lines"
    )


def test_feedparser_new_message() -> None:
    assert hasattr(BytesFeedParser, "_new_message"), (
        "email changed: gatewayd/email_to_fax/parse.py (_BoundedFeedParser) overrides BytesFeedParser._new_message"
    )
    assert params(BytesFeedParser._new_message) == ["self"], (
        "email changed: gatewayd/email_to_fax/parse.py overrides BytesFeedParser._new_message(); "
        f"its signature is now {inspect.signature(BytesFeedParser._new_message)}"
    )
    calls: list[int] = []

    class Counting(BytesFeedParser):
        def _new_message(self) -> None:
            calls.append(1)
            super()._new_message()  # type: ignore[misc]

    parser = Counting()
    parser.feed(b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\none\r\n--b\r\n\r\ntwo\r\n--b--\r\n")
    parser.close()
    assert len(calls) == 3, "email changed: gatewayd/email_to_fax/parse.py expects one _new_message call per entity"


def test_feedparser_msgstack() -> None:
    parser = BytesFeedParser()
    assert isinstance(getattr(parser, "_msgstack", None), list), (
        "email changed: gatewayd/email_to_fax/parse.py (_BoundedFeedParser) reads the nesting depth "
        "from BytesFeedParser._msgstack"
    )


def test_message_payload() -> None:
    parser = BytesFeedParser()
    parser.feed(b"Content-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n")
    msg = parser.close()
    assert isinstance(msg, Message) and getattr(msg, "_payload", None) == msg.get_payload(decode=False), (
        "email changed: gatewayd/email_to_fax/parse.py reads Message._payload as get_payload(decode=False) gives it"
    )


# --- fpdf2: gatewayd/documents/cover_writer.py embeds the per-process font subset as it is


def test_fpdf2_output_producer_add_fonts() -> None:
    from fpdf.output import OutputProducer

    assert callable(getattr(OutputProducer, "_add_fonts", None)), (
        "fpdf2 changed: gatewayd/documents/cover_writer.py overrides OutputProducer._add_fonts"
    )
    params = list(inspect.signature(OutputProducer._add_fonts).parameters)
    assert params[:1] == ["self"], f"fpdf2 changed: OutputProducer._add_fonts is now {inspect.signature(OutputProducer._add_fonts)}"


def test_fpdf2_font_helpers() -> None:
    import fpdf.output as out

    for name in ("_tt_font_widths", "_build_cmap_blocks", "PDFFont", "PDFFontStream", "CIDSystemInfo"):
        assert hasattr(out, name), f"fpdf2 changed: gatewayd/documents/cover_writer.py imports fpdf.output.{name}"
    assert list(inspect.signature(out._build_cmap_blocks).parameters) == ["entries", "operator"], (
        f"fpdf2 changed: _build_cmap_blocks is now {inspect.signature(out._build_cmap_blocks)} "
        "(gatewayd/documents/cover_writer.py calls it with the bfchar entries and 'bfchar')"
    )
    assert list(inspect.signature(out._tt_font_widths).parameters) == ["font"], (
        f"fpdf2 changed: _tt_font_widths is now {inspect.signature(out._tt_font_widths)} (gatewayd/documents/cover_writer.py)"
    )


# --- fpdf2: gatewayd/documents/cover.py (_CoverFont.add_to) shares one parsed TTFFont per subset


def test_fpdf2_ttffont_state_is_what_add_to_renews() -> None:
    # add_to gives each cover a shallow copy of one parsed TTFFont and renews
    # its per-document state (i, cw, missing_glyphs, biggest_size_pt, desc,
    # subset); the rest must stay read-only. A new attribute in fpdf2 may be
    # per-document state: look at it before widening this list.
    from fpdf import FPDF
    from fpdf.fonts import SubsetMap, TTFFont

    from gatewayd.documents.cover import FONT_PATH

    assert set(TTFFont.__slots__) == {
        "i", "type", "name", "desc", "glyph_ids", "_hbfont", "sp", "ss", "up", "ut", "cw", "ttffile", "fontkey",
        "emphasis", "scale", "subset", "cmap", "ttfont", "missing_glyphs", "biggest_size_pt", "color_font",
        "unicode_range", "palette_index", "is_compressed", "is_cff", "is_cid_keyed", "is_symbol", "cff_ros",
        "collection_font_number",
    }, f"fpdf2 changed: TTFFont's attributes are now {sorted(TTFFont.__slots__)} (gatewayd/documents/cover.py, _CoverFont.add_to)"
    assert list(inspect.signature(SubsetMap).parameters) == ["font"], (
        f"fpdf2 changed: SubsetMap is now {inspect.signature(SubsetMap)} (gatewayd/documents/cover.py, _CoverFont.add_to)"
    )
    pdf = FPDF()
    pdf.add_font("DejaVu", fname=str(FONT_PATH))
    font = pdf.fonts["dejavu"]
    assert isinstance(pdf.fonts, dict) and isinstance(font, TTFFont) and font.i == 1 and font.fontkey == "dejavu", (
        "fpdf2 changed: FPDF.fonts is no longer {fontkey: TTFFont} numbered from 1 (gatewayd/documents/cover.py, _CoverFont.add_to)"
    )


# --- fpdf2: gatewayd/documents/cover_direct.py answers fpdf2's calls with fpdf2's arithmetic


def test_fpdf2_s_layout_numbers_and_font_attributes_are_what_cover_direct_copies() -> None:
    # DirectCanvas copies fpdf2's constants for unit="mm", its float
    # tolerance, its word-wrap rule (only " " breaks among the characters a
    # cover keeps) and reads a parsed TTFFont's widths, glyph ids, name and
    # descriptor. tests/documents/test_cover_direct.py compares the pixels;
    # this names what changed when they differ.
    from fpdf import FPDF
    from fpdf.line_break import BREAKING_SPACE_SYMBOLS
    from fpdf.util import FloatTolerance

    from gatewayd.documents import cover_direct
    from gatewayd.documents.cover import FONT_PATH

    pdf = FPDF(unit="mm")
    assert (pdf.k, pdf.c_margin, pdf.l_margin, pdf.line_width, pdf.font_size_pt) == (
        cover_direct._K, cover_direct._DEFAULT_MARGIN / 10.0, cover_direct._DEFAULT_MARGIN, 0.567 / cover_direct._K, 12,
    ), "fpdf2 changed: its mm scale, margins, line width or font size (gatewayd/documents/cover_direct.py)"
    assert FloatTolerance.TOLERANCE == cover_direct._TOLERANCE, "fpdf2 changed: FloatTolerance (gatewayd/documents/cover_direct.py)"
    assert [c for c in BREAKING_SPACE_SYMBOLS if c.isprintable()] == [" "], (
        "fpdf2 changed: it breaks lines at other printable characters (gatewayd/documents/cover_direct.py, _wrap)"
    )
    pdf.add_font("DejaVu", fname=str(FONT_PATH))
    font = pdf.fonts["dejavu"]
    assert isinstance(font.cw[ord("A")], int) and isinstance(font.glyph_ids[ord("A")], int) and font.name, (
        "fpdf2 changed: TTFFont.cw, glyph_ids or name (gatewayd/documents/cover_direct.py, direct_font)"
    )
    for name in ("ascent", "descent", "cap_height", "flags", "font_b_box", "italic_angle", "stem_v", "missing_width"):
        assert hasattr(font.desc, name), f"fpdf2 changed: its font descriptor has no {name} (gatewayd/documents/cover_direct.py)"


# --- aiosmtpd: gatewayd/email_to_fax/smtp.py lists only what SMTP.__init__ looks for in dir()


def test_aiosmtpd_finds_the_same_commands_mechanisms_and_hooks_through_the_short_dir() -> None:
    # FaxSMTP.__dir__ and _Decisions.__dir__ list only the "smtp_", "auth_"
    # and "handle_" names, which aiosmtpd's SMTP.__init__ looks up with dir()
    # and inspect.getmembers() for every session. What it finds must be what
    # the full dir() gives: every command, every AUTH mechanism, every hook.
    import types

    from gatewayd.email_to_fax.smtp import FaxSMTP, _Decisions

    async def make() -> FaxSMTP:
        listener = types.SimpleNamespace(sessions=set())
        listener.decisions = _Decisions(listener)  # type: ignore[arg-type]
        return FaxSMTP(listener, hostname="gw", loop=asyncio.get_running_loop())  # type: ignore[arg-type]

    session = asyncio.run(make())
    full = object.__dir__(session)
    assert set(session._smtp_methods) == {n.removeprefix("smtp_") for n in full if n.startswith("smtp_")}, (
        "aiosmtpd changed: SMTP.__init__ no longer finds every smtp_* command through dir() (gatewayd/email_to_fax/smtp.py, FaxSMTP.__dir__)"
    )
    assert {"QUIT", "DATA", "EHLO", "MAIL", "RCPT", "AUTH", "STARTTLS"} <= set(session._smtp_methods)
    own = {n.removeprefix("auth_").replace("__", "-") for n in full if n.startswith("auth_")}
    assert set(session._auth_methods) == own and {"LOGIN", "PLAIN"} <= own, (
        "aiosmtpd changed: SMTP.__init__ no longer finds the auth_* mechanisms through inspect.getmembers() (FaxSMTP.__dir__)"
    )
    hooks = {n.removeprefix("handle_") for n in object.__dir__(session.event_handler) if n.startswith("handle_")}
    assert set(session._handle_hooks) == hooks and {"EHLO", "MAIL", "RCPT"} <= hooks, (
        "aiosmtpd changed: SMTP.__init__ no longer finds the handle_* hooks through dir(handler) (_Decisions.__dir__)"
    )
