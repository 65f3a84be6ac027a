"""Fixtures for the IMAP intake tests: a real Dovecot on 127.0.0.1 and the
configuration pointing at it. Helpers live in imap_support.py (pytest runs
with --import-mode=importlib, so this directory is put on sys.path; the
helpers are never imported as ``conftest``, a name every test directory has)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

from imap_support import Dovecot, config_data, load  # noqa: E402

from gatewayd.config import Config  # noqa: E402


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    server = Dovecot.create()
    server.start()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture
def make_config(tmp_path: Path, dovecot: Dovecot) -> Any:
    def make(**kw: Any) -> Config:
        overrides = kw.pop("overrides", None) or {}
        data = config_data(dovecot, tmp_path / "state", **kw)
        for section, values in overrides.items():
            if isinstance(values, dict):
                data.setdefault(section, {}).update(values)
            else:
                data[section] = values
        return load(tmp_path, data)

    return make
