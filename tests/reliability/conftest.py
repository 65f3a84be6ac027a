"""Fixtures for the fault-injection suite. Helpers live in rel_support.py; the
email-to-fax helpers (raw SMTP client, config writer) and the hostile corpus
are shared with tests/email_to_fax (pytest runs with --import-mode=importlib,
so those directories are put on sys.path here)."""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
for _path in (_HERE, _HERE.parent, _HERE.parent / "email_to_fax", _HERE.parent.parent / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


import pytest  # noqa: E402


@pytest.fixture(params=["stock", "fastdata"])
def data_reader(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """Run a test with the listener's own DATA reader and with the proposed
    fastdata hook (bench/fastdata_hook.py), which is undone afterwards."""
    import fastdata_hook

    if request.param == "fastdata":
        fastdata_hook.install()
    try:
        yield request.param
    finally:
        fastdata_hook.uninstall()
