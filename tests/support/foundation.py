"""Helpers for the foundation tests (imported by conftest.py and the tests):
configs written as real TOML files, the real command line as a subprocess,
and a self-signed certificate."""

from __future__ import annotations

import copy
import datetime as dt
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import structlog
from tomli_w import dumps as to_toml

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

# Environment variables that change what gatewayd does; never inherited.
_GATEWAYD_ENV = ("GATEWAYD_CONFIG", "CREDENTIALS_DIRECTORY", "STATE_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _GATEWAYD_ENV}
    env.update(extra)
    return env


def gatewayd(*args: str, env: dict[str, str] | None = None, input: str | None = None, cwd: Path | str | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``python -m gatewayd ARGS`` as a real process."""
    return subprocess.run(
        [PYTHON, "-m", "gatewayd", *args],
        capture_output=True, text=True, env=clean_env() if env is None else env,
        input=input, cwd=cwd or REPO, timeout=timeout,
    )


# ------------------------------------------------------------- TOML writing


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep merge; a value of ``DELETE`` removes the key."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if value is DELETE:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


DELETE = object()


def base_config(state_dir: Path) -> dict[str, Any]:
    """The smallest valid configuration that runs offline."""
    return {
        "provider": {
            "base_url": "http://127.0.0.1:9/api/ver1.0",  # discard port: nothing answers
            "client_id": "test-client",
            "client_secret": "test-client-secret-123",
            "extension": 100,
        },
        "smtp": {"hostname": "gw.test", "processes": 1},  # no FQDN lookup in tests; one listener process: tests read its sessions and metrics (the default, "auto": test_smtp_processes.py)
        "storage": {"state_dir": str(state_dir)},
        "http": {"listen": ""},
        "inbound": {"enabled": False},
    }


@pytest.fixture
def write_config(tmp_path: Path):
    """write_config(override=None, text=None, name="config.toml") -> Path"""

    def write(override: dict[str, Any] | None = None, *, text: str | None = None, name: str = "config.toml") -> Path:
        path = tmp_path / name
        if text is None:
            text = to_toml(merge(base_config(tmp_path / "state"), override or {}))
        path.write_text(text, encoding="utf-8")
        return path

    return write


# -------------------------------------------------------------- certificate


@pytest.fixture(scope="session")
def cert_pair(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(cert.pem, key.pem, other-key.pem): a self-signed pair and a stranger's key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    d = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw.test")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30)).sign(key, hashes.SHA256())
    )

    def pem_key(k) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())

    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(pem_key(key))
    (d / "other-key.pem").write_bytes(pem_key(other))
    return d / "cert.pem", d / "key.pem", d / "other-key.pem"


# ------------------------------------------------------------------ logging


@pytest.fixture
def restore_logging():
    """setup_logging changes process-wide state; put it back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in ("httpx", "httpcore", "aiosmtpd", "mail.log", "aioimaplib", "aiosmtplib", "aiohttp.access")}
    config = structlog.get_config()
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    for name, lvl in levels.items():
        logging.getLogger(name).setLevel(lvl)
    structlog.configure(**config)
    structlog.contextvars.clear_contextvars()
