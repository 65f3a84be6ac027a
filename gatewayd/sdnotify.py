"""sd_notify written directly against ``$NOTIFY_SOCKET`` (no libsystemd).

Supports filesystem and abstract (``@name``) datagram sockets. Outside
systemd (no ``NOTIFY_SOCKET``) every call is a no-op.
"""

from __future__ import annotations

import os
import socket

from gatewayd.logs import get_logger

log = get_logger(__name__)


class Notifier:
    def __init__(self, address: str | None, *, watchdog_usec: int | None = None, watchdog_pid: int | None = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self.watchdog_pid = watchdog_pid

    @classmethod
    def from_environment(cls, env: dict[str, str] | None = None) -> "Notifier":
        env = dict(os.environ) if env is None else env
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        return cls(
            env.get("NOTIFY_SOCKET") or None,
            watchdog_usec=int(usec) if usec and usec.isdigit() else None,
            watchdog_pid=int(pid) if pid and pid.isdigit() else None,
        )

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def watchdog_interval(self) -> float | None:
        """Half the watchdog period, as systemd recommends; None when off."""
        if not self.watchdog_usec:
            return None
        if self.watchdog_pid is not None and self.watchdog_pid != os.getpid():
            return None
        return self.watchdog_usec / 2_000_000

    def notify(self, *lines: str) -> bool:
        if not self.address:
            return False
        addr = self.address
        if addr.startswith("@"):
            addr = "\0" + addr[1:]  # abstract namespace
        payload = "\n".join(lines).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(addr)
                sock.sendall(payload)
            return True
        except OSError as exc:
            log.warning("sd_notify_failed", error=str(exc))
            return False
