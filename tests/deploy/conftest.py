"""Tests that take the deployment docs' blocks (between <!-- begin:NAME -->
and <!-- end:NAME --> markers) and run them. Helpers live in
deploy_support.py; the service tests' helpers are shared."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "service"))
sys.path.insert(0, str(HERE))
