"""The command-line commands that have their own module; gatewayd/cli.py parses
the arguments and dispatches to them (docs/operations.md, The command line)."""
