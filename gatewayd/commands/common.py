"""What every command shares: exit codes, the user-facing ``CommandError``,
loading the configuration and opening the state directory's store
(docs/operations.md, The command line)."""

from __future__ import annotations

import argparse

from gatewayd.config import Config, ConfigError, config_path, load_config
from gatewayd.email_to_fax.policy import contact_problems
from gatewayd.runtime import store_from_config
from gatewayd.store import Store, StoreError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class CommandError(Exception):
    """A user-facing failure of a command: printed without a traceback."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def load(args: argparse.Namespace) -> Config:
    """The configuration named by ``--config`` (or its default); ``CommandError`` (exit 2) when invalid."""
    path = config_path(args.config)
    try:
        config = load_config(path)
    except ConfigError as exc:
        raise CommandError(format_problems(path, exc.problems), EXIT_USAGE) from None
    problems = contact_problems(config)
    if problems:
        raise CommandError(format_problems(path, problems), EXIT_USAGE)
    return config


def format_problems(path: str, problems: list[str]) -> str:
    """One problem per line, ``key.path: reason``, under a line naming the file."""
    if len(problems) == 1 and problems[0].startswith(f"{path}:"):
        return problems[0]  # the file itself: unreadable, not TOML
    count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
    return f"invalid configuration {path} ({count}):\n" + "\n".join(f"  {p}" for p in problems)


def open_store(config: Config) -> Store:
    """The store the configuration names, for commands that run beside the daemon (or on any node)."""
    # SQLite: no state directory, no store yet. PostgreSQL: the store is the
    # database, reachable from any machine with the configuration.
    if not config.storage.database_url and not config.state_dir.exists():
        raise CommandError(f"no state directory at {config.state_dir} (has the daemon run yet?)")
    try:
        return store_from_config(config)
    except StoreError as exc:
        raise CommandError(str(exc)) from None
