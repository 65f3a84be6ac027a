"""The command line, run by an administrator (root, no variables, no -c),
finds the configuration and the state of a service installed the documented
way: /etc/gatewayd/config.toml, secrets in /etc/gatewayd/credentials/, the
state where the unit's StateDirectory= (with DynamicUser=) puts it.

The system paths are moved into a temporary root through gatewayd/config/paths.py's
SYSTEM_CONFIG_DIR and SYSTEM_STATE_DIR (internal, not a setting)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from support.deploy import REPO
from gatewayd import cli
from gatewayd import config as config_module
from gatewayd.config import paths as config_paths
from gatewayd.store import Store


def installed(root: Path) -> tuple[Path, Path]:
    etc = root / "etc" / "gatewayd"
    (etc / "credentials").mkdir(parents=True)
    text = (REPO / "config.example.toml").read_text(encoding="utf-8")
    text = text.replace('client_secret = "CHANGE-ME-client-secret"', 'client_secret_file = "provider-secret"')
    text = text.replace("CHANGE-ME-client-id", "fax-gateway-app").replace("CHANGE-ME-", "")
    text = text.replace(config_module.EXAMPLE_PASSWORD_HASH, "$scrypt$n=16384,r=8,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
    (etc / "config.toml").write_text(text, encoding="utf-8")
    (etc / "credentials" / "provider-secret").write_text("s3cret")
    # DynamicUser=yes: /var/lib/gatewayd -> private/gatewayd
    private = root / "var" / "lib" / "private" / "gatewayd"
    private.mkdir(parents=True, mode=0o700)
    (root / "var" / "lib" / "gatewayd").symlink_to("private/gatewayd")
    return etc, root / "var" / "lib" / "gatewayd"


@pytest.fixture
def system_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    etc, state = installed(tmp_path)
    monkeypatch.setattr(config_paths, "SYSTEM_CONFIG_DIR", etc)
    monkeypatch.setattr(config_paths, "SYSTEM_STATE_DIR", state)
    for name in ("GATEWAYD_CONFIG", "CREDENTIALS_DIRECTORY", "STATE_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "root"
    home.mkdir()
    monkeypatch.chdir(home)  # ./state would be here
    return tmp_path


def test_cli_finds_the_service_state_without_variables(system_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = system_root / "var" / "lib" / "gatewayd"
    Store(state).close()  # what the daemon made at its first start
    assert cli.main(["check-config"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert f"state       {state}" in out, out
    assert cli.main(["jobs"]) == 0, capsys.readouterr().err
    assert not (system_root / "root" / "state").exists()


def test_a_configuration_elsewhere_keeps_its_own_state(system_root: Path, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "config.toml").write_text((system_root / "etc" / "gatewayd" / "config.toml").read_text(), encoding="utf-8")
    (other / "credentials").mkdir()
    (other / "credentials" / "provider-secret").write_text("s3cret")
    loaded = config_module.load_config(other / "config.toml", env={})
    assert loaded.state_dir == Path(os.getcwd()) / "state"
    loaded = config_module.load_config(other / "config.toml", env={"STATE_DIRECTORY": "/srv/x"})
    assert loaded.state_dir == Path("/srv/x")
