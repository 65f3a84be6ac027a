"""Where the configuration and the state are when nothing names them: ``config_path`` and the state directory's default."""

from __future__ import annotations

import os
from pathlib import Path

# Where the systemd unit keeps the service (docs/deployment.md): its
# ConfigurationDirectory= and StateDirectory=. A configuration read from
# SYSTEM_CONFIG_DIR with an empty storage.state_dir and no $STATE_DIRECTORY
# (the CLI run by an administrator) uses SYSTEM_STATE_DIR, the service's state.
SYSTEM_CONFIG_DIR = Path("/etc/gatewayd")
SYSTEM_STATE_DIR = Path("/var/lib/gatewayd")
DEFAULT_CONFIG_PATH = str(SYSTEM_CONFIG_DIR / "config.toml")


def default_state_dir(env: dict[str, str], base_dir: Path) -> str:
    """The state directory when storage.state_dir is empty: $STATE_DIRECTORY, else the service's or ./state."""
    state_dir = env.get("STATE_DIRECTORY", "").split(":")[0]
    if not state_dir:
        # The service's configuration read by the CLI: the service's state.
        state_dir = str(SYSTEM_STATE_DIR) if base_dir == SYSTEM_CONFIG_DIR.absolute() else "./state"
    return state_dir


def config_path(cli_value: str | None, env: dict[str, str] | None = None) -> str:
    env = dict(os.environ) if env is None else env
    return cli_value or env.get("GATEWAYD_CONFIG") or str(SYSTEM_CONFIG_DIR / "config.toml")
