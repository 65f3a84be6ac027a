"""Fixtures for the IMAP intake tests: a real Dovecot on 127.0.0.1 and the
configuration pointing at it. Helpers live in tests/support/imap.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


from support.imap import Dovecot, config_data, load

from gatewayd.config import Config


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
