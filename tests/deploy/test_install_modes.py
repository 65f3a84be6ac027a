"""The owners, groups and modes docs/deployment.md and config.example.toml
tell an administrator to use work with the unit's ``DynamicUser=yes``.

Issue: the example asked for mode 0640, group ``gatewayd``; a dynamic user
has no such host group, so that file was either unreadable by the service or
the command failed. Every group a documented command names (``chown``,
``chgrp``, ``install -g``) must exist on a fresh Debian host (base-passwd's
list, or a package the docs install) or be created by a documented command;
the configuration (no secrets in it) must be readable by the service, and
the credentials root's only (docs/deployment.md, "Install").
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from support.deploy import DEPLOYMENT, REPO, doc_block

UNIT = (REPO / "systemd" / "gatewayd.service").read_text(encoding="utf-8")
EXAMPLE = (REPO / "config.example.toml").read_text(encoding="utf-8")
# The groups of a fresh Debian system: base-passwd's master list (what
# debootstrap installs).
BASE_GROUPS = Path("/usr/share/base-passwd/group.master")
# Groups the maintainer scripts of the packages deployment.md installs create.
PACKAGE_GROUPS = {"postfix": {"postfix", "postdrop"}, "dovecot-core": {"dovecot", "dovenull"}}
CONFIG = "/etc/gatewayd/config.toml"
CREDENTIALS = "/etc/gatewayd/credentials"


def shell_blocks() -> dict[str, str]:
    text = DEPLOYMENT.read_text(encoding="utf-8")
    names = re.findall(r"<!-- begin:([\w.-]+) -->\n```sh\n", text)
    assert names, "deployment.md has no marked shell block"
    return {name: doc_block(name) for name in names}


def commands() -> list[list[str]]:
    """Every documented shell command line, split like the shell does (comments dropped)."""
    out = []
    for block in shell_blocks().values():
        for line in block.replace("\\\n", " ").splitlines():
            for part in re.split(r"&&|;|\|\|", line):
                words = shlex.split(part, comments=True)
                if words:
                    out.append(words)
    return out


def fresh_debian_groups() -> set[str]:
    assert BASE_GROUPS.exists(), f"{BASE_GROUPS} not found: install the Debian package base-passwd"
    groups = {line.split(":", 1)[0] for line in BASE_GROUPS.read_text().splitlines() if line.strip()}
    installed = {w for c in commands() if c[:2] == ["apt-get", "install"] for w in c[2:] if not w.startswith("-")}
    for package, made in PACKAGE_GROUPS.items():
        if package in installed:
            groups |= made
    created = {c[-1] for c in commands() if c[0] in ("groupadd", "addgroup")}
    return groups | created


def named_groups() -> list[tuple[str, str]]:
    """(group, where) for each group a documented command or the example's header names."""
    out = []
    for c in commands():
        if c[0] == "chown":
            owner = next(w for w in c[1:] if not w.startswith("-"))
            if ":" in owner and owner.split(":", 1)[1]:
                out.append((owner.split(":", 1)[1], shlex.join(c)))
        elif c[0] == "chgrp":
            out.append((next(w for w in c[1:] if not w.startswith("-")), shlex.join(c)))
        elif c[0] == "install":
            for i, w in enumerate(c):
                if w == "-g":
                    out.append((c[i + 1], shlex.join(c)))
                elif w.startswith("--group="):
                    out.append((w.split("=", 1)[1], shlex.join(c)))
    for mode, group in re.findall(r"mode (0[0-7]{3})(?:, owner \w+)?, group `?([\w-]+)`?", example_header()):
        out.append((group, f"config.example.toml: mode {mode}, group {group}"))
    return out


def example_header() -> str:
    lines = []
    for line in EXAMPLE.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# "))
    return " ".join(lines)


def installed_mode(path: str) -> int:
    """The ``-m`` of the documented ``install`` command that makes ``path``."""
    for c in commands():
        if c[0] == "install" and c[-1] == path and "-m" in c:
            return int(c[c.index("-m") + 1], 8)
    raise AssertionError(f"deployment.md installs no {path} with a mode")


def test_every_named_group_exists_on_a_fresh_debian_host() -> None:
    assert "DynamicUser=yes" in UNIT
    known = fresh_debian_groups()
    missing = [(group, where) for group, where in named_groups() if group not in known]
    assert not missing, f"groups no fresh Debian host has and no documented command creates: {missing}"


def test_the_example_says_the_mode_the_docs_install() -> None:
    header = example_header()
    said = re.findall(r"mode (0[0-7]{3})", header)
    assert said, "config.example.toml's header names no mode for the installed file"
    assert {int(m, 8) for m in said} == {installed_mode(CONFIG)}, (said, oct(installed_mode(CONFIG)))


def test_the_config_is_readable_by_the_service_and_the_credentials_by_root_only() -> None:
    # A dynamic user is in no host group: only the "other" bits let it read
    # the configuration (which holds no secret: deployment.md says so).
    assert installed_mode(CONFIG) & 0o004, oct(installed_mode(CONFIG))
    assert installed_mode(CONFIG) & 0o022 == 0, oct(installed_mode(CONFIG))
    assert "no secret" in DEPLOYMENT.read_text(encoding="utf-8")
    # systemd copies the credentials for the service (LoadCredential=): the
    # directory stays root's alone, as the docs say ("mode 0700, root only").
    assert installed_mode(CREDENTIALS) == 0o700, oct(installed_mode(CREDENTIALS))
    assert f"LoadCredential=gatewayd:{CREDENTIALS}" in UNIT
    chmods = [c for c in commands() if c[0] == "chmod" and any(w.startswith(CREDENTIALS) for w in c)]
    assert chmods, "deployment.md sets no mode on the credential files"
    for c in chmods:
        assert int(c[1], 8) & 0o077 == 0, f"credential files readable by others: {shlex.join(c)}"
