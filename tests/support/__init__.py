"""Helpers shared by the tests: one way to run a gateway (gateway.py in the
test's loop, process.py as ``python -m gatewayd run``), ports (ports.py), the
hostile corpus, and each test area's own helpers (e2f.py, imap.py, ...).

pytest puts tests/ on sys.path (``pythonpath`` in pyproject.toml), so tests
import ``from support.e2f import ...``.
"""
