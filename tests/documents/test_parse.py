"""parse_message: what is taken from a message, and what is refused."""

from __future__ import annotations

import base64

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatewayd.email_to_fax.errors import (
    AttachmentRejected,
    BareLineFeed,
    IntakeRefused,
    MalformedMessage,
)
from gatewayd.email_to_fax.bodytext import html_to_text
from gatewayd.email_to_fax.parse import (
    MAX_FILENAME_CHARS,
    UnsupportedPart,
    office_as_unsupported,
    parse_message,
    safe_filename,
)
from gatewayd.filekinds import fax_file_kind, sniff_kind
from support.corpus import (
    _crlf,
    _TOP,
    good_message,
    make_docx_like,
    make_image,
    make_pdf,
    multipart,
    part,
    text_part,
)

PDF = make_pdf(1)
JPEG = make_image("JPEG", (64, 48))
PNG = make_image("PNG", (64, 48))


def simple(body: str, *, headers: str = "", name: str = "t") -> bytes:
    return _crlf(_TOP.format(subject="s", name=name) + headers + body)


# ------------------------------------------------------------------ headers


def test_headers_are_decoded_and_addresses_collected() -> None:
    raw = _crlf(
        "From: =?utf-8?b?0JjQstCw0L0g0J/QtdGC0YDQvtCy?= <Ivan.Petrov@Example.COM>\n"
        "To: +7-812-309-26-31@Fax.Example.com, Someone <other@example.org>\n"
        "Cc: fax+4951234567@example.com\n"
        "Delivered-To: FAX+78123092631@example.com\n"
        "X-Original-To: fax+78123092631@example.com\n"
        "Subject: =?utf-8?q?=D0=A1=D1=87=D1=91=D1=82?= for\n  June\n"
        "Date: Mon, 02 Jun 2025 10:00:00 +0300\n"
        "Message-ID: <abc.123@example.com>\n"
        "Authentication-Results: mx.example.com;\n spf=pass smtp.mailfrom=example.com;\n dkim=pass header.d=example.com\n"
        "Authentication-Results: other.example.net; dmarc=fail\n"
        "Content-Type: text/plain\n\nhello\n"
    )
    msg = parse_message(raw)
    assert msg.subject == "Счёт for June"
    assert msg.from_addr == "Ivan.Petrov@Example.COM"
    assert msg.from_display == "Иван Петров"
    assert msg.message_id == "<abc.123@example.com>"
    assert msg.date == "Mon, 02 Jun 2025 10:00:00 +0300"
    assert msg.header_addresses["To"] == ("+7-812-309-26-31@fax.example.com", "other@example.org")
    assert msg.header_addresses["Cc"] == ("fax+4951234567@example.com",)
    assert msg.header_addresses["Delivered-To"] == ("fax+78123092631@example.com",)
    assert msg.header_addresses["X-Original-To"] == ("fax+78123092631@example.com",)
    assert msg.authentication_results == (
        "mx.example.com; spf=pass smtp.mailfrom=example.com; dkim=pass header.d=example.com",
        "other.example.net; dmarc=fail",
    )
    assert msg.body_text == "hello"


def test_missing_headers_are_none_or_empty() -> None:
    msg = parse_message(b"Content-Type: text/plain\r\n\r\nhi\r\n")
    assert (msg.subject, msg.message_id, msg.from_addr, msg.from_display, msg.date) == ("", None, None, None, None)
    assert msg.header_addresses["To"] == ()
    assert msg.authentication_results == ()


def test_several_from_addresses_give_no_sender() -> None:
    raw = _crlf("From: a@example.com, b@example.com\nSubject: x\n\nhi\n")
    assert parse_message(raw).from_addr is None


def test_raw_utf8_headers_are_read_as_utf8() -> None:
    raw = _crlf("From: Иван <ivan@example.com>\nSubject: Счёт на оплату\n\nтекст\n")
    msg = parse_message(raw)
    assert msg.subject == "Счёт на оплату"
    assert msg.from_display == "Иван"


def test_encoded_line_breaks_in_subject_are_flattened() -> None:
    raw = _crlf("From: a@example.com\nSubject: =?UTF-8?Q?Hello=0D=0ABcc:_x@example.com?=\n\nhi\n")
    assert parse_message(raw).subject == "Hello Bcc: x@example.com"


# ------------------------------------------------------------------ attachments


def test_attachments_keep_their_order_and_kind_comes_from_content() -> None:
    raw = good_message([
        ("b-second.png", "image/png", PNG),
        ("a-first.pdf", "application/pdf", PDF),
        ("really-a-jpeg.pdf", "application/pdf", JPEG),  # declared PDF, named PDF: content wins
        ("c.bin", "application/octet-stream", PDF),
    ], body="see attached")
    msg = parse_message(raw)
    assert [(a.filename, a.kind, a.declared_type) for a in msg.attachments] == [
        ("b-second.png", "png", "image/png"),
        ("a-first.pdf", "pdf", "application/pdf"),
        ("really-a-jpeg.pdf", "jpeg", "application/pdf"),
        ("c.bin", "pdf", "application/octet-stream"),
    ]
    assert msg.attachments[1].data == PDF
    assert msg.unsupported == ()


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"%PDF-1.7\n...", "pdf"),
        (b"\r\n\r\njunk%PDF-1.4\n", "pdf"),
        (b"II*\x00\x08\x00\x00\x00", "tiff"),
        (b"MM\x00*\x00\x00\x00\x08", "tiff"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "jpeg"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "png"),
        (b"GIF89a\x01\x00\x01\x00", "gif"),
        (b"RIFF\x10\x00\x00\x00WEBPVP8 ", "webp"),
        (b"BM" + b"\x00" * 12 + b"\x28\x00\x00\x00", "bmp"),
        (b"BM and some text", None),
        (b"PK\x03\x04", None),
        (b"", None),
    ],
)
def test_sniff_kind(data: bytes, kind: str | None) -> None:
    assert sniff_kind(data) == kind


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"%PDF-1.7\n...", "pdf"),
        (b"\r\n\r\njunk%PDF-1.4\n", "unknown"),  # the provider's files start with the header
        (b"II*\x00\x08\x00\x00\x00", "tiff"),
        (b"MM\x00*\x00\x00\x00\x08", "tiff"),
        (b"II+\x00\x08\x00\x00\x00", "unknown"),  # BigTIFF: not what a fax provider sends
        (b"II*\x00" + b"\x00" * 20 + b"%PDF-1.4", "tiff"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "unknown"),
        (b"", "unknown"),
    ],
)
def test_fax_file_kind_is_stricter_than_sniff_kind(data: bytes, kind: str) -> None:
    assert fax_file_kind(data) == kind


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("../../etc/passwd.pdf", "passwd.pdf"),
        ("C:\\Windows\\system32\\x.pdf", "x.pdf"),
        ("inv\u202eoice\x07\x1b[31m.pdf", "invoice[31m.pdf"),
        ("  ..hidden.pdf  ", "hidden.pdf"),
        ("..", "fallback.pdf"),
        ("/", "fallback.pdf"),
        ("", "fallback.pdf"),
        (None, "fallback.pdf"),
        ("a\r\nb.pdf", "a b.pdf"),
        ("Счёт № 1.pdf", "Счёт № 1.pdf"),
    ],
)
def test_safe_filename(name: str | None, expected: str) -> None:
    assert safe_filename(name, "fallback.pdf") == expected


def test_long_filenames_are_cut_keeping_the_extension() -> None:
    name = safe_filename("x" * 900 + ".pdf", "f")
    assert len(name) <= MAX_FILENAME_CHARS
    assert name.endswith(".pdf")


def test_encoded_filenames_are_decoded() -> None:
    raw = multipart("names", [
        part(PDF, "application/pdf", filename_param="filename*=utf-8''%D0%A1%D1%87%D1%91%D1%82%20%E2%84%96%201.pdf"),
        part(PDF, "application/pdf", filename="=?UTF-8?B?0KHRh9GR0YIucGRm?="),
        part(PDF, "application/pdf", filename_param="filename*0*=utf-8''%D0%90%D0%BA%D1%82; filename*1=.pdf"),
    ])
    assert [a.filename for a in parse_message(raw).attachments] == ["Счёт № 1.pdf", "Счёт.pdf", "Акт.pdf"]


def test_missing_names_are_made_up_from_the_content() -> None:
    raw = multipart("unnamed", [
        text_part("hello"),
        part(JPEG, "application/octet-stream", disposition="attachment"),
        part(PDF, "application/octet-stream", disposition=None),
    ])
    assert [a.filename for a in parse_message(raw).attachments] == ["attachment-1.jpg", "attachment-2.pdf"]


def test_which_parts_are_candidates() -> None:
    raw = multipart("candidates", [
        "Content-Type: multipart/alternative; boundary=\"alt\"\n\n"
        "--alt\n" + text_part("Plain body.")
        + "--alt\nContent-Type: multipart/related; boundary=\"rel\"\n\n"
        "--rel\n" + text_part('<p>HTML body</p><img src="cid:logo@x">', "html")
        + "--rel\n" + part(PNG, "image/png", filename="image001.png", disposition="inline",
                           headers="Content-ID: <logo@x>\n")
        + "--rel--\n--alt--\n",
        # Apple Mail: an inline PDF with a name and no Content-ID is faxed.
        part(PDF, "application/pdf", filename="inline.pdf", disposition="inline"),
        # Many clients: no disposition, but a name.
        part(JPEG, "image/jpeg", filename="photo.jpg", disposition=None),
        # Explicit attachment wins over a Content-ID.
        part(PNG, "image/png", filename="chart.png", headers="Content-ID: <chart@x>\n"),
        # Not supported: named, not dropped.
        part(make_docx_like(), "application/msword", filename="letter.doc"),
        "Content-Type: message/rfc822\nContent-Disposition: attachment\n\nFrom: x@y\nSubject: in\n\nbody\n",
        part(b"BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n", "text/calendar", disposition=None),
    ])
    msg = parse_message(raw)
    # letter.doc is a Word document by its bytes: LibreOffice's to convert (tests/office).
    assert [(a.filename, a.kind) for a in msg.attachments] == [
        ("inline.pdf", "pdf"), ("photo.jpg", "jpeg"), ("chart.png", "png"), ("letter.doc", "docx")]
    assert msg.skipped_inline == ("image001.png",)
    assert [(u.filename, u.declared_type, u.reason) for u in msg.unsupported] == [
        ("attachment-5.eml", "message/rfc822", "unsupported type message/rfc822"),
        ("attachment-6.ics", "text/calendar", "unsupported type text/calendar"),
    ]
    assert msg.body_text == "Plain body."
    # Where LibreOffice is off, it is unsupported as before.
    assert office_as_unsupported(msg).unsupported[-1] == UnsupportedPart("letter.doc", "application/msword", "unsupported type application/msword")


def test_signature_of_a_signed_message_is_not_an_attachment() -> None:
    raw = multipart("signed", [
        "Content-Type: multipart/mixed; boundary=\"in\"\n\n--in\n" + text_part("signed text")
        + "--in\n" + part(PDF, "application/pdf", filename="a.pdf") + "--in--\n",
        part(b"0\x82fake", "application/pkcs7-signature", filename="smime.p7s"),
    ], subtype='signed; protocol="application/pkcs7-signature"; micalg=sha-256')
    msg = parse_message(raw)
    assert [a.filename for a in msg.attachments] == ["a.pdf"]
    assert msg.unsupported == ()


def test_empty_attachment_is_refused() -> None:
    raw = multipart("empty", [text_part("x"), part(b"", "application/pdf", filename="empty.pdf")])
    with pytest.raises(AttachmentRejected) as caught:
        parse_message(raw)
    assert caught.value.reply == "554 5.6.0 empty.pdf: empty file"


@pytest.mark.parametrize(
    ("content_type", "filename", "why"),
    [
        ("application/pdf", "x.pdf", "corrupt PDF"),
        ("application/octet-stream", "x.pdf", "corrupt PDF"),
        ("image/tiff", "x.bin", "unreadable TIFF"),
        ("image/jpeg", "x.jpg", "corrupt image"),
        ("application/octet-stream", "x.webp", "corrupt image"),
    ],
)
def test_declared_document_that_is_not_one_is_refused(content_type: str, filename: str, why: str) -> None:
    raw = multipart("fake", [part(b"plain text, not a document\r\n", content_type, filename=filename)])
    with pytest.raises(AttachmentRejected) as caught:
        parse_message(raw)
    assert (caught.value.filename, caught.value.why) == (filename, why)


def _plain_zip() -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("notes/readme.txt", "just a zip")
    return buf.getvalue()


def test_undeclared_unknown_content_is_unsupported() -> None:
    raw = multipart("zip", [part(_plain_zip(), "application/zip", filename="a.zip")])
    msg = parse_message(raw)
    assert msg.attachments == ()
    assert msg.unsupported[0].reason == "unsupported type application/zip"


# ------------------------------------------------------------------ body text


def test_plain_text_is_preferred_over_html() -> None:
    raw = good_message(body="Plain version.", html_body="<p>HTML version.</p>")
    assert parse_message(raw).body_text == "Plain version."


def test_html_only_body_is_reduced_to_text() -> None:
    html = (
        "<html><head><title>T</title><style>p {color: red}</style><script>alert(1)</script></head>"
        "<body><p>Dear&nbsp;Sir &amp; Madam,</p><p>line one<br>line two</p>"
        "<ul><li>first</li><li>second</li></ul>"
        "<div class=\"gmail_signature\">-- <br>Sig Nature</div>"
        "<div class=\"gmail_quote\">On Mon someone wrote:<blockquote>old text</blockquote></div>"
        "</body></html>"
    )
    raw = multipart("html", [text_part(html, "html")])
    assert parse_message(raw).body_text == "Dear Sir & Madam,\n\nline one\nline two\n\n- first\n- second"


def test_outlook_html_reply_is_cut_at_the_reply_header() -> None:
    html = (
        "<div>Please fax the contract.</div><div id=\"Signature\">John Doe<br>ACME</div>"
        "<hr><div id=\"divRplyFwdMsg\"><b>From:</b> Boss</div><div>Original text</div>"
    )
    assert html_to_text(html) == "Please fax the contract."


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("Please fax this.\n\nOn Mon, 2 Jun 2025 at 10:00, Bob <b@x.com> wrote:\n> old\n> older\n",
         "Please fax this."),
        ("Please fax this.\n\nOn Mon, 2 Jun 2025 at 10:00 AM John Doe <\njohn@example.com> wrote:\n\n> old\n",
         "Please fax this."),
        ("Top text.\n\nAm 02.06.2025 um 10:00 schrieb Hans:\n> alt\n", "Top text."),
        ("Текст.\n\n2 июня 2025 г., в 10:00, Иван написал(а):\n> старое\n", "Текст."),
        ("> question one\nanswer one\n> question two\nanswer two\n", "answer one\nanswer two"),
        ("Body.\n-- \nJohn Doe\nACME Corp\n", "Body."),
        ("Body.\n--\nJohn Doe\n", "Body."),
        ("Body.\n\n-----Original Message-----\nFrom: x\nSent: y\n\nold\n", "Body."),
        ("Body.\n\n________________________________\nFrom: Boss\nSent: Monday\n\nold\n", "Body."),
        ("He wrote: fine\nthanks\n", "He wrote: fine\nthanks"),
    ],
)
def test_quotes_and_signatures_are_removed(body: str, expected: str) -> None:
    assert parse_message(good_message(body=body)).body_text == expected


def test_apple_mail_text_around_an_inline_pdf_is_joined() -> None:
    raw = multipart("apple", [text_part("Here it is:"), part(PDF, "application/pdf", filename="a.pdf", disposition="inline"),
                              text_part("Thanks!")])
    assert parse_message(raw).body_text == "Here it is:\n\nThanks!"


def test_text_encodings_are_decoded() -> None:
    raw = _crlf(_TOP.format(subject="qp", name="qp") + "Content-Type: text/plain; charset=koi8-r\n"
                "Content-Transfer-Encoding: quoted-printable\n\n=F0=D2=C9=D7=C5=D4 soft=\nbreak\n")
    assert parse_message(raw).body_text == "Привет softbreak"
    raw = _crlf(_TOP.format(subject="x", name="x") + "Content-Type: text/plain; charset=x-unknown\n"
                "Content-Transfer-Encoding: base64\n\n" + base64.b64encode("Grüße".encode()).decode() + "\n")
    assert parse_message(raw).body_text == "Grüße"


# ------------------------------------------------------------------ refusals


def test_bare_lf_is_refused() -> None:
    with pytest.raises(BareLineFeed) as caught:
        parse_message(b"Subject: x\nFrom: a@b\n\nbody\n")
    assert caught.value.reply == "554 5.6.0 bare LF line endings not allowed"
    with pytest.raises(BareLineFeed):
        parse_message(b"Subject: x\r\n\r\nline\r\nbare\nline\r\n")


@pytest.mark.parametrize("header", ["Subject", "From", "To", "Cc", "Date", "Message-ID", "MIME-Version",
                                    "Content-Type", "Content-Transfer-Encoding", "Reply-To"])
def test_duplicate_top_level_headers_are_refused(header: str) -> None:
    values = {"From": "x@example.com", "To": "y@example.com", "Cc": "c@example.com", "Date": "Tue, 03 Jun 2025 10:00:00 +0000",
              "Message-ID": "<x@y>", "MIME-Version": "1.0", "Content-Type": "text/plain",
              "Content-Transfer-Encoding": "7bit", "Reply-To": "r@example.com"}
    first = "" if header in _TOP else f"{header}: {values.get(header, 'one')}\n"
    raw = _crlf(_TOP.format(subject="one", name="dup") + first + f"{header}: {values.get(header, 'two')}\n\nhi\n")
    with pytest.raises(MalformedMessage) as caught:
        parse_message(raw)
    assert caught.value.why == f"duplicate {header} header"


def test_duplicate_header_names_match_case_insensitively() -> None:
    raw = _crlf("From: a@example.com\nsubject: one\nSUBJECT: two\n\nhi\n")
    with pytest.raises(MalformedMessage, match="duplicate Subject header"):
        parse_message(raw)


def test_duplicate_headers_in_a_part_name_the_part() -> None:
    raw = multipart("dup-part", [text_part("x"), part(PDF, "application/pdf", filename="a.pdf",
                                                      headers="Content-Type: image/png\n")])
    with pytest.raises(MalformedMessage) as caught:
        parse_message(raw)
    assert caught.value.why == "duplicate Content-Type header in part 2"


def test_repeatable_headers_are_fine() -> None:
    raw = _crlf("Received: a\nReceived: b\nDelivered-To: a@x.com\nDelivered-To: b@x.com\nFrom: a@example.com\n\nhi\n")
    assert parse_message(raw).header_addresses["Delivered-To"] == ("a@x.com", "b@x.com")


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (multipart("b64", [text_part("x"), part(PDF, "application/pdf", filename="a.pdf", encoded="JVBERi0x*LjQK")]),
         "invalid base64 in part 2"),
        (multipart("pad", [text_part("x"), part(PDF, "application/pdf", filename="a.pdf", encoded="JVBERi0xLjQ")]),
         "invalid base64 in part 2"),
        (multipart("8bit", [text_part("x"), part(PDF, "application/pdf", filename="a.pdf", encoded="JVBERi0xLjQKЖ")]),
         "invalid base64 in part 2"),
        (simple("Content-Type: text/plain\nContent-Transfer-Encoding: base64\n\nnot base64!\n"),
         "invalid base64 in message"),
        (simple("Content-Type: multipart/mixed; boundary=\"b\"\n\n--other\n\nx\n--other--\n"), "missing MIME boundary"),
        (simple("Content-Type: multipart/mixed\n\n--b\n\nx\n--b--\n"), "multipart without boundary parameter"),
        (simple("Content-Type: multipart/mixed; boundary=\"b\"\n\n--b\nContent-Type: text/plain\n\nx\n"),
         "missing closing MIME boundary"),
        (simple("Content-Type: text\n\nx\n"), "invalid Content-Type header"),
        (simple("Content-Type: text/plain\nContent-Transfer-Encoding: x-uuencode\n\nx\n"),
         "unknown Content-Transfer-Encoding"),
        (_crlf(" continuation first\nFrom: a@example.com\n\nx\n"), "header block starts with a continuation line"),
    ],
)
def test_parser_defects_are_refused_precisely(raw: bytes, why: str) -> None:
    with pytest.raises(MalformedMessage) as caught:
        parse_message(raw)
    assert caught.value.why == why
    assert caught.value.reply == f"554 5.6.0 malformed message: {why}"


def _nested(levels: int) -> bytes:
    opening = "".join(f"Content-Type: multipart/mixed; boundary=\"b{i}\"\n\n--b{i}\n" for i in range(levels))
    closing = "".join(f"--b{i}--\n" for i in reversed(range(levels)))
    return _crlf("From: a@example.com\n" + opening + "Content-Type: text/plain\n\nhello\n" + closing)


def test_nesting_limit() -> None:
    # The message is the outermost multipart (depth 0): the text part of
    # _nested(n) sits at depth n.
    assert parse_message(_nested(10), max_depth=10).body_text == "hello"
    with pytest.raises(MalformedMessage, match="too deeply nested"):
        parse_message(_nested(11), max_depth=10)
    with pytest.raises(MalformedMessage, match="too deeply nested"):
        parse_message(_nested(5000), max_depth=10, max_parts=100_000)


def test_part_limit() -> None:
    def flat(parts: int) -> bytes:
        return multipart("flat", [text_part(f"p{i}") for i in range(parts)])

    assert parse_message(flat(99), max_parts=100).body_text.startswith("p0")  # 99 parts + the message
    with pytest.raises(MalformedMessage, match="too complex"):
        parse_message(flat(100), max_parts=100)


# ------------------------------------------------------------------ fuzzing


def _only_intake_refusals(raw: bytes) -> None:
    try:
        parse_message(raw)
    except IntakeRefused:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_raise_only_intake_refusals(raw: bytes) -> None:
    _only_intake_refusals(raw)
    _only_intake_refusals(raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))


_SEED = multipart("seed", [
    text_part("Hello\n> quoted\n-- \nsig"),
    part(PDF[:200], "application/pdf", filename="=?UTF-8?B?0KHRh9GR0YIucGRm?="),
    part(PNG[:100], "image/png", filename_param="filename*=utf-8''%D0%90.png", headers="Content-ID: <x@y>\n"),
])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(_SEED)), st.integers(0, 40),
                          st.sampled_from([b"", b"\r\n", b"--", b"=", b";", b"\"", b"\r\n\r\n", b"=?utf-8?q?=FF?=",
                                           b"Content-Type: multipart/mixed; boundary=\"=_corpus_boundary\"\r\n",
                                           b"\x00", b"\xff\xfe", b"*"])), max_size=6))
def test_mangled_messages_raise_only_intake_refusals(edits: list[tuple[int, int, bytes]]) -> None:
    raw = bytearray(_SEED)
    for position, cut, insert in edits:
        raw[position:position + cut] = insert
    _only_intake_refusals(bytes(raw))


def test_a_message_that_is_only_a_document() -> None:
    # Some scanners send the file as the whole message body.
    raw = simple("Content-Type: application/pdf\nContent-Transfer-Encoding: base64\n\n"
                 + base64.encodebytes(PDF).decode().replace("\n", "\r\n"))
    msg = parse_message(raw)
    assert [(a.filename, a.kind) for a in msg.attachments] == [("attachment-1.pdf", "pdf")]
    assert msg.body_text == ""
