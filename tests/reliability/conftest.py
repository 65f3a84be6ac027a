"""Setup for the fault-injection suite. Helpers live in
tests/support/reliability.py; the email-to-fax helpers (raw SMTP client,
config writer) and the hostile corpus are shared with tests/email_to_fax.

``backend``: the tests about the queue's behaviour run once on SQLite and
once on PostgreSQL (issue 17; tests/support/backends.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.backends import BACKENDS, Backend, backend_for


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Where the daemon's queue lives; its state directory is ``tmp_path / "state"`` either way."""
    yield from backend_for(request, request.param, tmp_path / "state")
