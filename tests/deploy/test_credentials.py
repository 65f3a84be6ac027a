"""One set of credential names across config.example.toml, the unit and
docs/deployment.md, and a unit that starts without the optional ones."""

from __future__ import annotations

import re

from support.deploy import REPO, doc_block

UNIT = (REPO / "systemd" / "gatewayd.service").read_text(encoding="utf-8")
EXAMPLE = (REPO / "config.example.toml").read_text(encoding="utf-8")
CREDENTIALS_DIR = "/etc/gatewayd/credentials"


def written_by_docs() -> set[str]:
    return set(re.findall(rf"> {CREDENTIALS_DIR}/([\w.-]+)", doc_block("credentials")))


def named_in_docs_config() -> set[str]:
    return set(re.findall(r'_file = "([\w.-]+)"', doc_block("credentials-config")))


def test_docs_write_the_files_their_configuration_names() -> None:
    assert named_in_docs_config() == written_by_docs() == {"provider-secret", "mail-password", "database-password"}


def test_example_names_the_same_files() -> None:
    named = set(re.findall(r'_file = "([\w.-]+)"', EXAMPLE))
    assert named, "config.example.toml shows no *_file name"
    assert named <= written_by_docs(), f"config.example.toml names {named - written_by_docs()}, which deployment.md never writes"
    assert f"{CREDENTIALS_DIR}/" in EXAMPLE


def test_unit_loads_the_directory_the_docs_write_so_absent_files_are_no_error() -> None:
    loads = re.findall(r"^LoadCredential=([^\n]*)$", UNIT, re.M)
    # One whole-directory credential: a file the administrator did not write
    # (no relay password) is simply absent; a per-file LoadCredential= whose
    # source is missing would stop the unit from starting.
    assert loads == [f"gatewayd:{CREDENTIALS_DIR}"], loads
    assert re.search(rf"install -d -m 0700 {CREDENTIALS_DIR}$", doc_block("install"), re.M)
    # The steps come in order: the credentials exist before the unit starts.
    text = (REPO / "docs" / "deployment.md").read_text(encoding="utf-8")
    assert text.index("<!-- begin:credentials -->") < text.index("<!-- begin:unit -->")


def test_the_service_finds_a_whole_directory_credential(tmp_path) -> None:
    """What systemd makes of the directory (gatewayd_<file>) is what gatewayd reads."""
    from gatewayd.config import load_config_data

    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "gatewayd_provider-secret").write_text("s3cret")
    data = {"provider": {"client_id": "app", "client_secret_file": "provider-secret"}}
    config = load_config_data(data, env={"CREDENTIALS_DIRECTORY": str(creds)}, base_dir=tmp_path)
    assert config.provider.client_secret == "s3cret"
