"""Fixtures for the foundation tests; the helpers live in foundation_support.py
(pytest runs with --import-mode=importlib, so this directory is put on
sys.path for the test modules to import them)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from foundation_support import cert_pair, restore_logging, write_config  # noqa: E402,F401
