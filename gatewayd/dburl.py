"""A database URL shown without its passwords: one redaction for the configuration's messages and the store's.

A leaf (no gatewayd imports): gatewayd/config/ checks and shows
``storage.database_url``, gatewayd/store/postgres.py names the database it
talks to, and neither may import the other.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

__all__ = ["REDACTED", "redact_text", "redact_url", "url_passwords"]

REDACTED = "***"
_QUERY_PASSWORD_RE = re.compile(r"(?i)(^|&)(password=)([^&]*)")


def _userinfo_and_query(url: str) -> tuple[str, str, str, str]:
    """(before the user info's password, that password, after it, the query) of ``url``.

    By hand, not urllib: a malformed URL (an unclosed "[", a "/" in the
    password) must still be redacted, and redacting too much is harmless.
    The authority runs to the first "?" or "#"; the user info to its last "@".
    """
    scheme, sep, rest = url.partition("://")
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    authority, tail = rest[:cut], rest[cut:]
    query = tail[1:].split("#", 1)[0] if tail.startswith("?") else ""
    userinfo, at, hosts = authority.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url, "", "", query
    user, _, password = userinfo.partition(":")
    return f"{scheme}{sep}{user}:", password, f"@{hosts}{tail}", query


def url_passwords(url: str) -> list[str]:
    """The passwords written in ``url`` (user info, ``password=`` parameter), as written and decoded."""
    _, password, _, query = _userinfo_and_query(url)
    found = [p for p in [password, *(m.group(3) for m in _QUERY_PASSWORD_RE.finditer(query))] if p]
    return found + [unquote(p) for p in found if unquote(p) != p]


def redact_url(url: str) -> str:
    """``url`` with every password in it replaced by ``***``: the form any message shows."""
    head, password, tail, _ = _userinfo_and_query(url)
    if password:
        url = f"{head}{REDACTED}{tail}"
    base, q, rest = url.partition("?")
    if not q:
        return url
    query, h, fragment = rest.partition("#")
    query = _QUERY_PASSWORD_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", query)
    return f"{base}?{query}{h}{fragment}"


def redact_text(text: str, url: str) -> str:
    """``text`` (a libpq message about ``url``) with the URL's passwords replaced by ``***``."""
    for password in sorted(url_passwords(url), key=len, reverse=True):
        text = text.replace(password, REDACTED)
    return text
