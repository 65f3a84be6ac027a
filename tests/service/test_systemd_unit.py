"""systemd/gatewayd.service: verified by systemd-analyze, and its hardening kept."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from support.service import REPO

UNIT = REPO / "systemd" / "gatewayd.service"


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    # Required, not skipped: `make test` installs the systemd package (TEST_DEBS).
    assert analyze, "systemd-analyze is not installed (Debian package: systemd); this test needs it"
    # The unit as shipped, but starting a binary that exists here.
    gatewayd = Path(sys.executable).with_name("gatewayd")
    assert gatewayd.exists(), f"{gatewayd}: the console script is not installed (pip install -e .)"
    text = UNIT.read_text(encoding="utf-8")
    assert text.count("ExecStart=/usr/local/bin/gatewayd ") == 1
    unit = tmp_path / "gatewayd.service"
    unit.write_text(text.replace("ExecStart=/usr/local/bin/gatewayd ", f"ExecStart={gatewayd} "), encoding="utf-8")
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, output
    # Warnings (unknown keys, bad values) do not change the exit code: none may name our unit.
    ours = [line for line in output.splitlines() if "gatewayd.service" in line or str(unit) in line]
    assert ours == [], output


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a typo and a missing binary are reported."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is not installed (Debian package: systemd)"
    unit = tmp_path / "gatewayd.service"
    unit.write_text(UNIT.read_text(encoding="utf-8").replace("UMask=0077", "UMask=0077\nProtectSytem=strict"), encoding="utf-8")
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert "ProtectSytem" in result.stdout + result.stderr


def test_unit_keeps_its_hardening() -> None:
    d = directives(UNIT.read_text(encoding="utf-8"))

    def one(key: str) -> str:
        assert key in d, f"{key}= missing"
        assert len(d[key]) == 1, f"{key}= given {len(d[key])} times"
        return d[key][0]

    assert one("Type") == "notify"
    assert one("NotifyAccess") == "main"
    assert re.fullmatch(r"\d+s", one("WatchdogSec")), d["WatchdogSec"]
    assert one("Restart") == "on-failure"
    assert one("ExecStart").startswith("/usr/local/bin/gatewayd run")
    assert one("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one("DynamicUser") == "yes"
    assert one("StateDirectory") == "gatewayd"
    assert one("ConfigurationDirectory") == "gatewayd"
    # The whole directory: absent optional secrets are no error (docs/deployment.md).
    assert d.get("LoadCredential") == ["gatewayd:/etc/gatewayd/credentials"], d.get("LoadCredential")
    assert one("ProtectSystem") == "strict"
    assert one("NoNewPrivileges") == "yes"
    assert one("RestrictAddressFamilies").split() == ["AF_UNIX", "AF_INET", "AF_INET6"]
    assert one("SystemCallFilter") == "@system-service"
    # Behind Postfix on 2525: no capability at all (docs/deployment.md).
    assert one("CapabilityBoundingSet") == ""
    assert "AmbientCapabilities" not in d
    assert one("UMask") == "0077"
    for key in ("ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables", "ProtectKernelModules",
                "ProtectControlGroups", "RestrictNamespaces", "RestrictSUIDSGID", "LockPersonality"):
        assert one(key) == "yes", key
    # gatewayd stops within 10 s of SIGTERM; systemd must wait at least that long.
    stop = one("TimeoutStopSec")
    assert stop.endswith("s") and int(stop[:-1]) >= 10


def exposure(unit: Path) -> float:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is not installed (Debian package: systemd); this test needs it"
    result = subprocess.run([analyze, "security", "--offline=yes", "--no-pager", str(unit)], capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout + result.stderr)
    assert m, result.stdout + result.stderr
    return float(m.group(1))


def shipped(tmp_path: Path, text: str | None = None) -> Path:
    gatewayd = Path(sys.executable).with_name("gatewayd")
    unit = tmp_path / "gatewayd.service"
    unit.write_text((text or UNIT.read_text(encoding="utf-8")).replace("ExecStart=/usr/local/bin/gatewayd ", f"ExecStart={gatewayd} "), encoding="utf-8")
    return unit


def test_systemd_analyze_security_exposure_at_most_2(tmp_path: Path) -> None:
    assert exposure(shipped(tmp_path)) <= 2.0


def test_the_documented_port_25_variant_stays_at_most_2(tmp_path: Path) -> None:
    """What the unit's comment and deployment.md say to do to listen on port 25."""
    text = UNIT.read_text(encoding="utf-8")
    lines = re.findall(r"^#   ((?:CapabilityBoundingSet|AmbientCapabilities)=CAP_NET_BIND_SERVICE)$", text, re.M)
    assert len(lines) == 2, lines
    port25 = text.replace("\nCapabilityBoundingSet=\n", "\n" + "\n".join(lines) + "\n")
    assert port25 != text
    doc = (REPO / "docs" / "deployment.md").read_text(encoding="utf-8")
    assert all(f"`{line}`" in doc for line in lines)
    assert "Remove both capability lines" not in doc
    assert exposure(shipped(tmp_path, port25)) <= 2.0


def test_documentation_points_at_installed_files() -> None:
    """Every Documentation= file is one deployment.md's install step puts there."""
    docs = directives(UNIT.read_text(encoding="utf-8"))["Documentation"]
    prefix = "file:///usr/share/doc/gatewayd/"
    install = (REPO / "docs" / "deployment.md").read_text(encoding="utf-8")
    assert "cp -r /path/to/gatewayd/README.md /path/to/gatewayd/docs /usr/share/doc/gatewayd/" in install
    for url in docs:
        assert url.startswith(prefix), url
        assert (REPO / url[len(prefix):]).is_file(), url
