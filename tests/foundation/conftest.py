"""Fixtures for the foundation tests; the helpers live in
tests/support/foundation.py."""

from __future__ import annotations

from support.foundation import cert_pair, restore_logging, write_config  # noqa: F401
