"""``storage.database_url`` and ``storage.lease``: checked at load; the URL shown without a password.

``""`` keeps the SQLite store in ``state_dir``; a ``postgresql://`` (or
``postgres://``) URL, any libpq connection URI, selects PostgreSQL
(docs/configuration.md, ``[storage]``; docs/deployment.md). The password
belongs in ``storage.database_password`` / ``database_password_file``; one
written into the URL still works (libpq reads it) but is never printed:
every message and summary shows the URL through ``redact_url``.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

from gatewayd.config.values import _Bad, _show

POSTGRES_SCHEMES = ("postgresql", "postgres")
REDACTED = "***"
_QUERY_PASSWORD_RE = re.compile(r"(?i)(^|&)(password=)([^&]*)")
EXAMPLE_URL = "postgresql://gatewayd@db.example.com:5432/gatewayd"
# storage.lease: shorter would have a busy node lose its leases to a pause
# (a slow disk, a garbage collection); longer leaves a dead node's work
# waiting longer than a client's retry (docs/deployment.md).
MIN_LEASE = 5.0
MAX_LEASE = 600.0


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


def parse_database_url(v: Any) -> str:
    """``""`` or a PostgreSQL connection URI that libpq accepts."""
    if not isinstance(v, str):
        raise _Bad(f'expected "" (SQLite in state_dir) or a PostgreSQL URL such as "{EXAMPLE_URL}", got {_show(v)}')
    if v == "":
        return v
    shown = _show(redact_url(v))
    if any(c.isspace() or ord(c) < 32 for c in v):
        raise _Bad(f"control characters and spaces are not allowed (percent-encode them), got {shown}")
    scheme = v.split(":", 1)[0] if "://" in v else ""  # lower case: libpq takes no other
    if scheme not in POSTGRES_SCHEMES:
        raise _Bad(f'expected "" (SQLite in state_dir) or a postgresql:// URL such as "{EXAMPLE_URL}", got {shown}')
    # libpq's own parser (through psycopg): a bad port or an unknown
    # parameter is found at load, not at the first connection.
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(v)
    except ProgrammingError as exc:
        raise _Bad(f"not a valid PostgreSQL URL ({redact_text(str(exc), v)}), got {shown}") from None
    for port in str(params.get("port", "")).split(","):
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise _Bad(f"expected ports 1-65535 in the URL, got {shown}")
    return v
