"""``python -m gatewayd``: the same command line as ``gatewayd`` (gatewayd/cli.py)."""

from gatewayd.cli import main

raise SystemExit(main())
