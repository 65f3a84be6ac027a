"""Messages built to stall a parser (issue 14, item 3; docs/security.md, Hostile
input): shared by tests/email_to_fax/test_too_complex.py and
bench/bench_hostile.py. Built as raw bytes by hand: the email package would
itself take seconds to write some of them.

Each vector is ``(name, raw message, expected reply prefix)``; a message
that is handled quickly instead of refused carries a small PDF so that it is
accepted (250)."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable

import pikepdf

TOO_COMPLEX = "554 5.6.0 malformed message: too complex"
ACCEPTED = "250 2.0.0"
BOUNDARY = "stall-boundary-1"


def small_pdf() -> bytes:
    pdf = pikepdf.new()
    pdf.add_blank_page(page_size=(595, 842))
    buf = io.BytesIO()
    pdf.save(buf)
    return buf.getvalue()


def _b64(data: bytes) -> str:
    text = base64.b64encode(data).decode("ascii")
    return "\r\n".join(text[i:i + 76] for i in range(0, len(text), 76))


def _fold(items: list[str], sep: str) -> str:
    return (sep + "\r\n ").join(items)


def message(*, subject: str = "Hostile", to: str = "fax@fax.example.com", html_parts: list[str] = (),  # type: ignore[assignment]
            extra_parts: int = 0, pdf: bool = True) -> bytes:
    head = (
        "From: alice@example.com\r\n"
        f"To: {to}\r\n"
        f"Subject: {subject}\r\n"
        "Date: Tue, 25 Nov 2025 10:00:00 +0300\r\n"
        "Message-ID: <stall@example.com>\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/mixed; boundary="{BOUNDARY}"\r\n\r\n'
    )
    parts = []
    for html in html_parts:
        parts.append('Content-Type: text/html; charset="us-ascii"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
                     + _b64(html.encode("ascii")) + "\r\n")
    for i in range(extra_parts):
        parts.append(f'Content-Type: text/plain; charset="us-ascii"\r\n\r\npart {i}\r\n')
    if pdf:
        parts.append('Content-Type: application/pdf\r\nContent-Disposition: attachment; filename="a.pdf"\r\n'
                     "Content-Transfer-Encoding: base64\r\n\r\n" + _b64(small_pdf()) + "\r\n")
    body = "".join(f"--{BOUNDARY}\r\n{p}" for p in parts) + f"--{BOUNDARY}--\r\n"
    return (head + body).encode("ascii")


def vectors() -> list[tuple[str, Callable[[], bytes], str]]:
    """The inputs of the issue, and a few more of the same families."""
    return [
        ("html-100k-a", lambda: message(html_parts=["<a" * 50_000]), ACCEPTED),
        ("html-100k-a-space", lambda: message(html_parts=["<a " * 33_333]), ACCEPTED),
        ("html-3x100k-a", lambda: message(html_parts=["<a" * 50_000] * 3), ACCEPTED),
        ("to-16000-addresses", lambda: message(to=_fold([f"u{i}@example.com" for i in range(16_000)], ",")), TOO_COMPLEX),
        ("subject-40000-encoded-words", lambda: message(subject=_fold(["=?utf-8?q?a?="] * 40_000, "")), TOO_COMPLEX),
        ("to-101-addresses", lambda: message(to=_fold([f"u{i}@example.com" for i in range(101)], ",")), TOO_COMPLEX),
        ("subject-51-encoded-words", lambda: message(subject=_fold(["=?utf-8?q?a?="] * 51, "")), TOO_COMPLEX),
        ("subject-8k-plain", lambda: message(subject=_fold(["word"] * 1_600, "")), TOO_COMPLEX),
        ("to-nested-comments", lambda: message(to="(" * 3000 + ")" * 3000 + " fax@fax.example.com"), TOO_COMPLEX),
        ("parts-101", lambda: message(extra_parts=101), TOO_COMPLEX),
    ]
