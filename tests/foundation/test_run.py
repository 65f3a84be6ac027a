"""``gatewayd run`` as a real process: JSON logs off a TTY, clean stops on
SIGTERM and SIGINT, SIGHUP reloads (and keeps running on an invalid file)."""

from __future__ import annotations

import json
import queue
import signal
import socket
import subprocess
import threading
import tomllib
import time
from pathlib import Path
from typing import Any

import pytest

from support.foundation import PYTHON, REPO, base_config, clean_env, merge, to_toml
from support.ports import free_port  # noqa: F401 (also a public name here)




class Daemon:
    """A running ``gatewayd run`` whose stderr is read line by line."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "gatewayd", "run", "-c", str(config)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=clean_env(), cwd=REPO,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)
        self.lines.put(None)

    def event(self, name: str, timeout: float = 15) -> dict[str, Any]:
        """The next JSON log line whose event is ``name`` (every line must be JSON)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {name!r} event within {timeout}s; stderr so far:\n{''.join(self.seen)}") from None
            if line is None:
                raise AssertionError(f"gatewayd exited ({self.proc.wait()}) before {name!r}; stderr:\n{''.join(self.seen)}")
            self.seen.append(line)
            record = json.loads(line)  # off a TTY every line is one JSON object
            if record.get("event") == name:
                return record

    def wait_listening(self, timeout: float = 60) -> None:
        """Until the SMTP listener accepts: signal handlers are installed by then."""
        host, port = tomllib.loads(self.config.read_text())["smtp"]["listen"].rsplit(":", 1)
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"gatewayd exited ({self.proc.returncode})"
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"gatewayd not listening on {host}:{port} within {timeout}s") from None
                time.sleep(0.05)

    def stop(self, sig: int, within: float = 10) -> int:
        started = time.monotonic()
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=within)
        assert time.monotonic() - started < within
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def daemon_config(tmp_path):
    def write(override: dict | None = None) -> Path:
        cfg = merge(base_config(tmp_path / "state"), {"smtp": {"listen": f"127.0.0.1:{free_port()}"}})
        path = tmp_path / "config.toml"
        path.write_text(to_toml(merge(cfg, override or {})))
        return path

    return write


@pytest.fixture
def start(daemon_config):
    running: list[Daemon] = []

    def go(override: dict | None = None) -> Daemon:
        d = Daemon(daemon_config(override))
        running.append(d)
        return d

    yield go
    for d in running:
        d.kill()


def test_sigterm_stops_with_exit_0(start, tmp_path) -> None:
    d = start()
    ready = d.event("gatewayd_ready")
    assert ready["level"] == "info" and ready["logger"] == "gatewayd.daemon"
    assert ready["state_dir"] == str(tmp_path / "state")
    assert "timestamp" in ready
    assert (tmp_path / "state" / "gatewayd.sqlite3").exists()
    assert d.stop(signal.SIGTERM) == 0
    d.event("gatewayd_stopped", timeout=2)


def test_sigint_stops_with_exit_0(start) -> None:
    d = start()
    d.event("gatewayd_ready")
    assert d.stop(signal.SIGINT) == 0
    d.event("gatewayd_stopped", timeout=2)


def test_sighup_with_an_invalid_file_keeps_running(start, tmp_path) -> None:
    d = start()
    d.event("gatewayd_ready")
    config = tmp_path / "config.toml"
    good = config.read_text()
    config.write_text(good + "\n[bogus]\nkey = 1\n")
    d.proc.send_signal(signal.SIGHUP)
    rejected = d.event("reload_rejected")
    assert rejected["level"] == "error"
    assert "bogus: unknown key" in rejected["problems"]
    time.sleep(0.3)
    assert d.proc.poll() is None  # still running on the old configuration
    # a valid file is applied, and says which changes need a restart
    config.write_text(good.replace('listen = ""', 'listen = "127.0.0.1:9"'))
    d.proc.send_signal(signal.SIGHUP)
    applied = d.event("reload_applied")
    assert applied["needs_restart"] == ["http.listen"]
    assert d.stop(signal.SIGTERM) == 0


def test_log_level_from_the_configuration(start) -> None:
    d = start({"log": {"level": "warning"}})
    d.wait_listening()  # readiness would have been logged at info by now
    assert d.proc.poll() is None
    assert d.stop(signal.SIGTERM) == 0
    lines = []  # the reader thread put every line of stderr in the queue
    while True:
        line = d.lines.get(timeout=5)
        if line is None:
            break
        lines.append(line)
    assert not any('"level": "info"' in line for line in lines), lines


def test_invalid_configuration_at_start_exits_2(tmp_path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(to_toml(merge(base_config(tmp_path / "state"), {"smtp": {"listen": 2525}})))
    result = subprocess.run([PYTHON, "-m", "gatewayd", "run", "-c", str(path)], capture_output=True, text=True, env=clean_env(), timeout=30)
    assert result.returncode == 2
    assert 'smtp.listen: expected "host:port", got 2525' in result.stderr
    assert not (tmp_path / "state").exists()  # nothing was started


def test_unusable_state_directory_exits_1_with_a_json_error(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    path = tmp_path / "config.toml"
    path.write_text(to_toml(merge(base_config(blocker / "state"), {})))
    result = subprocess.run([PYTHON, "-m", "gatewayd", "run", "-c", str(path)], capture_output=True, text=True, env=clean_env(), timeout=30)
    assert result.returncode == 1
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert records[-1]["event"] == "gatewayd_start_failed"
    assert "cannot open the store" in records[-1]["error"]


def test_daemon_start_removes_a_partial_document_left_by_a_crash(daemon_config, tmp_path) -> None:
    """A document write killed before its rename leaves a .tmp- file; the
    daemon's start-up removes it (and never references it)."""
    from gatewayd.store import Store

    config = daemon_config()
    store = Store(tmp_path / "state")
    leftover = store.documents_dir / "ef" / f".tmp-{'ef' * 32}-999999999-1"  # writer long gone
    leftover.parent.mkdir()
    leftover.write_bytes(b"%PDF-1.4 half written")
    store.close()
    d = Daemon(config)
    try:
        d.event("gatewayd_ready")
        assert not leftover.exists()
        assert d.stop(signal.SIGTERM) == 0
    finally:
        d.kill()
