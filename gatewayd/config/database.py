"""``storage.database_url`` and ``storage.lease``: checked at load; the URL shown without a password (gatewayd/dburl.py).

``""`` keeps the SQLite store in ``state_dir``; a ``postgresql://`` (or
``postgres://``) URL, any libpq connection URI, selects PostgreSQL
(docs/configuration.md, ``[storage]``; docs/deployment.md). The password
belongs in ``storage.database_password`` / ``database_password_file``; one
written into the URL still works (libpq reads it) but is never printed:
every message and summary shows the URL through ``redact_url``.
"""

from __future__ import annotations

from typing import Any

from gatewayd.config.values import _Bad, _show
from gatewayd.dburl import redact_text, redact_url

POSTGRES_SCHEMES = ("postgresql", "postgres")
EXAMPLE_URL = "postgresql://gatewayd@db.example.com:5432/gatewayd"
# storage.lease: shorter would have a busy node lose its leases to a pause
# (a slow disk, a garbage collection); longer leaves a dead node's work
# waiting longer than a client's retry (docs/deployment.md).
MIN_LEASE = 5.0
MAX_LEASE = 600.0


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
